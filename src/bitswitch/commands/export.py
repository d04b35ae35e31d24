"""``bitswitch export``: a profile as real packed low-bit weights (safetensors + map, or llama.cpp GGUF)."""

from __future__ import annotations

from .args import add_model_args, add_quant_args, quant_options


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a profile as real packed low-bit weights (safetensors + map)")
    add_model_args(p)
    p.add_argument("--adapters", default=None, help="adapter directory written by bitswitch train")
    p.add_argument("--profile", required=True)
    p.add_argument("--format", choices=["bitswitch", "gguf"], default="bitswitch",
                   help="gguf: llama.cpp's model.gguf (+ adapter.gguf for the LoRA) on the gguf weight grid")
    p.add_argument("--merge", choices=["before", "after"], default="after",
                   help="before: quantize W + BA; after: keep Q(W) and the LoRA factors apart")
    p.add_argument("--unquantized-dtype", choices=["fp16", "fp32"], default="fp16")
    p.add_argument("--lora-dtype", choices=["fp16", "fp32"], default="fp32")
    p.add_argument("--calib-data", default=None, help="SQuAD training file for static activation ranges")
    p.add_argument("--out", required=True)
    add_quant_args(p)


def run(a, argv) -> int:
    from ..export import export_model
    from ..export.prepare import prepare_for_export
    from ..jobs import check_output_dir
    from ..results import markdown_table, run_metadata

    if a.format == "gguf":
        return run_gguf(a, argv)
    check_output_dir(a.out)
    model, tok = prepare_for_export(a.model, a.adapters, a.profile, quant_options(a), a.device, a.dtype, a.seed,
                                    a.calib_data)
    rep = export_model(model, tok, a.profile, a.out, merge=a.merge, unquantized_dtype=a.unquantized_dtype,
                       lora_dtype=a.lora_dtype, meta=run_metadata(argv, a.seed))
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
    rep = export_gguf(model, tok, a.profile, a.out, unquantized_dtype=a.unquantized_dtype, lora_dtype=a.lora_dtype,
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
