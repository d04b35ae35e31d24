"""``bitswitch train``: switchable-precision QAT of LoRA adapters (YAML config and/or flags)."""

from __future__ import annotations

import sys

from ..errors import BitswitchError

# flags that map 1:1 onto TrainConfig keys (None = not given, the config file decides)
TRAIN_FLAGS = {
    "--model": {}, "--data": {}, "--task": {}, "--profiles": {"nargs": "+"}, "--schedule": {},
    "--keying": {}, "--steps": {"type": int}, "--batch-size": {"type": int}, "--lr": {"type": float},
    "--seed": {"type": int}, "--save-every": {"type": int}, "--out": {}, "--device": {}, "--dtype": {},
    "--max-batch-tokens": {"type": int}, "--limit": {"type": int},
    "--checkpointing": {"action": "store_const", "const": True},
    "--learn-clip": {"action": "store_const", "const": True,
                     "help": "learn a clip factor per output channel / group and weight width (--set clip_lr=...)"},
    "--train-base": {"help": "lora (default: frozen weights) or full (switchable QAT of the block units' weights; "
                             "--set base_lr=..., --set lora=false for no adapters)"},
    "--max-memory": {"help": "e.g. 16GiB: refuse at setup, with options that fit, if the estimate is larger"},
}


# keys every config.yaml that train writes holds (a resumed run continues them)
RUN_KEYS = ("model", "data", "task", "profiles", "schedule", "steps", "batch_size", "lr", "seed")


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="switchable-precision QAT of LoRA adapters")
    p.add_argument("--config", default=None, help="YAML file of TrainConfig keys")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set distill=1.0")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the run in DIR from its checkpoint, with its saved config.yaml; flags may only "
                        "raise --steps or change operational keys (save_every, log_every, device, max_memory, "
                        "check_memory, checkpointing)")
    for flag, kw in TRAIN_FLAGS.items():
        p.add_argument(flag, default=None, **kw)


def parse_set(item: str) -> dict:
    import yaml

    key, eq, value = item.partition("=")
    if not eq or not key.strip():
        raise BitswitchError(f"--set {item!r} must be key=value, e.g. --set steps=200")
    return {key.strip(): yaml.safe_load(value) if value.strip() else None}


def run(a, argv) -> int:
    from pathlib import Path

    from ..train.config import TrainConfig, read_yaml
    from ..train.trainer import train

    overrides = {}
    for flag in TRAIN_FLAGS:
        value = getattr(a, flag[2:].replace("-", "_"))
        if value is not None:
            overrides[flag[2:].replace("-", "_")] = value
    config = a.config
    if a.resume:
        if a.out is not None and Path(a.out).resolve() != Path(a.resume).resolve():
            raise BitswitchError(f"--out {a.out!r} and --resume {a.resume!r} name different runs: drop --out "
                                 "(a resumed run writes where it ran)")
        saved = Path(a.resume) / "config.yaml"
        if not saved.is_file():
            raise BitswitchError(f"--resume {a.resume!r} has no config.yaml: pass the --out directory of a run")
        missing = [k for k in RUN_KEYS if k not in read_yaml(str(saved))]
        if missing:   # train writes every key: a file without them is damaged, not a run to continue
            raise BitswitchError(f"{saved} lacks {', '.join(missing)}: it is damaged or was not written by "
                                 "bitswitch train, so the run cannot be continued; start a new --out")
        if a.config:   # the keys it sets are checked against the saved run as flags are
            overrides = {**read_yaml(a.config), **overrides}
        config = str(saved)
        overrides["out"] = a.resume
    for item in a.overrides:   # --set wins over the flags
        overrides.update(parse_set(item))
    cfg = TrainConfig.load(config, overrides)
    summary = train(cfg, argv, resume=bool(a.resume), log=lambda m: print(m, file=sys.stderr))
    model = f"; model: {summary['model']}" if cfg.train_base == "full" else ""
    print(f"trained {summary['steps']} steps; adapters: {summary['adapters']}{model}; metrics: {cfg.out}/metrics.jsonl")
    return 0
