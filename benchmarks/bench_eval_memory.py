"""Evaluation peak memory and speed: fake-quantized profiles against fp, and the two weight caches.

Every row is one ``bitswitch eval --task squad`` (the library's ``run_eval``) in a fresh process, so
its peak resident set (VmHWM) is its own: the model, its adapters, the cached quantized weights and
the decoding state, on the same questions. Rows: ``fp``; each quantized profile with the default
``codes`` cache (1 byte per weight + scales, dequantized at every forward); and with the ``float``
cache (a fake-quantized float copy of every quantized weight).

Goal: evaluation peak at most 1.1x that of fp evaluation. The ``codes``/``float`` rows
also give the speed the compact cache costs in token-by-token decoding.

    python benchmarks/bench_eval_memory.py --adapters runs/demo/train/adapters --limit 32 \
        --out benchmarks/results/eval_memory.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import rel, write

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "data" / "squad-v1.1" / "dev-part1-v1.1.json"


def child(profile: str, cache: str, a) -> dict:
    from bitswitch.evaluate.config import EvalConfig
    from bitswitch.evaluate.runner import run_eval
    from bitswitch.results import bound_heap_retention

    if not a.default_malloc:
        bound_heap_retention()   # what the bitswitch CLI does

    with tempfile.TemporaryDirectory() as out:
        cfg = EvalConfig(model=a.model, task="squad", profiles=[profile], out=out, data=a.data,
                         adapters=a.adapters, device=a.device, limit=a.limit, batch_size=a.batch_size,
                         max_new_tokens=a.max_new_tokens, weight_cache=cache)
        rec = run_eval(cfg, log=lambda m: None)["records"][0]
    return {"row": f"{profile} ({cache})" if profile != "fp" else "fp", "profile": profile, "cache": cache,
            "f1": rec["f1"], "em": rec["em"], "questions_per_s": rec["questions_per_s"],
            "peak_rss_mb": vm_hwm_mb()}


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--adapters", default=None)
    ap.add_argument("--data", default=rel(DEV))
    ap.add_argument("--profiles", nargs="+", default=["w8a8", "w4a8"])
    ap.add_argument("--limit", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--default-malloc", action="store_true",
                    help="keep glibc's dynamic mmap threshold (the CLI fixes it; see results.bound_heap_retention)")
    ap.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.child:
        print("RESULT " + json.dumps(child(*a.child, a)))
        return
    plan = [("fp", "codes")] + [(p, c) for p in a.profiles for c in ("codes", "float")]
    rows = []
    for profile, cache in plan:
        args = [sys.executable, __file__, "--child", profile, cache, "--model", a.model, "--data", a.data,
                "--limit", str(a.limit), "--batch-size", str(a.batch_size), "--max-new-tokens",
                str(a.max_new_tokens), "--device", a.device] + (["--default-malloc"] if a.default_malloc else []) + (["--adapters", a.adapters] if a.adapters else [])
        proc = subprocess.run(args, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"row {profile} ({cache}) failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.split("RESULT ", 1)[1]))
        print(f"{rows[-1]['row']}: {rows[-1]['questions_per_s']:.2f} q/s, {rows[-1]['peak_rss_mb']:.0f} MiB", flush=True)
    fp = rows[0]
    for r in rows:
        r["peak_vs_fp"] = r["peak_rss_mb"] / fp["peak_rss_mb"]
        r["speed_vs_fp"] = r["questions_per_s"] / fp["questions_per_s"]
    write(a.out, rows, ["row", "f1", "em", "questions_per_s", "speed_vs_fp", "peak_rss_mb", "peak_vs_fp"],
          model=a.model, adapters=a.adapters, limit=a.limit, batch_size=a.batch_size, device=a.device,
          default_malloc=a.default_malloc)


if __name__ == "__main__":
    main()
