"""Export to packed low-bit weights: bytes on disk, and int8 weight-only inference against fp32.

Goals: each export's file within 3% of bits x params + scales (+ zero points) of the
quantized units plus the unquantized parameters at fp16 (``vs_theory``), and its tensor bytes equal
to ``profile_report``'s accounting; int8 weight-only (``w8``: symmetric, per channel) inference
compared with fp32 in tokens/s of one forward over a fixed batch and peak RSS. Each inference row
runs in a fresh process and reads its own high-water mark (VmHWM: ``ru_maxrss`` of a child started
from this large process would report this process's peak). torch's int8 CPU kernel is fast only
for bf16 inputs, so it is measured at fp32 (forced) and at bf16 against a bf16 baseline.

    python benchmarks/bench_export.py [--model smollm2-135m --mixed "w4g32a8;L*.attn_in=w8a8"] \
        [--batch 4 --seq 128 --repeat 3] --out benchmarks/results/export.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import timeit, write

import torch
import transformers

import bitswitch as bs
from bitswitch.export import export_model, load_exported
from bitswitch.results import peak_rss_mb

MB = 2**20
INFERENCE = [  # (row, checkpoint: the fp32 HF one or the w8 export, compute dtype, int8 kernel)
    ("fp32 (HF safetensors)", "hf", "fp32", "off"),
    ("w8 export fp32, dequantized per forward", "w8", "fp32", "off"),
    ("w8 export fp32, int8 kernel (forced)", "w8", "fp32", "on"),
    ("bf16 (HF safetensors)", "hf", "bf16", "off"),
    ("w8 export bf16, int8 kernel", "w8", "bf16", "on"),
]


def own_peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM, reset by exec) in MiB; ru_maxrss where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


def child(source: str, directory: str, dtype: str, int8: str, batch: int, seq: int, repeat: int) -> dict:
    """Load one model, time a forward over a fixed batch; runs in its own process (peak RSS)."""
    if source == "hf":
        model, _ = bs.load_model(directory, device="cpu", dtype=dtype)
    else:
        model, _ = load_exported(directory, dtype=dtype, int8_kernel=int8 == "on")
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))

    def forward():
        with torch.inference_mode():
            model(ids)

    t = timeit(forward, repeat)
    held = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    return {"tokens_per_s": batch * seq / t, "forward_ms": t * 1e3, "model_mb": held / MB,
            "peak_rss_mb": own_peak_rss_mb()}


def measure_in_child(source: str, directory: Path, dtype: str, int8: str, a) -> dict:
    cmd = [sys.executable, __file__, "--child", source, str(directory), dtype, int8, "--batch", str(a.batch),
           "--seq", str(a.seq), "--repeat", str(a.repeat)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"child {cmd[3:7]} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--mixed", default="w4g32a8;L*.attn_in=w8a8")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="where the exports go (default: a temporary directory)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", nargs=4, metavar=("SOURCE", "DIR", "DTYPE", "INT8"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(*a.child, a.batch, a.seq, a.repeat)))
        return
    torch.manual_seed(0)
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.workdir or tmp)
        model, tok = bs.load_model(a.model, device="cpu")
        # the baseline loads like any HF checkpoint; a GGUF model's weights are float32 already, but its
        # (GGUF) quantizer marker makes save_pretrained refuse
        model.hf_quantizer = None
        model.save_pretrained(work / "fp32")
        tok.save_pretrained(work / "fp32")
        bs.make_switchable(model)
        rows = []
        for i, prof in enumerate(("w8a8", "w4g32a8", a.mixed, "w8")):
            rep = export_model(model, tok, prof, work / f"export{i}")
            rows.append({"what": f"export {prof}", "MB": rep["file_bytes"] / MB, "vs_fp32": rep["vs_fp32"],
                         "vs_theory": rep["file_vs_theory"], "quantized_vs_theory": rep["quantized_vs_theory"],
                         "equals_accounting": rep["matches_accounting"]})
        del model
        for what, source, dtype, int8 in INFERENCE:
            res = measure_in_child(source, work / ("fp32" if source == "hf" else "export3"), dtype, int8, a)
            rows.append({"what": what, **res})
        fp = rows[-len(INFERENCE)]
        for r in rows[-len(INFERENCE):]:
            r["speed_vs_fp32"] = r["tokens_per_s"] / fp["tokens_per_s"]
            r["rss_vs_fp32"] = r["peak_rss_mb"] / fp["peak_rss_mb"]
        write(a.out, rows, ["what", "MB", "vs_fp32", "vs_theory", "quantized_vs_theory", "equals_accounting",
                            "tokens_per_s", "speed_vs_fp32", "peak_rss_mb", "rss_vs_fp32", "model_mb"],
              model=a.model, batch=a.batch, seq=a.seq, repeat=a.repeat, threads=torch.get_num_threads(),
              int8_kernel=bs.quant.exported.int8_kernel_works("cpu"))
        worst = max(r["vs_theory"] for r in rows if "vs_theory" in r)
        print(f"\nexports within {100 * (worst - 1):.2f}% of bits x params + scales (goal: 3%)")


if __name__ == "__main__":
    main()
