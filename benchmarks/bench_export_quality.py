"""Exported models against fake quantization: SQuAD EM/F1, answer and WikiText perplexity, and the
merge-before / merge-after question.

For each profile the switchable model (with its adapters) is evaluated fake-quantized, then exported
with ``--merge after`` (Q(W) and the LoRA factors kept apart: must give the same predictions) and
``--merge before`` (Q(W + BA): the adapter's update goes through the quantizer too), with the
unquantized parameters kept in fp32 (``--unquantized-dtype``; fp16 rounds embeddings and norms, a
small change of its own that would blur the comparison), and each export is loaded back and evaluated with the same settings. Everything goes through the library calls that
``bitswitch export`` and ``bitswitch eval`` make.

    python benchmarks/bench_export_quality.py --adapters runs/demo/train/adapters --profiles w8a8 w4a8 \
        --limit 50 --out benchmarks/results/export_quality.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import rel, write

from bitswitch.evaluate.config import EvalConfig
from bitswitch.evaluate.runner import run_eval
from bitswitch.export import export_model
from bitswitch.export.prepare import prepare_for_export
from bitswitch.profiles import QuantOptions, safe_key

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def evaluate(model: str, adapters: str | None, profile: str | None, a, out: Path) -> dict:
    """SQuAD and WikiText records of one model at one profile (an export runs at its own)."""
    common = dict(model=model, adapters=adapters, profiles=[profile] if profile else None, device="cpu")
    squad = run_eval(EvalConfig(task="squad", data=a.squad, limit=a.limit, batch_size=a.batch_size,
                                max_new_tokens=a.max_new_tokens, out=str(out / "squad"), **common),
                     log=lambda m: None)["records"][0]
    wiki = run_eval(EvalConfig(task="wikitext", data=a.wikitext, max_tokens=a.max_tokens, out=str(out / "wiki"),
                               **common), log=lambda m: None)["records"][0]
    preds = [json.loads(line)["prediction"] for line in
             (out / "squad" / f"predictions-{safe_key(squad['profile'])}.jsonl").read_text().splitlines()]
    return {"em": squad["em"], "f1": squad["f1"], "answer_ppl": squad["answer_ppl"], "wikitext_ppl": wiki["ppl"],
            "weight_bytes": squad["weight_bytes"], "predictions": preds}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--adapters", required=True)
    ap.add_argument("--profiles", nargs="+", default=["w8a8", "w4a8"])
    ap.add_argument("--squad", default=rel(DATA / "squad-v1.1" / "dev-part1-v1.1.json"))
    ap.add_argument("--wikitext", default=rel(DATA / "wikitext-2-raw" / "wiki.test.raw"))
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--max-tokens", type=int, default=8192)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--unquantized-dtype", default="fp32", choices=["fp16", "fp32"],
                    help="embeddings, norms, fp units: fp32 (default) makes merge-after exactly the fake-quantized model")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.workdir or tmp)
        for prof in a.profiles:
            fake = evaluate(a.model, a.adapters, prof, a, work / f"fake-{prof}")
            rows.append({"profile": prof, "model": "fake-quantized", **fake})
            for merge in ("after", "before"):
                model, tok = prepare_for_export(a.model, a.adapters, prof, QuantOptions())
                rep = export_model(model, tok, prof, work / f"export-{prof}-{merge}", merge=merge, unquantized_dtype=a.unquantized_dtype)
                del model
                res = evaluate(str(work / f"export-{prof}-{merge}"), None, None, a, work / f"eval-{prof}-{merge}")
                res["file_bytes"] = rep["file_bytes"]
                rows.append({"profile": prof, "model": f"export, merge {merge}", **res})
            for r in rows[-3:]:
                r["same_predictions_as_fake"] = sum(p == q for p, q in zip(r["predictions"], fake["predictions"]))
                r["f1_vs_fake"] = r["f1"] - fake["f1"]
                r["wikitext_ppl_vs_fake"] = r["wikitext_ppl"] / fake["wikitext_ppl"]
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "predictions"}), flush=True)
    for r in rows:
        r.pop("predictions")
    write(a.out, rows, ["profile", "model", "em", "f1", "f1_vs_fake", "same_predictions_as_fake", "answer_ppl",
                        "wikitext_ppl", "wikitext_ppl_vs_fake", "file_bytes"],
          model=a.model, adapters=a.adapters, limit=a.limit, unquantized_dtype=a.unquantized_dtype, max_tokens=a.max_tokens, batch_size=a.batch_size)


if __name__ == "__main__":
    main()
