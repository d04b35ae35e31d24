"""The ``bitswitch`` command line: parses arguments and calls library functions, nothing more.

Every subcommand lives in ``bitswitch/commands/<name>.py`` with ``add_parser(sub)`` and
``run(args, argv) -> exit code``. User errors (``BitswitchError``, bad arguments) print one line on
stderr and exit with code 2.
"""

from __future__ import annotations

import importlib
import sys

from .commands.args import Parser
from .errors import BitswitchError

# the subcommands, in the order ``bitswitch --help`` lists them; each is bitswitch.commands.<name> ('-' as '_')
COMMANDS: tuple[str, ...] = ("eval", "generate", "train", "demo", "prepare", "export", "profiles", "run", "report",
                             "attack", "sensitivity", "search", "verify-gguf")


def _command(name: str):
    return importlib.import_module(f".commands.{name.replace('-', '_')}", __package__)


def build_parser() -> Parser:
    parser = Parser(prog="bitswitch", description="Switchable-precision quantization of causal LMs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name in COMMANDS:
        _command(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .results import bound_heap_retention

    argv = list(sys.argv[1:] if argv is None else argv)
    bound_heap_retention()
    try:
        args = build_parser().parse_args(argv)
        args.command_line = (build_parser, main)   # for commands that run other commands (bitswitch run)
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
