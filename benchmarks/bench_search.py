"""Sensitivity and mixed-precision search on SmolLM2-135M with switchable adapters.

The recipe behind docs/results.md, each step the library behind one command (printed as it runs):

1. rank correlation: a proxy (default ``fisher-grad``) on WikiText-2 test tokens, against a
   measured sweep (each unit alone at ``w3a8`` from ``w8a8``) on the same tokens and, with
   ``--held-out-sweep``, on other tokens (two measured sweeps against each other: the ceiling any
   proxy can reach against one sweep);
2. a damage table from a proxy (default ``fisher``) on held-out dev questions (``--table-offset``
   ``--table-limit``; answer NLL) at the search's base (``w4a8``) and every candidate bit-width;
3. ``bitswitch search --method budget`` (exact knapsack) at average weight bits 4, 5 and 6, each
   ``--below-penalty`` factor's solution (of the table and of every ``--alt-table``) measured on
   other held-out questions (``--calib-offset`` ``--calib-limit``) and the best kept, then verified on the evaluation questions (``--offset``
   ``--limit``) with ``--pareto`` (uniform w3..w8 measured beside them).

    python benchmarks/bench_search.py --adapters runs/cache/train-0ce8c3c621de/adapters \
        --sweep benchmarks/results/search/v2/sweep_w8_w3_t2048/results.json --held-out-sweep measure \
        --table benchmarks/results/search/v2/fisher128_w4_v2/results.json \
        --runs runs/bench_search --out benchmarks/results/search_squad_v3.json

``--sweep`` / ``--held-out-sweep`` / ``--table`` reuse earlier results (with the same adapters);
without them the sweep (10 min) and table (7 min) are computed into ``--runs``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import rel, write

from bitswitch.profiles import QuantOptions
from bitswitch.search.config import SearchConfig, SensitivityConfig
from bitswitch.search.search_runner import run_search
from bitswitch.search.sensitivity_runner import run_sensitivity

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def _sensitivity(label: str, cfg: SensitivityConfig, cmd: str) -> dict:
    print(f"$ bitswitch sensitivity {cmd} --out {cfg.out}   # {label}", flush=True)
    return run_sensitivity(cfg)


def rank_correlations(proxy: str, proxies: dict[int, str], sweeps: dict[int, str]) -> dict[str, float]:
    """Spearman rho of every proxy against every measured sweep, of the sweeps against each other
    (how well one measurement predicts another: the ceiling for any proxy) and of each proxy
    against the mean of the sweeps. Keys name the token offsets."""
    from bitswitch.search.proxies import spearman
    from bitswitch.search.table import known_from_records, load_sensitivity

    def damages(f):
        return {n: row[3] for n, row in known_from_records(load_sensitivity(f)["records"]).items()}

    p = {o: damages(f) for o, f in proxies.items()}
    m = {o: damages(f) for o, f in sweeps.items()}
    names = sorted(set.intersection(*(set(d) for d in (*p.values(), *m.values()))))

    def rho(x, y):
        return round(spearman([x[n] for n in names], [y[n] for n in names]), 4)

    out = {f"{proxy} @{po} vs sweep @{so}": rho(pd, sd) for po, pd in p.items() for so, sd in m.items()}
    if len(m) > 1:
        (o1, d1), (o2, d2) = list(m.items())[:2]
        out[f"sweep @{o1} vs sweep @{o2}"] = rho(d1, d2)
        mean = {n: sum(d[n] for d in m.values()) / len(m) for n in names}
        out.update({f"{proxy} @{po} vs mean of sweeps": rho(pd, mean) for po, pd in p.items()})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--adapters", required=True, help="switchable adapters (bitswitch train)")
    ap.add_argument("--dev", default=rel(DATA / "squad-v1.1" / "dev-part1-v1.1.json"))
    ap.add_argument("--wikitext", default=rel(DATA / "wikitext-2-raw" / "wiki.test.raw"))
    ap.add_argument("--rho-proxy", default="fisher-grad", help="proxy rank-correlated with the measured sweep")
    ap.add_argument("--sweep", default=None, help="measured sweep results.json on tokens 0..--tokens (else measured)")
    ap.add_argument("--held-out-sweep", default=None,
                    help="a second measured sweep on tokens --tokens*2.. (the noise ceiling); 'measure' to run it")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--table-proxy", default="fisher", help="proxy of the search's damage table")
    ap.add_argument("--table", default=None, help="damage-table results.json (else computed)")
    ap.add_argument("--alt-table", nargs="+", default=[], metavar="SRC",
                    help="further damage tables (proxy names or results.json files) whose solutions compete with "
                         "--table's on the calibration questions (bitswitch search --alt-sensitivity)")
    ap.add_argument("--table-offset", type=int, default=200)
    ap.add_argument("--table-limit", type=int, default=128)
    ap.add_argument("--base", default="w4a8")
    ap.add_argument("--candidates", default="3,4,5,6,8")
    ap.add_argument("--avg-bits", type=float, nargs="+", default=[4.0, 5.0, 6.0])
    ap.add_argument("--below-penalty", type=float, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--calib-offset", type=int, default=328)
    ap.add_argument("--calib-limit", type=int, default=64)
    ap.add_argument("--offset", type=int, default=0, help="first evaluation question")
    ap.add_argument("--limit", type=int, default=200, help="evaluation questions")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs", default="runs/bench_search")
    ap.add_argument("--out", default=rel(ROOT / "benchmarks" / "results" / "search_squad_v3.json"))
    a = ap.parse_args(argv)
    runs, t_start = Path(a.runs), time.perf_counter()
    model = dict(model=a.model, adapters=a.adapters, device=a.device, options=QuantOptions())
    cmd = f"--model {a.model} --adapters {a.adapters} --device {a.device}"
    wt = dict(data=a.wikitext, metric="ppl", max_tokens=a.tokens, window=512, batch_size=4)
    wt_cmd = f"--data {a.wikitext} --metric ppl --max-tokens {a.tokens} --window 512 --batch-size 4"

    # 1. rank correlation of the proxy with measured sweeps on WikiText tokens
    def sweep(path, offset, name):
        if path:
            return path
        out = runs / name
        _sensitivity("measured sweep", SensitivityConfig(out=str(out), base="w8a8", probe="w3a8", offset=offset,
                                                         **wt, **model),
                     f"{cmd} {wt_cmd} --offset {offset} --base w8a8 --probe w3a8")
        return str(out / "results.json")

    same = sweep(a.sweep, 0, "sweep")
    held = sweep(None if a.held_out_sweep == "measure" else a.held_out_sweep, 2 * a.tokens, "sweep-held") \
        if a.held_out_sweep else None
    proxies = {}
    for label, offset in (("same tokens", 0), ("held-out tokens", 2 * a.tokens)):
        out = runs / f"{a.rho_proxy}-{offset}"
        _sensitivity(f"{a.rho_proxy} on {label}", SensitivityConfig(
            out=str(out), base="w8a8", probe="w3a8", proxy=a.rho_proxy, proxy_bits=(3,), proxy_batches=4,
            against=same, offset=offset, **wt, **model),
            f"{cmd} {wt_cmd} --offset {offset} --base w8a8 --probe w3a8 --proxy {a.rho_proxy} --proxy-bits 3 "
            f"--proxy-batches 4 --against {same}")
        proxies[offset] = str(out / "results.json")
    rho = rank_correlations(a.rho_proxy, proxies, {0: same, **({2 * a.tokens: held} if held else {})})

    # 2. the damage table on held-out dev questions
    table = a.table
    if table is None:
        out = runs / f"{a.table_proxy}-table"
        _sensitivity("damage table", SensitivityConfig(
            out=str(out), data=a.dev, metric="answer-ppl", offset=a.table_offset, limit=a.table_limit, base=a.base,
            probe="w3a8", proxy=a.table_proxy, proxy_bits=a.candidates, proxy_batches=16, batch_size=8, **model),
            f"{cmd} --data {a.dev} --metric answer-ppl --offset {a.table_offset} --limit {a.table_limit} --base "
            f"{a.base} --probe w3a8 --proxy {a.table_proxy} --proxy-bits {a.candidates} --proxy-batches 16")
        table = str(out / "results.json")

    # 3. search, penalty chosen on the calibration questions, verified on the evaluation ones
    search_dir = runs / "search"
    print(f"$ bitswitch search {cmd} --task squad --data {a.dev} --offset {a.offset} --limit {a.limit} --metric "
          f"squad-f1 --method budget --base {a.base} --candidates {a.candidates} --avg-bits "
          f"{' '.join(f'{b:g}' for b in a.avg_bits)} --sensitivity {table} "
          f"{'--alt-sensitivity ' + ' '.join(a.alt_table) + ' ' if a.alt_table else ''}--below-penalty "
          f"{' '.join(f'{f:g}' for f in a.below_penalty)} --calib-offset {a.calib_offset} --calib-limit "
          f"{a.calib_limit} --batch-size {a.batch_size} --pareto --out {search_dir}", flush=True)
    search = run_search(SearchConfig(
        out=str(search_dir), task="squad", data=a.dev, metric="f1", offset=a.offset, limit=a.limit,
        candidates=a.candidates, avg_bits=a.avg_bits, method="budget", base=a.base, sensitivity=table,
        alt_sensitivity=a.alt_table, below_penalty=a.below_penalty, calib_offset=a.calib_offset, calib_limit=a.calib_limit, pareto=True,
        batch_size=a.batch_size, **model))
    by_label = {r["label"]: r for r in search["records"]}
    comparison = []
    for b in a.avg_bits:
        s = by_label[f"search-avg{b:g}"]
        u = by_label.get(f"uniform-w{b:g}") or (by_label["base"] if a.base == f"w{b:g}a8" else None)
        if u is None:
            continue
        comparison.append({"avg_bits": b, "table": s.get("table", table), "below_penalty": s["below_penalty"], "searched_f1": s["f1"],
                           "uniform_f1": u["f1"], "f1_gain": s["f1"] - u["f1"],
                           "searched_answer_ppl": s["answer_ppl"], "uniform_answer_ppl": u["answer_ppl"],
                           "answer_ppl_gain_pct": 100 * (1 - s["answer_ppl"] / u["answer_ppl"]),
                           "goal_met": s["f1"] - u["f1"] >= 2 or s["answer_ppl"] <= 0.95 * u["answer_ppl"]})
    columns = ["label", "kind", "avg_w_bits", "weight_bytes", "vs_fp16", "f1", "em", "answer_ppl", "on_front"]
    print()
    write(None, search["records"], columns)
    print()
    write(None, [{"comparison": k, "rho": v} for k, v in rho.items()], ["comparison", "rho"])
    print()
    write(a.out, comparison, ["avg_bits", "table", "below_penalty", "searched_f1", "uniform_f1", "f1_gain",
                              "searched_answer_ppl", "uniform_answer_ppl", "answer_ppl_gain_pct", "goal_met"],
          seed=0, rho=rho, records=search["records"], pareto=search["pareto"], table=table, alt_tables=a.alt_table, sweeps=[same, held],
          evaluation={"offset": a.offset, "limit": a.limit},
          calibration={"offset": a.calib_offset, "limit": a.calib_limit},
          seconds=time.perf_counter() - t_start, device="cpu (2 cores, shared)" if a.device == "cpu" else a.device)


if __name__ == "__main__":
    main()
