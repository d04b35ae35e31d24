"""``bitswitch report RUN_DIR ... --out report.md``: the markdown report of finished runs, with plots."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="assemble run directories into a markdown report with tables and plots")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="directories written by bitswitch run")
    p.add_argument("--out", required=True, help="report file (plots go to a folder beside it)")
    p.add_argument("--title", default="bitswitch experiments", help="the report's first heading")
    p.add_argument("--archive", metavar="DIR", help="also copy the runs' results, without weights, into DIR "
                   "(DIR/<run>/run.json, DIR/cache/...), from where bitswitch report DIR/<run> renders them again")


def run(args, argv) -> int:
    from ..experiments.report import write_report

    if args.archive:
        from ..experiments.archive import archive_runs

        for d in archive_runs(args.runs, args.archive):
            print(f"archived: {d}")
    path, sections = write_report(args.runs, args.out, title=args.title, argv=argv)
    print(f"report: {path} ({sections} sections)")
    return 0
