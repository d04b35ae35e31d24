"""Generation speed and peak memory: the runtime against transformers ``generate`` and llama.cpp, one run.

Every row decodes the same prompt (a SQuAD v1.1 dev question, its context cut at a word so the prompt
has at most ``--prompt-tokens`` tokens) with the same threads, greedy, exactly ``--new-tokens`` new
tokens (``min_new_tokens`` forbids EOS before that; no stop strings), at each ``--batch`` (the prompt
repeated: no padding). Each (threads, batch, row) runs in a fresh subprocess, so its peak RSS
(``ru_maxrss`` at the end: loading included) is its own: one warm-up generation, then the median of
``--repeats``. Rows:

- ``hf-fp32``, ``hf-bf16``: transformers ``generate`` on the plain model in that dtype;
- ``w8``, ``w4g32``, ``w4g32a8``, ``mixed`` (``--mixed``), ``alt`` (w4g32 and w8 alternating every
  step, step 0 being the prefill): :class:`bitswitch.runtime.Runtime` holding only the profiles the
  row needs;
- ``nested``: the runtime at ``w4g32`` loaded from a nested checkpoint (``--nested``, or one the
  benchmark exports first in its own process), packed straight from its int8 masters: the
  deployment path, whose peak RSS is the memory goal's; ``nested-eager`` the same with the decode
  step eager (``compile="off"``): no compiler in the process, the smallest footprint;
  ``nested-eager-kv16`` that with a bfloat16 KV cache (half the cache; logits no longer fake
  quantization's);
- ``llama.cpp``: SmolLM2's Q4_1 GGUF through :mod:`bitswitch.llamacpp` (node-llama-cpp 3.21.1), batch
  B as B sequences of one context decoded together; its peak RSS is the node process's.

Timing: ``prefill`` is the prompt's forward up to the first new token, ``decode`` the ``new_tokens - 1``
steps after it; prefill tok/s = batch x prompt tokens / prefill_s, decode tok/s = batch x
(new_tokens - 1) / decode_s. transformers is timed by a streamer's clock (``put`` of the prompt, of
the first token, of the last), llama.cpp inside node, the runtime by its own ``prefill_s`` /
``decode_s`` (same convention). The goal checks are ratios within the run, per (threads, batch).

    python benchmarks/bench_runtime.py --out benchmarks/results/runtime.json
    python benchmarks/bench_runtime.py --quick --rows hf-fp32 hf-bf16 --threads 1 --batch 1   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import rel

from bitswitch.errors import BitswitchError
from bitswitch.io import atomic_write_json
from bitswitch.results import markdown_table, run_metadata

ROOT = Path(__file__).resolve().parents[1]
SQUAD = ROOT.parent / "shared" / "data" / "squad-v1.1" / "dev-part1-v1.1.json"
HF_ROWS = {"hf-fp32": "fp32", "hf-bf16": "bf16"}
# nested-eager: the nested checkpoint with the decode step eager (no compiler in the process: its
# import and compilation cost about 100+ MiB of resident memory), the smallest footprint
RUNTIME_ROWS = ("w8", "w4g32", "w4g32a8", "mixed", "alt", "nested", "nested-eager", "nested-eager-kv16")
ROWS = (*HF_ROWS, *RUNTIME_ROWS, "llama.cpp")
ALTERNATING = ["w4g32", "w8"]
LAYERS = {"smollm2-135m": 30, "tiny-llama": 2}
RESULT = "BENCH-ROW "   # the child's result line on stdout (libraries may print other lines)
COLUMNS = ["threads", "batch", "row", "prompt_tokens", "new_tokens", "prefill_tok_s", "decode_tok_s",
           "peak_rss_mb", "error"]
# (name, numerator row, denominator row(s), kind, target): kind "min" = ratio >= target, "max" = ratio
# <= target, "near" = |ratio - 1| <= target, the denominator being the mean of its rows
GOALS = [("w4g32 decode / hf-fp32 decode", "w4g32", ["hf-fp32"], "decode", "min", 2.5),
         ("w4g32 decode / hf-bf16 decode", "w4g32", ["hf-bf16"], "decode", "min", 1.5),
         ("w8 decode / hf-fp32 decode", "w8", ["hf-fp32"], "decode", "min", 1.5),
         ("alt decode / mean(w4g32, w8) decode", "alt", ["w4g32", "w8"], "decode", "near", 0.10),
         ("w4g32 peak RSS / hf-fp32 peak RSS", "w4g32", ["hf-fp32"], "rss", "max", 0.5),
         ("nested w4g32 peak RSS / hf-fp32 peak RSS", "nested", ["hf-fp32"], "rss", "max", 0.5),
         ("nested-eager w4g32 peak RSS / hf-fp32 peak RSS", "nested-eager", ["hf-fp32"], "rss", "max", 0.5),
         ("nested-eager-kv16 w4g32 peak RSS / hf-fp32 peak RSS", "nested-eager-kv16", ["hf-fp32"], "rss", "max",
          0.5),
         ("w4g32 decode / llama.cpp decode", "w4g32", ["llama.cpp"], "decode", "min", 0.7),
         # the deployment path on its own: the speed goals again for the nested checkpoint with the
         # decode step eager, the row whose memory meets the goal (one configuration meeting both)
         ("nested-eager decode / hf-fp32 decode", "nested-eager", ["hf-fp32"], "decode", "min", 2.5),
         ("nested-eager decode / hf-bf16 decode", "nested-eager", ["hf-bf16"], "decode", "min", 1.5),
         ("nested-eager decode / llama.cpp decode", "nested-eager", ["llama.cpp"], "decode", "min", 0.7)]


# -- the prompt --------------------------------------------------------------------------------------

def tokenizer_for(model: str):
    """The model's tokenizer alone (for SmolLM2: from its GGUF, without dequantizing the weights)."""
    from bitswitch.models import byte_tokenizer, smollm2_path

    if model == "tiny-llama":
        return byte_tokenizer()
    from transformers import AutoTokenizer

    directory, name = smollm2_path()
    return AutoTokenizer.from_pretrained(directory, gguf_file=name)


