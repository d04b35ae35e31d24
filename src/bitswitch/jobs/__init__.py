"""The job layer under every command: one run configuration, one results directory helper.

A command is a config (a :class:`RunConfig` subclass) plus one function that opens a :class:`Job`,
loads the model once, measures, and adds records; the job owns ``OUT/results.json`` (atomic writes,
settings hash, resume, merging) and ``OUT/results.md``.
"""

from .config import ORDERS, RunConfig
from .job import Job, check_output_dir, settings_differences

__all__ = ["ORDERS", "Job", "RunConfig", "check_output_dir", "settings_differences"]
