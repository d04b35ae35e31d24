"""The ``bitswitch`` command line: parses arguments and calls library functions, nothing more.

User errors (``BitswitchError``, bad arguments) print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import BitswitchError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would print the usage block too)
        raise BitswitchError(f"{self.prog}: {message} (see {self.prog} --help)")


def _quant_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("quantizers")
    g.add_argument("--act-mode", choices=["token", "tensor"], default="token",
                   help="activations: per-token dynamic (default) or per-tensor static (calibrated)")
    g.add_argument("--group-size", type=int, default=None, help="weight group size (default: per channel)")
    g.add_argument("--weight-asym", action="store_true", help="asymmetric weight quantization")
    g.add_argument("--act-sym", action="store_true", help="symmetric activation quantization")
    g.add_argument("--quantizer", choices=["uniform", "log"], default="uniform")


def _options(a):
    from .profiles import QuantOptions

    if a.group_size is not None and a.group_size < 1:
        raise BitswitchError(f"--group-size must be a positive number of input columns, got {a.group_size}")
    return QuantOptions(weight_symmetric=not a.weight_asym, group_size=a.group_size, act_mode=a.act_mode,
                        act_symmetric=a.act_sym, method=a.quantizer)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="hub id, local dir, smollm2-135m, tiny-gpt2, tiny-llama")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bitswitch", description="Switchable-precision quantization of causal LMs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ev = sub.add_parser("eval", help="evaluate profiles: wikitext perplexity, SQuAD EM/F1, lm-eval tasks")
    _model_args(ev)
    ev.add_argument("--task", required=True, help="wikitext | squad | lm-eval:TASK[,TASK...]")
    ev.add_argument("--data", default=None, help="file, directory or hub name (wikitext, squad)")
    ev.add_argument("--profiles", nargs="+", default=None,
                    help="profiles (names, rules or files); default fp, or an exported model's own profile")
    ev.add_argument("--adapters", default=None, help="adapter directory written by bitswitch train")
    ev.add_argument("--out", required=True, help="output directory (results.json, results.md)")
    ev.add_argument("--max-tokens", type=int, default=None, help="wikitext: first N tokens only")
    ev.add_argument("--window", type=int, default=1024, help="wikitext: window length in tokens")
    ev.add_argument("--stride", type=int, default=None, help="wikitext: window stride (default: window)")
    ev.add_argument("--limit", type=int, default=None, help="squad / lm-eval: first N examples (from --offset)")
    ev.add_argument("--offset", type=int, default=0, help="skip the first N questions (squad) or tokens (wikitext)")
    ev.add_argument("--shots", type=int, default=0, help="squad: k-shot examples per prompt")
    ev.add_argument("--train-data", default=None, help="squad: SQuAD training file for k-shot examples and static calibration")
    ev.add_argument("--template", default=None, help="squad: prompt template with {context} and {question}")
    ev.add_argument("--chat", action="store_true", help="squad: wrap prompts in the chat template")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--max-new-tokens", type=int, default=32)
    ev.add_argument("--calib-batches", type=int, default=4, help="batches for static activation ranges")
    ev.add_argument("--weight-cache", choices=["codes", "float"], default="codes",
                    help="cache quantized weights as 1-byte codes (default, least memory) or as float "
                         "(faster token-by-token decoding, as large as the float units); same results")
    _quant_args(ev)

    tr = sub.add_parser("train", help="switchable-precision QAT of LoRA adapters")
    tr.add_argument("--config", default=None, help="YAML file of TrainConfig keys")
    tr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key (repeatable), e.g. --set distill=1.0")
    tr.add_argument("--resume", default=None, metavar="DIR", help="continue the run in DIR from its checkpoint")
    for flag, kw in TRAIN_FLAGS.items():
        tr.add_argument(flag, default=None, **kw)

    de = sub.add_parser("demo", help="the main job: train switchable adapters on SQuAD, evaluate every profile")
    de.add_argument("--model", default="smollm2-135m")
    de.add_argument("--train-data", default="squad", help="SQuAD training file/dir (default: hub 'squad')")
    de.add_argument("--dev-data", default="squad", help="SQuAD dev file/dir (default: hub 'squad')")
    de.add_argument("--profiles", nargs="+", default=["fp", "w8a8", "w6a8", "w4a8"])
    de.add_argument("--steps", type=int, default=60)
    de.add_argument("--batch-size", type=int, default=8)
    de.add_argument("--lr", type=float, default=1e-3)
    de.add_argument("--eval-limit", type=int, default=50, help="dev questions to evaluate")
    de.add_argument("--device", default="auto")
    de.add_argument("--out", default="runs/demo")

    ex = sub.add_parser("export", help="write a profile as real packed low-bit weights (safetensors + map)")
    _model_args(ex)
    ex.add_argument("--adapters", default=None, help="adapter directory written by bitswitch train")
    ex.add_argument("--profile", required=True)
    ex.add_argument("--merge", choices=["before", "after"], default="after",
                    help="before: quantize W + BA; after: keep Q(W) and the LoRA factors apart")
    ex.add_argument("--unquantized-dtype", choices=["fp16", "fp32"], default="fp16")
    ex.add_argument("--lora-dtype", choices=["fp16", "fp32"], default="fp32")
    ex.add_argument("--calib-data", default=None, help="SQuAD training file for static activation ranges")
    ex.add_argument("--out", required=True)
    _quant_args(ex)

    pr = sub.add_parser("profiles", help="show a profile's per-unit table and weight bytes")
    _model_args(pr)
    pr.add_argument("--profile", required=True)
    pr.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _quant_args(pr)
    for name in COMMAND_MODULES:
        _command_module(name).add_parser(sub)
    return parser


# Commands that live in their own module under bitswitch/commands/ (each has add_parser(sub) and
# run(args, argv) -> exit code); the module name is the subcommand name.
COMMAND_MODULES: tuple[str, ...] = ("run", "report", "attack", "sensitivity", "search")


def _command_module(name: str):
    import importlib

    return importlib.import_module(f".commands.{name}", __package__)


def _cmd_eval(a, argv) -> int:
    from .evaluate.config import EvalConfig
    from .evaluate.runner import run_eval

    cfg = EvalConfig(model=a.model, task=a.task, profiles=a.profiles, out=a.out, data=a.data,
                     adapters=a.adapters, device=a.device, dtype=a.dtype, seed=a.seed,
                     options=_options(a), max_tokens=a.max_tokens, window=a.window, stride=a.stride,
                     limit=a.limit, offset=a.offset, shots=a.shots, train_data=a.train_data, template=a.template,
                     chat=a.chat, batch_size=a.batch_size, max_new_tokens=a.max_new_tokens,
                     calib_batches=a.calib_batches, weight_cache=a.weight_cache)
    results = run_eval(cfg, argv, log=lambda m: print(m, file=sys.stderr))
    print(results["table"])
    print(f"\nresults: {a.out}/results.json" + "".join(f"\nplot: {p}" for p in results.get("artifacts", [])))
    return 0


# train flags that map 1:1 onto TrainConfig keys (None = not given, the config file decides)
TRAIN_FLAGS = {
    "--model": {}, "--data": {}, "--task": {}, "--profiles": {"nargs": "+"}, "--schedule": {},
    "--keying": {}, "--steps": {"type": int}, "--batch-size": {"type": int}, "--lr": {"type": float},
    "--seed": {"type": int}, "--save-every": {"type": int}, "--out": {}, "--device": {}, "--dtype": {},
    "--max-batch-tokens": {"type": int}, "--limit": {"type": int},
    "--checkpointing": {"action": "store_const", "const": True},
    "--max-memory": {"help": "e.g. 16GiB: refuse at setup, with options that fit, if the estimate is larger"},
}


def _cmd_train(a, argv) -> int:
    from pathlib import Path

    from .train.config import TrainConfig
    from .train.trainer import train

    overrides = {}
    for flag in TRAIN_FLAGS:
        value = getattr(a, flag[2:].replace("-", "_"))
        if value is not None:
            overrides[flag[2:].replace("-", "_")] = value
    config = a.config
    if a.resume:
        config = str(Path(a.resume) / "config.yaml")
        if not Path(config).is_file():
            raise BitswitchError(f"--resume {a.resume!r} has no config.yaml: pass the --out directory of a run")
        overrides["out"] = a.resume
    for item in a.overrides:   # --set wins over the flags
        overrides.update(_parse_set(item))
    cfg = TrainConfig.load(config, overrides)
    summary = train(cfg, argv, resume=bool(a.resume), log=lambda m: print(m, file=sys.stderr))
    print(f"trained {summary['steps']} steps; adapters: {summary['adapters']}; metrics: {cfg.out}/metrics.jsonl")
    return 0


def _parse_set(item: str) -> dict:
    import yaml

    key, eq, value = item.partition("=")
    if not eq or not key.strip():
        raise BitswitchError(f"--set {item!r} must be key=value, e.g. --set steps=200")
    return {key.strip(): yaml.safe_load(value) if value.strip() else None}


def _cmd_demo(a, argv) -> int:
    from .demo import run_demo

    res = run_demo(model=a.model, train_data=a.train_data, dev_data=a.dev_data, profiles=a.profiles,
                   steps=a.steps, batch_size=a.batch_size, lr=a.lr, eval_limit=a.eval_limit, device=a.device,
                   out=a.out, argv=argv, log=lambda m: print(m, file=sys.stderr))
    print(res["table"])
    print(f"\nresults: {res['results']}\nplot: {res['plot']}")
    return 0


def _cmd_export(a, argv) -> int:
    from .export import export_model
    from .export.prepare import prepare_for_export
    from .results import markdown_table, run_metadata

    model, tok = prepare_for_export(a.model, a.adapters, a.profile, _options(a), a.device, a.dtype, a.seed,
                                    a.calib_data)
    rep = export_model(model, tok, a.profile, a.out, merge=a.merge, unquantized_dtype=a.unquantized_dtype,
                       lora_dtype=a.lora_dtype, meta=run_metadata(argv, a.seed))
    rows = [{"kind": k, "bytes": v} for k, v in rep["bytes"].items()]
    print(markdown_table(rows, ["kind", "bytes"]))
    print(f"\nexported {a.profile!r} to {a.out}: {rep['file_bytes']:,} bytes on disk "
          f"({rep['file_bytes'] / rep['fp32_bytes']:.1%} of fp32, {rep['file_bytes'] / rep['fp16_bytes']:.1%} of fp16); "
          f"weights equal the accounting of bitswitch profiles: {rep['matches_accounting']}")
    return 0


def _cmd_profiles(a, argv) -> int:
    from .accounting import profile_report
    from .loading import load
    from .results import markdown_table
    from .switching import make_switchable

    model, _ = load(a.model, device=a.device, dtype=a.dtype, seed=a.seed)
    make_switchable(model, _options(a))
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


COMMANDS = {"eval": _cmd_eval, "train": _cmd_train, "demo": _cmd_demo, "export": _cmd_export,
            "profiles": _cmd_profiles}


def main(argv: list[str] | None = None) -> int:
    from .results import bound_heap_retention

    argv = list(sys.argv[1:] if argv is None else argv)
    bound_heap_retention()
    try:
        args = build_parser().parse_args(argv)
        if args.command in COMMAND_MODULES:
            return _command_module(args.command).run(args, argv)
        return COMMANDS[args.command](args, argv)
    except BitswitchError as exc:
        print(f"bitswitch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bitswitch: interrupted; results written so far are kept", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - training stops and interrupts have their own exit codes
        from .train.trainer import Interrupted, NonFiniteLoss

        if isinstance(exc, Interrupted):
            print(f"bitswitch: {exc}; checkpoint saved, continue with --resume", file=sys.stderr)
            return 128 + int(exc.signum)
        if isinstance(exc, NonFiniteLoss):
            print(f"bitswitch: error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