def build_prompt(tokenizer, squad: Path, target: int) -> tuple[list[int], str]:
    """(token ids, question id): the first question (file order) whose prompt reaches ``target``
    tokens, its context then cut at a word so the prompt has at most ``target``."""
    from bitswitch.data.squad import PromptConfig, encode_prompts, load_squad, render_prompt

    cfg = PromptConfig()
    for ex in load_squad(str(squad), order="file"):
        if len(tokenizer(render_prompt(ex, cfg))["input_ids"]) >= target:
            ids, _ = encode_prompts(tokenizer, [ex], cfg, max_length=target, reserve=0)
            return ids[0], ex.id
    raise BitswitchError(f"no question of {squad} has a prompt of {target} tokens: lower --prompt-tokens")


# -- one row, in its own process ---------------------------------------------------------------------

def _load_hf(model: str, dtype: str):
    """The plain model. SmolLM2 is read from its GGUF here rather than by ``load_model``, which keeps a
    cached copy beside the one it returns (for repeated loads in one process): two copies in RSS."""
    from bitswitch.models import load_model, resolve_dtype, smollm2_path

    if model != "smollm2-135m":
        return load_model(model, device="cpu", dtype=dtype)[0]
    from transformers import AutoModelForCausalLM

    directory, name = smollm2_path()
    return AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=resolve_dtype(dtype)).eval()


def _hf_row(spec: dict):
    import torch
    from transformers.generation.streamers import BaseStreamer

    class StepClock(BaseStreamer):
        """The time of every ``put``: the prompt's (before the prefill), then each new token's."""

        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    model = _load_hf(spec["model"], HF_ROWS[spec["row"]])
    ids = torch.tensor([spec["prompt"]] * spec["batch"])
    n = spec["new_tokens"]

    def once():
        clock = StepClock()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                 min_new_tokens=n, do_sample=False, streamer=clock,
                                 pad_token_id=model.config.eos_token_id)
        t = clock.times
        return t[1] - t[0], t[-1] - t[1], out.shape[1] - ids.shape[1]

    return once, {}, None


