"""The ``bitswitch`` command line: parses arguments and calls library functions, nothing more.

Every subcommand lives in ``bitswitch/commands/<name>.py`` with ``add_parser(sub)`` and
``run(args, argv) -> exit code``. User errors (``BitswitchError``, bad arguments) print one line on
stderr and exit with code 2.
"""

from __future__ import annotations

import functools
import importlib
import sys

from .commands.args import Parser
from .errors import BitswitchError

# the subcommands, in the order ``bitswitch --help`` lists them; each is bitswitch.commands.<name> ('-' as '_')
COMMANDS: tuple[str, ...] = ("eval", "generate", "train", "demo", "prepare", "export", "profiles", "run", "report",
                             "attack", "sensitivity", "search", "verify-gguf")


# commands left on glibc's dynamic mmap threshold: with it fixed (results.bound_heap_retention) every
# large activation buffer is a fresh mmap, faulted in page by page, and training SmolLM2 (batch 8 x 384
# tokens) takes about 1.7x as long (it saves peak RSS: ~4.5 GB against ~6.3 GB, not worth it there); the bound
# is for the commands whose memory is measured against fp (eval, export, search...)
UNBOUNDED_HEAP = ("train", "demo", "run")


def _command(name: str):
    return importlib.import_module(f".commands.{name.replace('-', '_')}", __package__)


def build_parser() -> Parser:
    parser = Parser(prog="bitswitch", description="Switchable-precision quantization of causal LMs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name in COMMANDS:
        _command(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None, bound_heap: bool = True) -> int:
    """``bound_heap``: fix glibc's mmap threshold unless the command trains (``UNBOUNDED_HEAP``); the
    steps of ``bitswitch run`` run in-process without it, as their process was set up."""
    from .results import bound_heap_retention

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        if bound_heap and args.command not in UNBOUNDED_HEAP:
            bound_heap_retention()
        # for commands that run other commands (bitswitch run)
        args.command_line = (build_parser, functools.partial(main, bound_heap=False))
        if getattr(args, "device", None) is not None:   # a device this machine lacks fails now, before any work
            from .models import resolve_device

            resolve_device(args.device)
        return _command(args.command).run(args, argv)
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
