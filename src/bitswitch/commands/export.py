"""``bitswitch export``: a profile as real packed low-bit weights (safetensors + map, or llama.cpp GGUF
with ``--format gguf``), or with ``--nested`` every width 2-8 at once (int8 masters + adapters, a
nested checkpoint)."""

from __future__ import annotations

from ..errors import BitswitchError
from .args import add_model_args, add_quant_args, quant_options


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a profile as real packed low-bit weights (safetensors + map), or "
                                      "--nested: every width as int8 masters")
    add_model_args(p)
    p.add_argument("--adapters", default=None, help="adapter directory written by bitswitch train")
    p.add_argument("--profile", default=None, help="the profile to export (required without --nested)")
    p.add_argument("--format", choices=["bitswitch", "gguf"], default="bitswitch",
                   help="gguf: llama.cpp's model.gguf (+ adapter.gguf for the LoRA) on the gguf weight grid")
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

    if a.nested and a.format == "gguf":
        raise BitswitchError("--nested writes bitswitch's nested checkpoint; GGUF holds one profile: drop one of them")
    if a.nested and a.profile:
        raise BitswitchError("export --nested writes every width at once: drop --profile")
    if not a.nested and not a.profile:
        raise BitswitchError("export needs --profile (the profile to export), or --nested for every width at once")
    if not a.nested and "bf16" in (a.unquantized_dtype, a.lora_dtype):
        raise BitswitchError("export --profile stores fp16 or fp32 (bf16 is for --nested): pass fp16 or fp32")
    if a.format == "gguf":
        return run_gguf(a, argv)
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


def run_gguf(a, argv) -> int:
    """``--format gguf``: the gguf weight grid (the only one GGUF holds), the LoRA kept apart."""
    import dataclasses
    import os

    from ..errors import BitswitchError
    from ..export.gguf_export import export_gguf
    from ..export.prepare import prepare_for_export
    from ..jobs import check_output_dir
    from ..models import smollm2_path
    from ..results import markdown_table, run_metadata

    options = quant_options(a)
    if a.merge != "after":
        raise BitswitchError("--format gguf keeps the LoRA apart (adapter.gguf, applied by llama.cpp): "
                             "drop --merge before")
    if options.weight_grid == "nested":
        raise BitswitchError("--format gguf writes llama.cpp's block formats: use --weight-grid gguf, not nested")
    check_output_dir(a.out)
    model, tok = prepare_for_export(a.model, a.adapters, a.profile, dataclasses.replace(options, weight_grid="gguf"),
                                    a.device, a.dtype, a.seed, a.calib_data)
    source = os.path.join(*smollm2_path()) if a.model == "smollm2-135m" else None
    rep = export_gguf(model, tok, a.profile, a.out, unquantized_dtype=a.unquantized_dtype or "fp16",
                      lora_dtype=a.lora_dtype or "fp32",
                      source_gguf=source, meta=run_metadata(argv, a.seed))
    print(markdown_table([{"type": k, "tensors": v} for k, v in sorted(rep["tensor_types"].items())],
                         ["type", "tensors"]))
    files = ", ".join(f"{n} {b:,} bytes" for n, b in rep["files"].items())
    print(f"\nexported {a.profile!r} as GGUF ({rep['arch']}) to {a.out}: {files}; quantized weights equal the "
          f"accounting of bitswitch profiles: {rep['matches_accounting']}")
    other = sorted(u for u, mode in rep["act_modes"].items() if mode != "q8_0")
    if other:
        print(f"note: the activation quantizers of {', '.join(other[:4])}{', ...' if len(other) > 4 else ''} are not "
              "part of GGUF; llama.cpp quantizes activations its own way (q8 blocks of 32, what a8 on the gguf grid "
              "runs)")
    return 0