NO_RUNTIME = "bitswitch.runtime has no Runtime yet: the runtime rows need Runtime.load and Runtime.generate"


def runtime_available() -> bool:
    import importlib

    return hasattr(importlib.import_module("bitswitch.runtime"), "Runtime")


def _runtime_row(spec: dict):
    if not runtime_available():
        raise BitswitchError(NO_RUNTIME)
    from bitswitch.runtime import Runtime

    row = spec["row"]
    profiles = (ALTERNATING if row == "alt" else [spec["mixed"]] if row == "mixed"
                else ["w4g32"] if row.startswith("nested") else [row])
    source = spec["nested"] if row.startswith("nested") else spec["model"]
    rt = Runtime.load(source, adapters=None, profiles=profiles,
                      compile="off" if row.startswith("nested-eager") else spec["compile"],
                      kv_dtype="bfloat16" if row.endswith("kv16") else "float32")
    rt.set_profile(profiles[0])
    prompts = [list(spec["prompt"]) for _ in range(spec["batch"])]
    n = spec["new_tokens"]

    def once():
        out = rt.generate(prompts, max_new_tokens=n, min_new_tokens=n, do_sample=False, stop=None, eos=False,
                          schedule=ALTERNATING if row == "alt" else None)
        return out.prefill_s, out.decode_s, min(len(t) for t in out.tokens)   # new ids per row

    return once, {"resident_mb": rt.resident_bytes()["total"] / 2**20, "profiles": profiles,
                  "compiled": rt.compiled}, None


