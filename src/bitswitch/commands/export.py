"""``bitswitch export``: a profile as real packed low-bit weights (safetensors + map), or with
``--nested`` every width 2-8 at once (int8 masters + adapters, a nested checkpoint)."""

from __future__ import annotations

from ..errors import BitswitchError
from .args import add_model_args, add_quant_args, quant_options


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a profile as real packed low-bit weights (safetensors + map), or "
                                      "--nested: every width as int8 masters")
    add_model_args(p)
    p.add_argument("--adapters", default=None, help="adapter directory written by bitswitch train")
    p.add_argument("--profile", default=None, help="the profile to export (required without --nested)")
    p.add_argument("--nested", action="store_true",
                   help="write a nested checkpoint: one int8 master per block-unit weight (every width 2-8 of "
                        "the nested grid, at --group-size) and every adapter key; no --profile")
    p.add_argument("--merge", choices=["before", "after"], default="after",
                   help="before: quantize W + BA; after: keep Q(W) and the LoRA factors apart")
    p.add_argument("--unquantized-dtype", choices=["bf16", "fp16", "fp32"], default=None,
                   help="embeddings, norms, head (default fp16; bf16 with --nested)")
    p.add_argument("--lora-dtype", choices=["bf16", "fp16", "fp32"], default=None,
                   help="LoRA factors (default fp32; bf16 with --nested)")
    p.add_argument("--calib-data", default=None, help="SQuAD training file for static activation ranges")
    p.add_argument("--out", required=True)
    add_quant_args(p)


def run(a, argv) -> int:
    from ..jobs import check_output_dir
    from ..results import markdown_table, run_metadata

    if a.nested and a.profile:
        raise BitswitchError("export --nested writes every width at once: drop --profile")
    if not a.nested and not a.profile:
        raise BitswitchError("export needs --profile (the profile to export), or --nested for every width at once")
    if not a.nested and "bf16" in (a.unquantized_dtype, a.lora_dtype):
        raise BitswitchError("export --profile stores fp16 or fp32 (bf16 is for --nested): pass fp16 or fp32")
    check_output_dir(a.out)
    if a.nested:
        from ..export.nested import export_nested, report_table
        from ..export.nested_prepare import prepare_nested

        model, tok, source = prepare_nested(a.model, a.adapters, quant_options(a), a.device, a.dtype, a.seed)
        rep = export_nested(model, tok, a.out, unquantized_dtype=a.unquantized_dtype or "bf16",
                            lora_dtype=a.lora_dtype or "bf16", adapter_source=source, meta=run_metadata(argv, a.seed))
        print(report_table(rep))
        return 0
    from ..export import export_model
    from ..export.prepare import prepare_for_export

    model, tok = prepare_for_export(a.model, a.adapters, a.profile, quant_options(a), a.device, a.dtype, a.seed,
                                    a.calib_data)
    rep = export_model(model, tok, a.profile, a.out, merge=a.merge, unquantized_dtype=a.unquantized_dtype or "fp16",
                       lora_dtype=a.lora_dtype or "fp32", meta=run_metadata(argv, a.seed))
    rows = [{"kind": k, "bytes": v} for k, v in rep["bytes"].items()]
    print(markdown_table(rows, ["kind", "bytes"]))
    print(f"\nexported {a.profile!r} to {a.out}: {rep['file_bytes']:,} bytes on disk "
          f"({rep['file_bytes'] / rep['fp32_bytes']:.1%} of fp32, {rep['file_bytes'] / rep['fp16_bytes']:.1%} of fp16); "
          f"weights equal the accounting of bitswitch profiles: {rep['matches_accounting']}")
    return 0
