"""Sensitivity and mixed-precision search on SmolLM2-135M with switchable adapters (issue 5).

1. measured per-unit sensitivity: from the base (default w8a8) each of the 121 units alone at the
   probe (w3a8), on the calibration data: held-out dev questions (answer perplexity, questions
   --calib-offset ..+--calib-limit) or, with ``--calib-data wikitext``, WikiText-2 tokens
   (perplexity); ``--probes-above w8a8`` adds sweeps above a low base (e.g. ``--base w4a8``), so
   the search can trade units lowered to 3 bits against units raised to 8 around that base;
2. Fisher (and Taylor) proxies on the same data, Spearman rank correlation with (1);
3. budget search (exact knapsack over the measured table) at average weight bits 4, 5, 6;
4. verification on the evaluation questions (the first --limit dev questions, disjoint from the
   calibration ones): F1 / EM / answer perplexity of the searched profiles, the uniform ones and
   the base; Pareto front and plot (or ``--no-pareto --uniform-from`` an earlier run's uniform rows).

Every step is the library behind ``bitswitch sensitivity`` / ``bitswitch search`` (the equivalent
commands are printed). The runs behind docs/results.md:

    python benchmarks/bench_search.py --adapters ADAPTERS --calib-data wikitext --proxies fisher \
        --runs runs/bench_search_wt --out benchmarks/results/search_wikitext.json
    python benchmarks/bench_search.py --adapters ADAPTERS --calib-data wikitext --proxies fisher \
        --base w4a8 --probes-above w8a8 --avg-bits 4 --no-pareto \
        --uniform-from runs/bench_search_wt/search/results.json \
        --runs runs/bench_search_w4 --out benchmarks/results/search_wikitext_w4base.json
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from common import write

from bitswitch.io import atomic_write_json
from bitswitch.profiles import QuantOptions
from bitswitch.search.config import SearchConfig, SensitivityConfig
from bitswitch.search.search_runner import run_search
from bitswitch.search.sensitivity_runner import run_sensitivity

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "squad-v1.1"
RESULTS = ROOT / "benchmarks" / "results"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--adapters", default="runs/demo/train/adapters")
    ap.add_argument("--dev", default=str(SHARED / "dev-part1-v1.1.json"))
    ap.add_argument("--base", default="w8a8")
    ap.add_argument("--probe", default="w3a8")
    ap.add_argument("--probes-above", nargs="*", default=[],
                    help="with a low --base (e.g. w4a8): probes above it (e.g. w8a8), each a sweep of its own "
                         "whose gains the search trades against the --probe losses")
    ap.add_argument("--candidates", default="3,4,5,6,8")
    ap.add_argument("--avg-bits", type=float, nargs="+", default=[4.0, 5.0, 6.0])
    ap.add_argument("--calib-data", default="squad", choices=["squad", "wikitext"],
                    help="what sensitivities are computed on: held-out SQuAD questions (answer perplexity) or "
                         "WikiText-2 test tokens (perplexity; every token scored, so far less noise per forward)")
    ap.add_argument("--wikitext", default=str(ROOT.parent / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"))
    ap.add_argument("--calib-tokens", type=int, default=2048, help="wikitext calibration: first N tokens")
    ap.add_argument("--calib-window", type=int, default=512, help="wikitext calibration: window length")
    ap.add_argument("--no-pareto", action="store_true", help="search and verify only (no uniform profiles)")
    ap.add_argument("--calib-offset", type=int, default=200)
    ap.add_argument("--calib-limit", type=int, default=32)
    ap.add_argument("--limit", type=int, default=100, help="evaluation questions (the first N)")
    ap.add_argument("--proxies", nargs="*", default=["fisher", "taylor"])
    ap.add_argument("--proxy-batches", type=int, default=8)
    ap.add_argument("--proxy-batch-size", type=int, default=4)
    ap.add_argument("--fisher-search", action="store_true",
                    help="also search with the Fisher table (no measured sweep) and verify it")
    ap.add_argument("--uniform-from", default=None,
                    help="with --no-pareto: a search results.json whose uniform records (same evaluation "
                         "questions) the searched profiles are compared with")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs", default="runs/bench_search")
    ap.add_argument("--out", default=str(RESULTS / "search.json"))
    a = ap.parse_args(argv)
    runs = Path(a.runs)
    t_start = time.perf_counter()
    common = dict(model=a.model, adapters=a.adapters, data=a.dev, device=a.device, options=QuantOptions(),
                  batch_size=a.batch_size)
    cmd = (f"--model {a.model} --adapters {a.adapters} --data {a.dev} --device {a.device} "
           f"--batch-size {a.batch_size}")

    # 1. measured per-unit sensitivity on the calibration data (never the evaluation questions)
    if a.calib_data == "squad":
        calib = dict(metric="answer-ppl", data=a.dev, offset=a.calib_offset, limit=a.calib_limit)
        calib_cmd = f"--metric answer-ppl --offset {a.calib_offset} --limit {a.calib_limit}"
    else:
        calib = dict(metric="ppl", data=a.wikitext, max_tokens=a.calib_tokens, window=a.calib_window)
        calib_cmd = (f"--metric ppl --data {a.wikitext} --max-tokens {a.calib_tokens} "
                     f"--window {a.calib_window}")
    sens_common = {**common, **{k: v for k, v in calib.items() if k != "metric"}}
    sens_dir = runs / "sensitivity"
    print(f"$ bitswitch sensitivity {cmd} --base {a.base} --probe {a.probe} --granularity unit {calib_cmd} "
          f"--out {sens_dir}")
    t0 = time.perf_counter()
    sens = run_sensitivity(SensitivityConfig(out=str(sens_dir), base=a.base, probe=a.probe, granularity="unit",
                                             metric=calib["metric"], **sens_common))
    sweeps = [sens_dir / "results.json"]
    for probe in a.probes_above:
        up_dir = runs / f"sensitivity-{probe}"
        print(f"$ bitswitch sensitivity {cmd} --base {a.base} --probe {probe} --granularity unit {calib_cmd} "
              f"--out {up_dir}")
        run_sensitivity(SensitivityConfig(out=str(up_dir), base=a.base, probe=probe, granularity="unit",
                                          metric=calib["metric"], **sens_common))
        sweeps.append(up_dir / "results.json")
    t_sens = time.perf_counter() - t0

    # 2. proxies on the same data, rank-correlated with the sweep
    proxies = {}
    for proxy in a.proxies:
        pdir = runs / proxy
        print(f"$ bitswitch sensitivity {cmd} --base {a.base} --probe {a.probe} --proxy {proxy} "
              f"--proxy-bits {a.candidates} --proxy-batches {a.proxy_batches} {calib_cmd} "
              f"--batch-size {a.proxy_batch_size} --against {sens_dir}/results.json --out {pdir}")
        t0 = time.perf_counter()
        res = run_sensitivity(SensitivityConfig(out=str(pdir), base=a.base, probe=a.probe, proxy=proxy,
                                                proxy_bits=a.candidates, proxy_batches=a.proxy_batches,
                                                metric=calib["metric"], against=str(sens_dir / "results.json"),
                                                **{**sens_common, "batch_size": a.proxy_batch_size}))
        proxies[proxy] = {"rho": res["spearman"]["rho"], "n": res["spearman"]["n"],
                          "seconds": time.perf_counter() - t0}

    # 3 + 4. budget search from the measured table, verified on the evaluation questions, Pareto
    search_dir = runs / "search"
    budgets = " ".join(f"{b:g}" for b in a.avg_bits)
    print(f"$ bitswitch search {cmd} --task squad --metric squad-f1 --limit {a.limit} --candidates {a.candidates} "
          f"--avg-bits {budgets} --method budget --base {a.base} --sensitivity {' '.join(map(str, sweeps))}"
          f"{'' if a.no_pareto else ' --pareto'} --out {search_dir}")
    t0 = time.perf_counter()
    search = run_search(SearchConfig(out=str(search_dir), task="squad", metric="f1", limit=a.limit,
                                     candidates=a.candidates, avg_bits=a.avg_bits, method="budget", base=a.base,
                                     sensitivity=[str(f) for f in sweeps], pareto=not a.no_pareto,
                                     **common))
    t_search = time.perf_counter() - t0
    records = list(search["records"])
    fisher_search = None
    if a.fisher_search:
        fdir = runs / "search-fisher"
        print(f"$ bitswitch search {cmd} --task squad --metric squad-f1 --limit {a.limit} --candidates "
              f"{a.candidates} --avg-bits {budgets} --sensitivity fisher --calib-offset {a.calib_offset} "
              f"--calib-limit {a.calib_limit} --proxy-batches {a.proxy_batches} --out {fdir}")
        fisher_search = run_search(SearchConfig(out=str(fdir), task="squad", metric="f1", limit=a.limit,
                                                candidates=a.candidates, avg_bits=a.avg_bits, base=a.base,
                                                sensitivity="fisher", calib_offset=a.calib_offset,
                                                calib_limit=a.calib_limit, proxy_batches=a.proxy_batches,
                                                **common))
        for r in fisher_search["records"]:
            if r["kind"] == "searched":
                records.append({**r, "label": r["label"].replace("search", "fisher-search")})

    # the comparison the goal asks for: searched against uniform at the same average bits
    by_label = {r["label"]: r for r in records}
    if a.uniform_from:
        import json

        old = json.loads(Path(a.uniform_from).read_text())
        assert old["limit"] == a.limit and old["offset"] == 0, "uniform records must be on the same questions"
        for r in old["records"]:
            if r["kind"] == "uniform":
                by_label.setdefault(r["label"], r)
                records.append(r)
    comparison = []
    for b in a.avg_bits:
        s, u = by_label.get(f"search-avg{b:g}"), by_label.get(f"uniform-w{int(b)}")
        if u is None and a.base == f"w{b:g}a8":   # a uniform base is that budget's uniform profile
            u = by_label.get("base")
        if s and u:
            comparison.append({"avg_bits": b, "searched_f1": s["f1"], "uniform_f1": u["f1"],
                               "f1_gain": s["f1"] - u["f1"], "searched_answer_ppl": s["answer_ppl"],
                               "uniform_answer_ppl": u["answer_ppl"],
                               "answer_ppl_gain_pct": 100 * (1 - s["answer_ppl"] / u["answer_ppl"]),
                               "goal_met": s["f1"] - u["f1"] >= 2 or s["answer_ppl"] <= 0.95 * u["answer_ppl"]})

    # artifacts into benchmarks/results
    tag = Path(a.out).stem if a.out else a.calib_data
    fig_dir = RESULTS / "search" / tag
    fig_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(sens_dir / "sensitivity.png", fig_dir / "sensitivity_measured.png")
    for proxy in a.proxies:
        shutil.copy(runs / proxy / "sensitivity.png", fig_dir / f"sensitivity_{proxy}.png")
    if not a.no_pareto:
        shutil.copy(search_dir / "pareto.png", fig_dir / "pareto.png")
    for f in (search_dir / "profiles").glob("*.json"):
        shutil.copy(f, fig_dir / f.name)
    atomic_write_json(RESULTS / f"sensitivity_unit_{tag}.json", {k: v for k, v in sens.items()
                                                                          if k != "table"})

    columns = ["label", "kind", "avg_w_bits", "weight_bytes", "vs_fp16", "vs_fp32", "f1", "em", "answer_ppl",
               "predicted_damage", "on_front"]
    print()
    write(None, records, columns)
    print()
    write(None, comparison, ["avg_bits", "searched_f1", "uniform_f1", "f1_gain", "searched_answer_ppl",
                             "uniform_answer_ppl", "answer_ppl_gain_pct", "goal_met"])
    print()
    rows = [{"proxy": k, **v} for k, v in proxies.items()]
    write(a.out, records, columns, seed=0, comparison=comparison, proxies=proxies,
          calibration={**{k: v for k, v in calib.items() if k != "data"}, "data": a.calib_data, "probe": a.probe,
                       "probes_above": a.probes_above},
          evaluation={"offset": 0, "limit": a.limit}, candidates=a.candidates, base=a.base,
          seconds={"sensitivity": t_sens, "search": t_search, "total": time.perf_counter() - t_start},
          pareto=search["pareto"], baseline_uniform=a.uniform_from, sensitivity_seconds_per_unit=t_sens / max(len(sens["records"]), 1),
          device="cpu (2 cores, shared)" if a.device == "cpu" else a.device)
    print()
    write(None, rows, ["proxy", "rho", "n", "seconds"])


if __name__ == "__main__":
    main()
