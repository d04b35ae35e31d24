"""Subcommands of the ``bitswitch`` CLI kept in their own modules.

Each module ``NAME`` defines ``add_parser(sub)`` (adds the ``NAME`` subparser to the argparse
subparsers object, using ``bitswitch.cli`` helpers for shared arguments) and
``run(args, argv) -> int``. Like ``cli.py`` they only parse and call library functions.
"""
