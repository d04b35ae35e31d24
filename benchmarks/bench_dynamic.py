"""Dynamic widths on SmolLM2-135M (fake quantization): the threshold controller at fractional
budgets against uniform profiles and against static per-unit mixes at matched realized bits.

Rows (``--configs``, measured in that order, the results file rewritten after each):

- ``uniform-W``: every block unit at width W;
- ``threshold-B``: :class:`~bitswitch.dynamic.ThresholdController` (per token and unit), threshold
  fitted to B average weight bits per token on ``--calib`` SQuAD *train* prompts (disjoint articles);
- ``mix-B``: a static profile at (just under) B bits: starting from the lower of the two widths
  around B, units are raised to the higher one in order of the mean estimated error removed per bit
  (the threshold controller's own estimate, averaged over the calibration tokens);
- ``request-B``: :class:`~bitswitch.dynamic.RequestController`, one width per sequence;
- ``gate-B``: :class:`~bitswitch.dynamic.GateController` (per token and unit, learned), trained for
  ``--gate-steps`` on ``--gate-calib`` SQuAD *train* prompts with ``--gate-penalty``, its price per
  bit fitted to B on the same prompts (one gate per set of widths, fitted once per budget).

With ``--out``, rows of configs not measured in this run are kept from the existing file.

Each row: SQuAD v1.1 dev EM / F1 / answer perplexity over ``--questions`` questions (stratified over
articles, greedy, batch 1, stop at a line break, ``--max-new-tokens``) and WikiText-2 test
perplexity over ``--windows`` windows of ``--window`` tokens, with the realized average weight bits
and weight bytes read per token on each. No trained adapters. Caveat: SmolLM2's weights come from a
Q4_1 GGUF (asymmetric 4-bit blocks of 32): w8 is near-lossless by construction; symmetric w4g32 is not.

    python benchmarks/bench_dynamic.py --out benchmarks/results/dynamic.json

``--runtime``: instead, decoding speed on the packed runtime (int4 / int8 CPU kernels, bf16) of
uniform w4g32 / w8 and of the threshold controller (thresholds read from ``--thresholds-from``, a
results file of the default mode, else fitted here), greedy, batch 1, exactly ``--new-tokens``
tokens for ``--runtime-prompts`` SQuAD prompts, with the realized bits of the decoding steps:

    python benchmarks/bench_dynamic.py --runtime --thresholds-from benchmarks/results/dynamic.json \
        --out benchmarks/results/dynamic_runtime.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import rel, write

from bitswitch.data.squad import DEFAULT_TEMPLATE, PromptConfig, calibration_batches, encode_prompts, load_squad
from bitswitch.dynamic import (GateController, RequestController, ThresholdController, Usage, WidthSet, static_profile,
                               train_gate)
from bitswitch.evaluate.scorers import load_text_ids, score_squad, score_text
from bitswitch.models import load_model
from bitswitch.switching import make_switchable, set_weight_cache

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
COLUMNS = ["config", "squad_avg_w_bits", "squad_bytes_per_token", "em", "f1", "answer_ppl", "wikitext_avg_w_bits",
           "ppl", "calib_avg_w_bits", "seconds"]
CONFIGS = ["uniform-w4g32", "uniform-w8", "threshold-4.5", "threshold-5.5", "mix-4.5", "mix-5.5", "request-4.5",
           "request-5.5", "uniform-w3g32", "threshold-3.5", "mix-3.5", "gate-4.5", "gate-5.5", "gate-3.5"]


def widths_for(budget: float) -> str:
    return "w3g32,w4g32,w8" if budget < 4 else "w4g32,w8"


def static_mix(ctl: ThresholdController, errors: dict, budget: float) -> tuple[str, float]:
    """A profile raising units from the width below ``budget`` to the one above, by mean estimated
    error per bit gained, while the average bits stay <= budget; and its average bits."""
    ws = ctl.widths
    hi = next(i for i, b in enumerate(ws.bits) if b > budget)
    lo = hi - 1
    total = sum(ws.params.values())
    gain = {u: float(errors[u][:, lo].mean() - errors[u][:, hi].mean()) / (ws.params[u] * (ws.bits[hi] - ws.bits[lo]))
            for u in ws.units}
    bits = ws.bits[lo]
    raised = []
    for u in sorted(gain, key=gain.get, reverse=True):
        extra = ws.params[u] * (ws.bits[hi] - ws.bits[lo]) / total
        if bits + extra <= budget + 1e-9:
            raised.append(u)
            bits += extra
    rules = [ws.widths[lo]] + [f"{u}={ws.widths[hi]}" for u in raised]
    return ";".join(rules), bits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=CONFIGS)
    ap.add_argument("--questions", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--calib", type=int, default=8, help="SQuAD train prompts for fitting thresholds")
    ap.add_argument("--gate-calib", type=int, default=32, help="SQuAD train prompts the gate trains on")
    ap.add_argument("--gate-steps", type=int, default=64)
    ap.add_argument("--gate-penalty", type=float, default=0.05)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--squad", default=str(DATA / "squad-v1.1" / "dev-part1-v1.1.json"))
    ap.add_argument("--train", default=str(DATA / "squad-v1.1" / "train-subset-v1.1.json"))
    ap.add_argument("--text", default=str(DATA / "wikitext-2-raw" / "wiki.test.raw"))
    ap.add_argument("--runtime", action="store_true", help="runtime decoding speed instead (see above)")
    ap.add_argument("--runtime-prompts", type=int, default=10)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--thresholds-from", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, tok = load_model("smollm2-135m", device="cpu")
    make_switchable(model)
    if a.runtime:
        return runtime_speed(a, model, tok)
    set_weight_cache(model, "float")
    examples = load_squad(a.squad, limit=a.questions, order="stratified")
    prompts, truncated = encode_prompts(tok, examples, PromptConfig(template=DEFAULT_TEMPLATE), 2048,
                                        reserve=a.max_new_tokens)
    calib = calibration_batches(tok, load_squad(a.train, order="stratified", limit=a.calib), a.calib)
    text_ids, window = load_text_ids(model, tok, a.text, a.windows * a.window, 0, a.window)
    rows = kept_rows(a.out, a.configs)
    meta = dict(model="smollm2-135m", engine="fake quantization (float32)", adapters=None, questions=len(examples),
                articles=len({ex.title for ex in examples}), squad=rel(a.squad), calibration=f"{a.calib} prompts of "
                f"{rel(a.train)} (stratified)", wikitext=f"{rel(a.text)}: {text_ids.shape[1]} tokens, windows of "
                f"{window}", max_new_tokens=a.max_new_tokens, batch=1, threads=a.threads, truncated=truncated,
                caveat="SmolLM2 weights are dequantized from Q4_1 (asymmetric 4-bit blocks of 32): w8 is near-lossless by construction, while symmetric w4g32 does not sit on that grid (see its perplexity)")

    def measure(name, ctx_for, extra):
        t0 = time.perf_counter()
        out = {"config": name, **extra}
        for task in ("squad", "wikitext"):
            ws = WidthSet.from_model(model, extra.get("widths", "w4g32,w8"))
            usage = Usage(ws)
            with ctx_for(usage):
                if task == "squad":
                    s = score_squad(model, tok, prompts, examples, a.max_new_tokens, batch_size=1)
                    out.update(em=round(s["em"], 2), f1=round(s["f1"], 2), answer_ppl=round(s["answer_ppl"], 4))
                else:
                    out["ppl"] = round(score_text(model, text_ids, window)["ppl"], 4)
            summ = usage.summary()
            out[f"{task}_avg_w_bits"], out[f"{task}_bytes_per_token"] = summ["avg_w_bits"], summ["bytes_per_token"]
            out[f"{task}_width_share"] = summ["width_share"]
            out[f"{task}_sequences"] = summ["sequences"]
        out["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(out)
        print(f"{name}: " + ", ".join(f"{k}={out.get(k)}" for k in COLUMNS[1:]), flush=True)
        write(a.out, rows, COLUMNS, **meta)
        if a.out:
            write_markdown(a.out, rows, meta)

    fitted: dict[float, tuple] = {}

    def fit(budget):
        if budget not in fitted:
            ws = WidthSet.from_model(model, widths_for(budget))
            ctl = ThresholdController.from_model(model, ws)
            t0 = time.perf_counter()
            got = ctl.fit(model, calib, budget, tol=0.02)
            print(f"fitted {budget}: threshold {ctl.threshold:.4g} -> {got:.4f} bits ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
            fitted[budget] = (ctl, got, ctl.calib_errors)
        return fitted[budget]

    gates: dict[str, tuple] = {}

    def gate_for(budget):
        widths = widths_for(budget)
        if widths not in gates:
            ws = WidthSet.from_model(model, widths)
            gate = GateController.from_model(model, ws)
            batches = calibration_batches(tok, load_squad(a.train, order="stratified", limit=a.gate_calib), a.gate_calib)
            t0 = time.perf_counter()
            hist = train_gate(model, gate, batches, a.gate_penalty, a.gate_steps)
            print(f"gate {widths}: {a.gate_steps} steps, KL {hist[0]['kl']:.4f} -> {hist[-1]['kl']:.4f}, expected bits "
                  f"{hist[0]['bits']:.3f} -> {hist[-1]['bits']:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
            gates[widths] = (gate, batches, hist, round(time.perf_counter() - t0, 1))
        return gates[widths]

    for name in a.configs:
        kind, _, arg = name.partition("-")
        if kind == "uniform":
            measure(name, lambda usage: static_profile(model, usage.widths, arg, usage), {"widths": arg})
        elif kind == "threshold":
            ctl, got, _ = fit(float(arg))
            measure(name, lambda usage: ctl.install(model, usage), {"widths": ",".join(ctl.widths.widths),
                                                                 "threshold": ctl.threshold, "calib_avg_w_bits": round(got, 4)})
        elif kind == "mix":
            ctl, _, errors = fit(float(arg))
            profile, bits = static_mix(ctl, errors, float(arg))
            measure(name, lambda usage: static_profile(model, usage.widths, profile, usage),
                    {"widths": ",".join(ctl.widths.widths), "profile": profile, "static_avg_w_bits": round(bits, 4)})
        elif kind == "request":
            ws = WidthSet.from_model(model, widths_for(float(arg)))
            measure(name, lambda usage: RequestController(ws, float(arg)).install(model, usage),
                    {"widths": ",".join(ws.widths)})
        elif kind == "gate":
            gate, batches, hist, secs = gate_for(float(arg))
            got = gate.fit(model, batches, float(arg), tol=0.02)
            print(f"gate fitted {arg}: price {gate.price:.4g} -> {got:.4f} bits", flush=True)
            measure(name, lambda usage: gate.install(model, usage),
                    {"widths": ",".join(gate.widths.widths), "price": gate.price, "calib_avg_w_bits": round(got, 4),
                     "gate_calib": len(batches), "gate_steps": a.gate_steps, "gate_penalty": a.gate_penalty,
                     "gate_final_kl": round(hist[-1]["kl"], 5), "gate_train_seconds": secs})
        else:
            raise SystemExit(f"unknown config {name!r}")


def kept_rows(out: str | None, configs: list[str]) -> list[dict]:
    """Rows of an existing results file for configs this run does not measure."""
    import json

    if not out or not Path(out).is_file():
        return []
    return [r for r in json.loads(Path(out).read_text())["rows"] if r["config"] not in configs]


def write_markdown(out: str, rows: list[dict], meta: dict) -> None:
    from bitswitch.results import markdown_table

    Path(out).with_suffix(".md").write_text(
        f"# Dynamic widths on SmolLM2-135M (fake quantization)\n\n{meta['questions']} SQuAD v1.1 dev questions "
        f"({meta['articles']} articles), {meta['wikitext']}; calibration: {meta['calibration']}.\n"
        f"Caveat: {meta['caveat']}. No trained adapters.\n\n{markdown_table(rows, COLUMNS)}\n")


RUNTIME_COLUMNS = ["config", "decode_avg_w_bits", "decode_bytes_per_token", "decode_tok_s", "prefill_s", "prompts"]


def runtime_speed(a, model, tok) -> None:
    import copy
    import json

    from bitswitch.dynamic import RuntimeEngine, greedy_generate, runtime_routed
    from bitswitch.runtime import Runtime

    thresholds = {}
    if a.thresholds_from:
        for r in json.loads(Path(a.thresholds_from).read_text())["rows"]:
            if r["config"].startswith("threshold-"):
                thresholds[float(r["config"].split("-")[1])] = r["threshold"]
    budgets = [float(c.split("-")[1]) for c in a.configs if c.startswith("threshold-")]
    widths = sorted({w for b in budgets for w in widths_for(b).split(",")} | {"w4g32", "w8"})
    rt = Runtime.from_model(copy.deepcopy(model), tok, widths)   # before any quantized weight is cached
    ctls = {}
    for b in budgets:
        ws = WidthSet.from_model(model, widths_for(b))
        ctl = ThresholdController.from_model(model, ws)
        if b in thresholds:
            ctl.threshold = thresholds[b]
        else:
            calib = calibration_batches(tok, load_squad(a.train, order="stratified", limit=a.calib), a.calib)
            ctl.fit(model, calib, b, tol=0.02)
        ctls[b] = ctl
    engine = RuntimeEngine(rt)
    examples = load_squad(a.squad, limit=a.runtime_prompts, order="stratified")
    prompts, _ = encode_prompts(tok, examples, PromptConfig(template=DEFAULT_TEMPLATE), 2048, reserve=a.new_tokens)
    configs = [("uniform-w4g32", None), ("uniform-w8", None)] + [(f"threshold-{b:g}", c) for b, c in ctls.items()]
    greedy_generate(engine, prompts[0], "w8", 4, eos=False)   # warm-up
    stats = {}
    for name, ctl in configs:
        ws = ctl.widths if ctl is not None else WidthSet.from_runtime(rt, name.split("-")[1])
        stats[name] = {"ws": ws, "usage": Usage(ws), "n": 0, "dec_s": 0.0, "pre_s": 0.0}

    def decode_only(ctl, usage):
        def route(unit, x):
            idx = ctl(unit, x)
            if x.shape[0] == 1:
                usage.record(unit, idx)
            return idx
        return route

    for p in prompts:   # configs interleaved per prompt: a shared machine's load hits them alike
        for name, ctl in configs:
            st = stats[name]
            ws, usage = st["ws"], st["usage"]
            if ctl is None:
                out = greedy_generate(engine, p, ws.widths[0], a.new_tokens, eos=False)
                usage.record_all(0, len(out.tokens) - 1)
            else:
                with runtime_routed(rt, ws, decode_only(ctl, usage)):
                    out = greedy_generate(engine, p, ws.widths[-1], a.new_tokens, eos=False)
            st["n"] += len(out.tokens) - 1
            st["dec_s"] += out.decode_s
            st["pre_s"] += out.prefill_s
    rows = []
    for name, ctl in configs:
        st = stats[name]
        rows.append({"config": name, "decode_avg_w_bits": round(st["usage"].realized("bits"), 4),
                     "decode_bytes_per_token": round(st["usage"].realized("bytes"), 1),
                     "decode_tok_s": round(st["n"] / st["dec_s"], 2), "prefill_s": round(st["pre_s"] / len(prompts), 4),
                     "prompts": len(prompts), "threshold": None if ctl is None else ctl.threshold})
        print(rows[-1], flush=True)
    write(a.out, rows, RUNTIME_COLUMNS, model="smollm2-135m", engine="runtime (int4/int8 CPU kernels, bf16)",
          threads=a.threads, new_tokens=a.new_tokens, batch=1,
          note="decode_avg_w_bits counts the decoding steps only (the prefill is per-token routed too)")
    if a.out:
        from bitswitch.results import markdown_table

        Path(a.out).with_suffix(".md").write_text(
            f"# Dynamic widths on the runtime, SmolLM2-135M\n\nGreedy decoding of {a.new_tokens} tokens for "
            f"{len(prompts)} SQuAD prompts, batch 1, {a.threads} thread(s); thresholds fitted on fake quantization."
            f"\n\n{markdown_table(rows, RUNTIME_COLUMNS)}\n")


if __name__ == "__main__":
    main()
