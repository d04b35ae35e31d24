"""``bitswitch report RUN_DIR ... --out report.md``: the markdown report of finished runs, with plots."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="assemble run directories into a markdown report with tables and plots")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="directories written by bitswitch run")
    p.add_argument("--out", required=True, help="report file (plots go to a folder beside it)")
    p.add_argument("--title", default="bitswitch experiments", help="the report's first heading")


def run(args, argv) -> int:
    from ..experiments.report import write_report

    path, sections = write_report(args.runs, args.out, title=args.title, argv=argv)
    print(f"report: {path} ({sections} sections)")
    return 0
