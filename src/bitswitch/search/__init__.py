"""Sensitivity analysis and mixed-precision search.

    metrics      measure(model, tok, data) of one metric at the current profile; damage / drop
    prefix       replay unchanged blocks from a recorded base pass (teacher-forced sweeps)
    sensitivity  measured per-unit / per-layer sensitivity (one probe at a time)
    proxies      Fisher / Taylor / Hutchinson proxies from one gradient pass
    space        searched units, candidate specs, exact bytes and bits per choice
    table        the per-unit damage table (measured or proxy, scaled by noise energy)
    budget       exact multiple-choice knapsack (pure)
    greedy       greedy lowering, measured against a drop or until a budget fits
    pareto       the Pareto front of measured profiles (pure)
    sensitivity_runner / search_runner   the ``bitswitch sensitivity`` / ``search`` jobs
"""

from ..results import spearman  # rank agreement of two damage tables (lives beside se_of_mean)
from .budget import InfeasibleBudget, Solution, exhaustive, solve_budget
from .greedy import greedy_search
from .metrics import MetricData, damage, drop, measure, prepare
from .pareto import pareto_front
from .proxies import proxy_scores
from .sensitivity import measure_sensitivity
from .space import SearchSpace, build_space, noise_energy, parse_candidates
from .table import damage_table, known_from_records

__all__ = ["InfeasibleBudget", "MetricData", "SearchSpace", "Solution", "build_space", "damage", "damage_table",
           "drop", "exhaustive", "greedy_search", "known_from_records", "measure", "measure_sensitivity",
           "noise_energy", "pareto_front", "parse_candidates", "prepare", "proxy_scores", "solve_budget", "spearman"]
