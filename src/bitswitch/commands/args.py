"""Argument groups every subcommand shares, and configs filled from dataclass fields.

A flag's ``dest`` is the config field it fills: :func:`config_from_args` builds any config
dataclass from the parsed namespace by field name, so no command copies arguments by hand.
"""

from __future__ import annotations

import argparse
import dataclasses

from ..errors import BitswitchError
from ..jobs import ORDERS


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would print the usage block too)
        raise BitswitchError(f"{self.prog}: {message} (see {self.prog} --help)")


def add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required, help="hub id, local dir, smollm2-135m, tiny-gpt2, tiny-llama")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--seed", type=int, default=0)


def add_quant_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("quantizers")
    g.add_argument("--act-mode", choices=["token", "tensor"], default="token",
                   help="activations: per-token dynamic (default) or per-tensor static (calibrated)")
    g.add_argument("--group-size", type=int, default=None, help="weight group size (default: per channel)")
    g.add_argument("--weight-asym", action="store_true", help="asymmetric weight quantization")
    g.add_argument("--act-sym", action="store_true", help="symmetric activation quantization")
    g.add_argument("--quantizer", choices=["uniform", "log"], default="uniform")
    g.add_argument("--weight-grid", choices=["independent", "nested", "gguf"], default="independent",
                   help="nested: every weight width is the top bits of one int8 master (what the runtime "
                        "and export --nested run); gguf: llama.cpp's block formats bit for bit (w8 Q8_0, "
                        "w4 Q4_0 or with --weight-asym Q4_1, w5 Q5_0 / Q5_1; blocks of 32; export --format gguf)")


def add_run_args(p: argparse.ArgumentParser, data_help: str, adapters: bool = True) -> None:
    """The :class:`~bitswitch.jobs.RunConfig` flags: model, device, data selection, quantizers, batch."""
    add_model_args(p)
    if adapters:
        p.add_argument("--adapters", default=None, help="adapter directory written by bitswitch train")
    p.add_argument("--data", default=None, help=data_help)
    p.add_argument("--limit", type=int, default=None, help="squad: N questions (from --offset of --order)")
    p.add_argument("--offset", type=int, default=0,
                   help="skip the first N questions of --order (squad) or tokens (text): held-out slices")
    p.add_argument("--order", choices=ORDERS, default="stratified",
                   help="squad question order: a seeded sample stratified over articles (default; disjoint "
                        "--offset slices stay disjoint) or the file's own order")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the stratified question order")
    p.add_argument("--batch-size", type=int, default=8)
    add_quant_args(p)


def quant_options(a):
    from ..profiles import QuantOptions

    if a.group_size is not None and a.group_size < 1:
        raise BitswitchError(f"--group-size must be a positive number of input columns, got {a.group_size}")
    return QuantOptions(weight_symmetric=not a.weight_asym, group_size=a.group_size, act_mode=a.act_mode,
                        act_symmetric=a.act_sym, method=a.quantizer,
                        weight_grid=getattr(a, "weight_grid", "independent"))


def config_from_args(cls, a: argparse.Namespace, **overrides):
    """``cls`` filled from the namespace by field name (a flag left at None keeps the field's
    default when that default is not None), quantizer flags as ``options``, then ``overrides``."""
    kw = {}
    for f in dataclasses.fields(cls):
        if not f.init or not hasattr(a, f.name):
            continue
        value = getattr(a, f.name)
        if value is None and f.default is not None and f.default is not dataclasses.MISSING:
            continue
        kw[f.name] = value
    if "options" in {f.name for f in dataclasses.fields(cls)} and hasattr(a, "act_mode"):
        kw["options"] = quant_options(a)
    kw.update(overrides)
    return cls(**kw)


def print_results(results: dict, out: str) -> None:
    """The table, then where the results and plots are."""
    print(results["table"])
    print(f"\nresults: {out}/results.json" + "".join(f"\nplot: {p}" for p in results.get("artifacts", [])))
