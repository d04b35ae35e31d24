"""``bitswitch profiles``: a profile's per-unit table and weight bytes."""

from __future__ import annotations

import json

from .args import add_model_args, add_quant_args, quant_options


def add_parser(sub) -> None:
    p = sub.add_parser("profiles", help="show a profile's per-unit table and weight bytes")
    add_model_args(p)
    p.add_argument("--profile", required=True)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_quant_args(p)


def run(a, argv) -> int:
    from ..accounting import profile_report
    from ..loading import load
    from ..results import markdown_table
    from ..switching import make_switchable

    model, _ = load(a.model, device=a.device, dtype=a.dtype, seed=a.seed)
    make_switchable(model, quant_options(a))
    rep = profile_report(model, a.profile)
    if a.json:
        print(json.dumps(rep, indent=2))
        return 0
    print(markdown_table(rep["units"], ["name", "module", "w_bits", "group_size", "a_bits", "params"]))
    mib = 1024 * 1024
    print(f"\nprofile {rep['profile']!r}: average weight bits {rep['avg_w_bits']:.3f}; weight bytes "
          f"{rep['weight_bytes']:,} ({rep['weight_bytes'] / mib:.2f} MiB) against fp16 "
          f"{rep['fp16_weight_bytes']:,} ({rep['weight_bytes'] / rep['fp16_weight_bytes']:.1%}) and fp32 "
          f"{rep['fp32_weight_bytes']:,} ({rep['weight_bytes'] / rep['fp32_weight_bytes']:.1%})")
    return 0
