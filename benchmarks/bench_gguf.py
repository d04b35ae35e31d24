"""SmolLM2-135M's GGUF exports verified inside llama.cpp: for each row, export the profile with
``bitswitch export --format gguf``'s library function, then run :func:`bitswitch.verify.runner.compare`
(llama.cpp via node-llama-cpp against bitswitch's fake quantization of the same profile, same inputs).

Rows (profiles on the gguf grid; a8 is llama.cpp's own q8_0 activation blocks, which is what
llama.cpp does to activations of these types on the CPU):

- ``w8``: ``w8a8``, every block unit Q8_0;
- ``w4``: ``w4a8``, Q4_0;
- ``w4-asym``: ``w4a8`` with ``--weight-asym``, Q4_1 (SmolLM2's own format);
- ``mixed``: ``w4a8;L*.attn_*=w8a8``: attention Q8_0, MLPs Q4_0.

Adapters (``--adapters``, trained on the gguf grid with shared keying) serve the symmetric rows;
adapters are tied to the quantizer options they were trained with, so ``w4-asym`` runs with
``--asym-adapters`` when given and without adapters otherwise.

    python benchmarks/bench_gguf.py --adapters runs/gguf-train/adapters --out benchmarks/results/gguf.json
    python benchmarks/bench_gguf.py --quick --rows w4 --out runs/bench-gguf-quick.json      # smoke test

Decode speeds alone, with nothing else running (``--speed-only`` skips SQuAD, WikiText and the noise
floor; the exports are timed beside the original Q4_1 file in the same process):

    python benchmarks/bench_gguf.py --speed-only --adapters runs/gguf-train/adapters \
        --asym-adapters runs/gguf-train-asym/adapters --threads 1 --speed-tokens 128 --speed-repeats 5 \
        --out benchmarks/results/gguf_speed_t1.json

Rows may run as separate processes (``--rows w8 --out runs/w8.json`` ...) and be combined:

    python benchmarks/bench_gguf.py --combine runs/w8.json runs/w4.json --out benchmarks/results/gguf.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from common import rel

from bitswitch.io import atomic_write_json, atomic_write_text
from bitswitch.results import markdown_table, run_metadata

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MIXED = "w4a8;L*.attn_*=w8a8"
ROWS = {"w8": ("w8a8", True), "w4": ("w4a8", True), "w4-asym": ("w4a8", False), "mixed": (MIXED, True)}
QUICK = {"limit": 6, "windows": 2, "window": 64, "speed_tokens": 16, "speed_repeats": 1}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--adapters", default=None, help="adapters for the symmetric rows (bitswitch train, gguf grid)")
    ap.add_argument("--asym-adapters", default=None, help="adapters trained with --weight-asym, for w4-asym")
    ap.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    ap.add_argument("--squad", default=str(DATA / "squad-v1.1" / "dev-part1-v1.1.json"))
    ap.add_argument("--wikitext", default=str(DATA / "wikitext-2-raw" / "wiki.test.raw"))
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--speed-tokens", type=int, default=64)
    ap.add_argument("--speed-repeats", type=int, default=3)
    ap.add_argument("--unquantized-dtype", choices=["fp16", "fp32"], default="fp16",
                    help="the export's embeddings (and the tied head llama.cpp reads from them)")
    ap.add_argument("--noise-floor", type=float, default=1e-6,
                    help="bitswitch against itself with its input embeddings perturbed by this much (0: skip)")
    ap.add_argument("--kv-cache", choices=["f16", "f32"], default="f16", help="llama.cpp's KV cache type")
    ap.add_argument("--flash-attention", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--speed-only", action="store_true",
                    help="decode speeds and sizes only (no SQuAD, WikiText or noise floor): run it alone")
    ap.add_argument("--quick", action="store_true", help=f"smoke test sizes: {QUICK}")
    ap.add_argument("--work", default="runs/bench-gguf", help="where the exports go (never committed)")
    ap.add_argument("--out", default="benchmarks/results/gguf.json")
    ap.add_argument("--combine", nargs="+", default=None, metavar="JSON",
                    help="only write --out (+ .md) from these results files of separately run rows")
    a = ap.parse_args(argv)
    if a.speed_only:
        a.squad = a.wikitext = None
        a.noise_floor = 0.0
    if a.quick:
        for k, v in QUICK.items():
            setattr(a, k, v)
    return a


def run_row(name: str, a) -> dict:
    import torch

    from bitswitch.export.gguf_export import export_gguf
    from bitswitch.export.prepare import prepare_for_export
    from bitswitch.models import smollm2_path
    from bitswitch.profiles import QuantOptions
    from bitswitch.verify.config import VerifyConfig
    from bitswitch.verify.runner import compare

    profile, symmetric = ROWS[name]
    adapters = a.adapters if symmetric else a.asym_adapters
    options = QuantOptions(weight_symmetric=symmetric, weight_grid="gguf")
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    model, tok = prepare_for_export(a.model, adapters, profile, options, device="cpu")
    source = os.path.join(*smollm2_path()) if a.model == "smollm2-135m" else None
    export_dir = Path(a.work) / name
    export_gguf(model, tok, profile, export_dir, unquantized_dtype=a.unquantized_dtype, source_gguf=source,
                meta={"command": f"benchmarks/bench_gguf.py row {name}"})
    cfg = VerifyConfig(model=a.model, adapters=adapters, options=options, export=str(export_dir), profile=profile,
                       squad=a.squad, wikitext=a.wikitext, limit=a.limit, windows=a.windows, window=a.window,
                       threads=a.threads, speed_tokens=a.speed_tokens, speed_repeats=a.speed_repeats,
                       noise_floor=a.noise_floor, kv_cache=a.kv_cache, flash_attention=a.flash_attention,
                       device="cpu", out=str(export_dir))
    record = compare(model, tok, cfg, log=print)
    record.pop("answers", None)
    record.update(row=name, weight_asym=not symmetric, adapters=rel(adapters) if adapters else None,
                  seconds=time.perf_counter() - t0)
    return record


def markdown(records: list[dict], settings: dict) -> str:
    from bitswitch.verify.runner import summary_markdown

    sizes = [{"row": r["row"], "file": f, "type": t, "tensors": v["tensors"], "weights": v["weights"],
              "bits_per_weight": v["bits_per_weight"], "bytes": v["bytes"]}
             for r in records for f in ("model.gguf",) for t, v in r["sizes"][f]["by_type"].items()]
    files = [{"row": r["row"], "file": f, "file_bytes": s["file_bytes"], "theoretical_bytes": s["theoretical_bytes"],
              "overhead_bytes": s["overhead_bytes"], "quantized_bits_per_weight": s["quantized_bits_per_weight"]}
             for r in records for f, s in r["sizes"].items()]
    return "\n\n".join([
        "# GGUF exports of SmolLM2-135M verified in llama.cpp",
        "Written by `benchmarks/bench_gguf.py`. Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()),
        "## Agreement and quality (llama.cpp vs bitswitch fake quantization, same inputs)",
        summary_markdown(records),
        "## Files against their theoretical sizes", markdown_table(files, ["row", "file", "file_bytes",
                                                                           "theoretical_bytes", "overhead_bytes",
                                                                           "quantized_bits_per_weight"]),
        markdown_table(sizes, ["row", "file", "type", "tensors", "weights", "bits_per_weight", "bytes"])]) + "\n"


def write(out: str, meta: dict, records: list[dict], settings: dict) -> None:
    from bitswitch.verify.runner import flat_metrics

    records = sorted(records, key=lambda r: list(ROWS).index(r["row"]))
    doc = {"meta": meta, "rows": [{"row": r["row"], **flat_metrics(r)} for r in records], "records": records}
    atomic_write_json(out, doc)
    atomic_write_text(Path(out).with_suffix(".md"), markdown(records, settings))


SETTINGS = ("model", "adapters", "asym_adapters", "squad", "limit", "order", "wikitext", "windows", "window",
            "threads", "speed_tokens", "speed_repeats", "unquantized_dtype", "noise_floor", "kv_cache",
            "flash_attention", "quick", "cpu")


def combine(files: list[str], out: str) -> None:
    """One results file from the files of rows run apart (their settings must agree but for the rows)."""
    docs = [json.loads(Path(f).read_text()) for f in files]
    settings = [{k: d["meta"].get(k) for k in SETTINGS} for d in docs]
    differ = sorted(k for k in SETTINGS if k not in ("adapters", "asym_adapters")
                    and len({json.dumps(s[k]) for s in settings}) > 1)
    if differ:
        raise SystemExit(f"the files differ in {', '.join(differ)}: combine runs of one setting")
    records = [r for d in docs for r in d["records"]]
    meta = {**docs[0]["meta"], "command": [d["meta"]["command"] for d in docs], "combined": [rel(f) for f in files],
            "adapters": sorted({str(s["adapters"]) for s in settings}),
            "asym_adapters": sorted({str(s["asym_adapters"]) for s in settings})}
    write(out, meta, records, {**settings[0], "rows": [r["row"] for r in records], "adapters": meta["adapters"],
                               "asym_adapters": meta["asym_adapters"]})
    print(f"written: {out}")


def main(argv=None) -> None:
    a = parse(argv)
    if a.combine:
        return combine(a.combine, a.out)
    settings = {"model": a.model, "rows": a.rows, "adapters": rel(a.adapters) if a.adapters else None,
                "asym_adapters": rel(a.asym_adapters) if a.asym_adapters else None,
                "squad": rel(a.squad) if a.squad else None,
                "limit": a.limit, "order": "stratified", "wikitext": rel(a.wikitext) if a.wikitext else None, "windows": a.windows,
                "window": a.window, "threads": a.threads, "speed_tokens": a.speed_tokens,
                "speed_repeats": a.speed_repeats, "unquantized_dtype": a.unquantized_dtype,
                "noise_floor": a.noise_floor, "kv_cache": a.kv_cache, "flash_attention": a.flash_attention,
                "quick": a.quick,
                "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"}
    meta = run_metadata(None, 0, **settings)
    records = []
    for name in a.rows:
        records.append(run_row(name, a))
        write(a.out, meta, records, settings)     # after every row: a stopped run keeps what it measured
        print(f"[{name}] done in {records[-1]['seconds']:.0f} s; written: {a.out}")
    print(markdown(records, settings))


if __name__ == "__main__":
    main()