def _llama_cpp_row(spec: dict):
    from bitswitch.llamacpp import LlamaCpp
    from bitswitch.models import smollm2_path

    if spec["model"] != "smollm2-135m":
        raise BitswitchError(f"the llama.cpp row needs smollm2-135m's GGUF, not {spec['model']}: drop it "
                             "from --rows with --quick")
    n, batch = spec["new_tokens"], spec["batch"]
    context = -(-(len(spec["prompt"]) + n) // 256) * 256
    llm = LlamaCpp(os.path.join(*smollm2_path()), threads=spec["threads"], context=context, sequences=batch)

    def once():
        out = llm.generate_batch([spec["prompt"]] * batch, n, min_new_tokens=n, eos=False)
        return out["prefill_s"], out["decode_s"], min(out["new_tokens"])

    def finish() -> dict:
        # llama.cpp runs in node: that process's peak is the row's memory, this one only drives it
        from bitswitch.results import peak_rss_mb

        out = {"peak_rss_mb": llm.peak_rss_mb(), "rss_mb": None, "driver_peak_rss_mb": peak_rss_mb()}
        llm.close()
        return out

    return once, {}, finish


def run_row(spec: dict) -> dict:
    """Load the row's engine, warm up once, time ``repeats`` generations; peak RSS at the end."""
    import torch

    from bitswitch.results import bound_heap_retention, peak_rss_mb

    torch.set_num_threads(spec["threads"])
    bound_heap_retention()   # what the bitswitch CLI does
    t0 = time.perf_counter()
    make = _hf_row if spec["row"] in HF_ROWS else _llama_cpp_row if spec["row"] == "llama.cpp" else _runtime_row
    once, info, finish = make(spec)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    once()   # warm-up: first-call allocations, one-time compilation
    warmup_s = time.perf_counter() - t0
    runs = [once() for _ in range(spec["repeats"])]
    short = [new for _, _, new in runs if new != spec["new_tokens"]]
    if short:
        raise BitswitchError(f"{spec['row']} generated {short[0]} tokens, not {spec['new_tokens']}: "
                             "min_new_tokens did not hold")
    out = {"prefill_s": [r[0] for r in runs], "decode_s": [r[1] for r in runs], "load_s": load_s, "warmup_s": warmup_s,
           "peak_rss_mb": peak_rss_mb(), "rss_mb": current_rss_mb(), **info}
    return {**out, **(finish() if finish else {})}


def current_rss_mb() -> float | None:
    """This process's resident set now (after the runs), in MiB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) / 1024 for ln in f if ln.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError):
        return None


def child(spec_json: str) -> None:
    spec = json.loads(spec_json)
    try:
        result = run_row(spec)
    except BitswitchError as exc:
        result = {"error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - any failure is this row's result, the run goes on
        import traceback

        traceback.print_exc()
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        result = {"error": f"{type(exc).__name__}: {first}"}
    print(RESULT + json.dumps(result), flush=True)


def spawn(spec: dict, timeout: float, verbose: bool) -> dict:
    """Run one row in a fresh Python process with ``spec['threads']`` threads everywhere."""
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"]),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": os.pathsep.join(
               [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    try:
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                              text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if verbose:
        sys.stderr.write(proc.stderr)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return {"error": f"row process exited {proc.returncode} without a result: {tail}"}
    return json.loads(lines[-1][len(RESULT):])


# -- the table and the goals -------------------------------------------------------------------------

def summarize(spec: dict, result: dict) -> dict:
    row = {"threads": spec["threads"], "batch": spec["batch"], "row": spec["row"],
           "prompt_tokens": len(spec["prompt"]), "new_tokens": spec["new_tokens"]}
    if "error" in result:
        return {**row, "error": result["error"]}
    prefill, decode = statistics.median(result["prefill_s"]), statistics.median(result["decode_s"])
    b = spec["batch"]
    return {**row, "prefill_tok_s": b * len(spec["prompt"]) / prefill,
            "decode_tok_s": b * (spec["new_tokens"] - 1) / decode if decode > 0 else None,
            "prefill_s_median": prefill, "decode_s_median": decode, **result}


def goals(rows: list[dict]) -> list[dict]:
    by = {(r["threads"], r["batch"], r["row"]): r for r in rows if "error" not in r}
    out = []
    for threads, batch in sorted({(r["threads"], r["batch"]) for r in rows}):
        for name, num, dens, what, kind, target in GOALS:
            key = "decode_tok_s" if what == "decode" else "peak_rss_mb"
            vals = [by.get((threads, batch, r), {}).get(key) for r in [num, *dens]]
            ratio = None if None in vals else vals[0] / statistics.mean(vals[1:])
            ok = None if ratio is None else (ratio >= target if kind == "min" else ratio <= target
                                             if kind == "max" else abs(ratio - 1) <= target)
            want = {"min": f">= {target}", "max": f"<= {target}", "near": f"1 ± {target}"}[kind]
            out.append({"threads": threads, "batch": batch, "goal": name, "ratio": ratio, "target": want,
                        "met": {True: "yes", False: "NO", None: "not measured"}[ok]})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="+", choices=ROWS, default=None, help="default: all (--quick: all but llama.cpp)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=119)
    ap.add_argument("--mixed", default=None,
                    help="the mixed row's profile (default: w4g32 with the first and last layers at w8)")
    ap.add_argument("--nested", default=None,
                    help="the nested row's checkpoint (bitswitch export --nested --group-size 32; default: "
                         "one exported first, in its own process, to a temporary directory)")
    ap.add_argument("--compile", default="auto", help="Runtime.load's compile argument")
    ap.add_argument("--squad", default=str(SQUAD), help="SQuAD v1.1 JSON the prompt comes from")
    ap.add_argument("--quick", action="store_true", help="tiny-llama and 8 new tokens: a smoke test")
    ap.add_argument("--row-timeout", type=float, default=900)
    ap.add_argument("--verbose", action="store_true", help="show each row process's stderr")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child is not None:
        return child(a.child)
    try:
        return run(a)
    except BitswitchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(a) -> int:
    model = "tiny-llama" if a.quick else "smollm2-135m"
    new_tokens = 8 if a.quick and a.new_tokens == 64 else a.new_tokens
    rows = a.rows or [r for r in ROWS if not (a.quick and r == "llama.cpp")]
    if new_tokens < 2 or a.repeats < 1 or min(a.threads) < 1 or min(a.batch) < 1:
        raise BitswitchError("--new-tokens must be >= 2 (decode needs a step after the first token), "
                             "--repeats, --threads and --batch >= 1")
    if a.out and os.path.isabs(a.out):
        raise BitswitchError(f"--out {a.out} is absolute: pass a path relative to the current directory")
    mixed = a.mixed or f"w4g32;L0.*=w8;L{LAYERS[model] - 1}.*=w8"
    squad = Path(a.squad)
    if not squad.is_file():
        raise BitswitchError(f"SQuAD file {squad} is absent: pass --squad (the prompt comes from it)")
    prompt, question = build_prompt(tokenizer_for(model), squad, a.prompt_tokens)
    print(f"prompt: {len(prompt)} tokens (question {question}); {new_tokens} new tokens; rows {' '.join(rows)}",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        wants_nested = any(r.startswith("nested") for r in rows)
        nested = a.nested or (export_nested_checkpoint(model, tmp) if wants_nested else None)
        return _run_rows(a, model, rows, new_tokens, mixed, squad, prompt, question, nested)


def export_nested_checkpoint(model: str, out_dir: str) -> str:
    """``bitswitch export --nested`` of ``model`` at groups of 32, in a process of its own (its memory
    is not the nested row's)."""
    path = os.path.join(out_dir, "nested")
    print(f"exporting a nested checkpoint of {model} for the nested row", flush=True)
    proc = subprocess.run([sys.executable, "-m", "bitswitch.cli", "export", "--nested", "--model", model,
                           "--group-size", "32", "--device", "cpu", "--out", path], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])})
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
        raise BitswitchError(f"exporting the nested row's checkpoint failed: {tail}")
    return path


