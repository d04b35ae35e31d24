"""Paired differences of per-question SQuAD scores between profiles (same questions), with standard errors.

    python benchmarks/paired.py runs/eval/predictions-fp.jsonl runs/eval/predictions-w8a8.jsonl ... \
        [--out benchmarks/results/paired.json]

The first file is the reference; each row gives the other profile's mean F1 / EM minus the
reference's over the questions both answered, the standard error of that mean difference and
whether it exceeds two standard errors.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import per_question, write

from bitswitch.results import se_of_mean


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="predictions-<profile>.jsonl files; the first is the reference")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    missing = [f for f in a.files if not Path(f).is_file()]
    if missing:   # e.g. an evaluation still running: a one-line error, not a traceback
        ap.error(f"no such predictions file: {', '.join(missing)}")
    ref_name = Path(a.files[0]).stem.removeprefix("predictions-")
    ref = per_question(a.files[0])
    rows = []
    for f in a.files[1:]:
        other = per_question(f)
        ids = [i for i in ref if i in other]
        row = {"profile": Path(f).stem.removeprefix("predictions-"), "reference": ref_name, "n": len(ids)}
        for m in ("f1", "em"):
            d = [100 * (float(other[i][m]) - float(ref[i][m])) for i in ids]
            row[f"d_{m}"], row[f"se_{m}"] = sum(d) / len(d), se_of_mean(d)
            row[f"{m}_significant"] = abs(row[f"d_{m}"]) > 2 * row[f"se_{m}"]
        rows.append(row)
    write(a.out, rows, ["profile", "reference", "n", "d_f1", "se_f1", "f1_significant", "d_em", "se_em",
                        "em_significant"])


if __name__ == "__main__":
    main()
