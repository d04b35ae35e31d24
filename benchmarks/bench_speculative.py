"""Self-speculative decoding on SmolLM2-135M: draft at LOW (w4g32), verify at HIGH (w8).

Each LOW (``--low``, several allowed) runs at every k of ``--k``, with a fixed draft length and, for
each floor of ``--min-prob``, with drafts cut before the first token LOW gives less than that
probability (adaptive length up to k).

For ``--prompts`` SQuAD v1.1 dev questions (stratified over articles; the eval prompt template),
each engine decodes exactly ``--new-tokens`` tokens greedily at HIGH (EOS not applied, no stop
strings), plainly and speculatively for every draft length k in ``--k``, one sequence at a time
(batch 1). Every speculative output is checked token for token against plain greedy at HIGH on
the same engine (``exact`` counts the prompts where it matched). Reported per engine and k:
acceptance (accepted drafts / drafted tokens), tokens per verify forward, and decode tokens/s
(new tokens after the first / wall time after the prefill) against plain greedy at HIGH, timed
interleaved per prompt (one warm-up prompt first, not counted).

Engines: ``fake`` (fake quantization on the transformers model, float32; float weight cache) and
``runtime`` (:class:`bitswitch.runtime.Runtime`: int4 / int8 CPU kernels in bf16): speed claims
come from the runtime.

    python benchmarks/bench_speculative.py --out benchmarks/results/speculative.json
"""

from __future__ import annotations

import argparse
import copy
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from common import rel, write

from bitswitch.data.squad import DEFAULT_TEMPLATE, PromptConfig, encode_prompts, load_squad
from bitswitch.dynamic import FakeQuantEngine, RuntimeEngine, greedy_generate, speculative_generate
from bitswitch.models import load_model
from bitswitch.runtime import Runtime
from bitswitch.switching import make_switchable, set_weight_cache

ROOT = Path(__file__).resolve().parents[1]
SQUAD = ROOT.parent / "shared" / "data" / "squad-v1.1" / "dev-part1-v1.1.json"
COLUMNS = ["engine", "low", "k", "min_prob", "prompts", "exact", "acceptance", "tokens_per_verify", "decode_tok_s",
           "greedy_tok_s", "speedup"]


def engines(names, lows, high):
    model, tok = load_model("smollm2-135m", device="cpu")
    out = {}
    if "runtime" in names:
        out["runtime"] = RuntimeEngine(Runtime.from_model(copy.deepcopy(model), tok, [high, *lows]))
    if "fake" in names:
        make_switchable(model)
        set_weight_cache(model, "float")
        out["fake"] = FakeQuantEngine(model, tok)
    return out, tok


def bench(engine, prompts, configs, high, new_tokens, log) -> list[dict]:
    """``configs``: (low, k, min_prob) triples, each timed on every prompt beside plain greedy at ``high``."""
    greedy_generate(engine, prompts[0], high, new_tokens, eos=False)            # warm-up
    for low in dict.fromkeys(c[0] for c in configs):
        speculative_generate(engine, prompts[0], low, high, configs[0][1], new_tokens, eos=False)
    stats = {c: {"exact": 0, "drafted": 0, "accepted": 0, "rounds": 0, "tokens": 0, "s": 0.0} for c in configs}
    g_tokens, g_s = 0, 0.0
    for i, p in enumerate(prompts):
        ref = greedy_generate(engine, p, high, new_tokens, eos=False)
        g_tokens, g_s = g_tokens + len(ref.tokens) - 1, g_s + ref.decode_s
        for c in configs:
            low, k, floor = c
            out = speculative_generate(engine, p, low, high, k, new_tokens, eos=False, min_prob=floor)
            s = stats[c]
            s["exact"] += out.tokens == ref.tokens
            s["drafted"] += out.drafted
            s["accepted"] += out.accepted
            s["rounds"] += out.rounds
            s["tokens"] += len(out.tokens) - 1
            s["s"] += out.decode_s
        log(f"  prompt {i + 1}/{len(prompts)}: greedy {g_tokens / g_s:.1f} tok/s, "
            + ", ".join(f"{c[0]} k={c[1]}{'' if c[2] is None else f' p>={c[2]:g}'} "
                        f"{stats[c]['s'] and stats[c]['tokens'] / stats[c]['s']:.1f}" for c in configs))
    greedy_tok_s = g_tokens / g_s
    rows = []
    for (low, k, floor), s in stats.items():
        tok_s = s["tokens"] / s["s"]
        rows.append({"low": low, "k": k, "min_prob": floor, "prompts": len(prompts), "exact": s["exact"],
                     "acceptance": round(s["accepted"] / s["drafted"], 4) if s["drafted"] else None,
                     "drafted": s["drafted"],
                     "accepted": s["accepted"], "tokens_per_verify": round(s["tokens"] / s["rounds"], 3),
                     "decode_tok_s": round(tok_s, 2), "greedy_tok_s": round(greedy_tok_s, 2),
                     "speedup": round(tok_s / greedy_tok_s, 3)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--k", type=int, nargs="+", default=list(range(1, 9)))
    ap.add_argument("--engines", nargs="+", default=["runtime", "fake"], choices=["runtime", "fake"])
    ap.add_argument("--low", nargs="+", default=["w4g32"],
                    help="draft profiles, e.g. w4g32 'w4g32;head=w4g32' (a quantized LM head drafts cheaper)")
    ap.add_argument("--min-prob", type=float, nargs="*", default=[],
                    help="also run each k with adaptive drafts cut before a token LOW gives less than this")
    ap.add_argument("--high", default="w8")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=str(SQUAD))
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    built, tok = engines(a.engines, a.low, a.high)
    configs = [(low, k, floor) for low in a.low for k in a.k for floor in (None, *a.min_prob)]
    examples = load_squad(a.data, limit=a.prompts, order="stratified")
    prompts, _ = encode_prompts(tok, examples, PromptConfig(template=DEFAULT_TEMPLATE), 2048, reserve=a.new_tokens)
    rows = []
    for name, engine in built.items():   # the results file is rewritten after each engine
        print(f"{name}:", flush=True)
        t0 = time.perf_counter()
        rows += [{"engine": name, **r} for r in bench(engine, prompts, configs, a.high, a.new_tokens,
                                                      lambda m: print(m, flush=True))]
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
        write(a.out, rows, COLUMNS, model="smollm2-135m", low=a.low, high=a.high, new_tokens=a.new_tokens,
              threads=a.threads, batch=1, data=rel(a.data),
              prompt_tokens_mean=round(statistics.mean(map(len, prompts)), 1),
              articles=len({ex.title for ex in examples}), cpu=platform.processor() or platform.machine(),
              eos="not applied (exactly new_tokens tokens)")
    if a.out:
        md = Path(a.out).with_suffix(".md")
        from bitswitch.results import markdown_table

        md.write_text(f"# Self-speculative decoding, {' / '.join(a.low)} -> {a.high}, SmolLM2-135M\n\n`python "
                      f"benchmarks/bench_speculative.py {shlex.join(sys.argv[1:])}`\n\n"
                      f"{markdown_table(rows, COLUMNS)}\n")


if __name__ == "__main__":
    main()