def _run_rows(a, model, rows, new_tokens, mixed, squad, prompt, question, nested) -> int:
    load_before = os.getloadavg()[0]
    have_runtime = runtime_available()   # without it, the runtime rows fail alike: no process for each
    results = []
    for threads in a.threads:
        for batch in a.batch:
            for row in rows:
                spec = {"model": model, "row": row, "threads": threads, "batch": batch, "prompt": prompt,
                        "new_tokens": new_tokens, "repeats": a.repeats, "mixed": mixed, "compile": a.compile,
                        "nested": nested}
                t0 = time.perf_counter()
                result = ({"error": NO_RUNTIME} if row in RUNTIME_ROWS and not have_runtime
                          else spawn(spec, a.row_timeout, a.verbose))
                summary = summarize(spec, result)
                results.append(summary)
                speed = (f"decode {summary['decode_tok_s']:.1f} tok/s, prefill {summary['prefill_tok_s']:.0f} tok/s"
                         if "error" not in summary else f"error: {summary['error']}")
                print(f"  threads {threads} batch {batch} {row}: {speed} ({time.perf_counter() - t0:.0f} s)",
                      flush=True)
    checks = goals(results)
    print()
    print(markdown_table(results, COLUMNS))
    print()
    print(markdown_table(checks, ["threads", "batch", "goal", "ratio", "target", "met"]))
    if a.out:
        meta = run_metadata(None, 0, model=model, prompt_tokens=len(prompt), question=question,
                            squad=rel(squad), new_tokens=new_tokens, repeats=a.repeats, mixed=mixed,
                            compile=a.compile, load_avg_1m_before=load_before,
                            load_avg_1m_after=os.getloadavg()[0], cores=os.cpu_count(),
                            cpu=platform.processor() or platform.machine())
        atomic_write_json(a.out, {"meta": meta, "rows": results, "goals": checks})
        print(f"\nwritten: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
