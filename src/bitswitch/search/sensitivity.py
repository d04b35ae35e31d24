"""Measured sensitivity: move one unit (or one block) from the base profile to a probe spec and
measure how much the metric suffers.

For ``granularity="unit"`` every unit ``L{i}.{role}`` (and ``head``) is probed on its own; for
``"layer"`` all four units of a block at once. Each record holds the metric, its change from the
base (``delta = value - base``) and ``damage`` (:func:`~bitswitch.search.metrics.damage`, larger =
worse, additive). Teacher-forced metrics (``answer_ppl``, ``ppl``) replay the unchanged blocks
from one recorded base pass (:mod:`~bitswitch.search.prefix`), which is exact and about twice as
fast; generated metrics (``f1``, ``em``) run the whole model every time.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable

from ..errors import BitswitchError
from ..profiles import parse_profile, parse_spec
from ..switching import set_profile, state
from . import metrics as M
from .prefix import PrefixRecorder, replay_from

GRANULARITIES = ("unit", "layer")
_LAYER = re.compile(r"^L(\d+)(?:\.(\w+))?$")


def layer_role(name: str) -> tuple[int | None, str | None]:
    """``'L3.mlp_in'`` -> (3, 'mlp_in'); ``'L3'`` -> (3, None); ``'head'`` -> (None, 'head')."""
    m = _LAYER.match(name)
    if m is None:
        return None, name
    return int(m[1]), m[2]


def probe_groups(model, granularity: str) -> "OrderedDict[str, str]":
    """What gets probed: ``{record name: profile selector}`` in model order.

    unit: ``{'L0.attn_in': 'L0.attn_in', ..., 'head': 'head'}``; layer: ``{'L0': 'L0.*', ...}``.
    """
    if granularity not in GRANULARITIES:
        raise BitswitchError(f"unknown granularity {granularity!r}: use unit or layer")
    units = list(state(model).units)
    if granularity == "unit":
        return OrderedDict((u, u) for u in units)
    layers = sorted({layer_role(u)[0] for u in units if layer_role(u)[0] is not None})
    return OrderedDict((f"L{i}", f"L{i}.*") for i in layers)


def check_probe(probe: str) -> int | None:
    """Validate a probe spec (``w3a8``, ``w4``, ``w4g32a8``); returns its weight bits (None = fp weights)."""
    if "=" in probe or ";" in probe:
        raise BitswitchError(f"--probe {probe!r} must be one spec (e.g. w4a8), not a profile with rules")
    return parse_spec(probe, probe)[0]


def probe_profile(base: str, selector: str, probe: str) -> str:
    """The base profile with one selector moved to the probe spec (a later rule wins)."""
    return f"{base};{selector}={probe}"


def measure_sensitivity(model, tokenizer, md: M.MetricData, base: str, probe: str, granularity: str = "unit",
                        done: dict[str, dict] | None = None, on_record: Callable[[dict, dict], None] | None = None,
                        prefix: bool = True, progress: bool = True) -> tuple[dict, list[dict]]:
    """Measure the base profile, then every probe group; returns ``(base_record, records)``.

    done: records already measured (by name) with the same settings; they are reused, not rerun.
    on_record(base_record, record) is called after each new record (e.g. to rewrite results.json).
    Records: ``{"name", "layer", "role", "profile", "probe", "probe_bits", <metrics>, "value",
    "delta", "damage", "seconds"}``.
    """
    from tqdm.auto import tqdm

    parse_profile(base)
    probe_bits = check_probe(probe)
    done = done or {}
    groups = probe_groups(model, granularity)
    metric = md.metric
    # single-forward metrics can replay unchanged blocks; decoding calls the model per token
    recorder = PrefixRecorder(model) if prefix and metric in ("answer_ppl", "ppl") else None
    set_profile(model, base)
    t0 = time.perf_counter()
    if recorder is not None:
        with recorder.record():
            base_metrics = M.measure(model, tokenizer, md)
    else:
        base_metrics = M.measure(model, tokenizer, md)
    base_value = base_metrics[metric]
    base_record = {"name": "base", "profile": base, **base_metrics, "value": base_value,
                   "seconds": round(time.perf_counter() - t0, 3)}
    records = []
    todo = [(n, s) for n, s in groups.items() if n not in done]
    bar = tqdm(total=len(groups), initial=len(groups) - len(todo), desc=f"sensitivity {granularity} {probe}",
               unit=granularity, dynamic_ncols=True, disable=not progress)
    for name, selector in groups.items():
        if name in done:
            records.append(done[name])
            continue
        layer, role = layer_role(name)
        profile = probe_profile(base, selector, probe)
        set_profile(model, profile)
        t0 = time.perf_counter()
        use_replay = recorder is not None and layer is not None
        with replay_from(model, recorder, layer) if use_replay else contextlib.nullcontext():
            values = M.measure(model, tokenizer, md)
        value = values[metric]
        record = {"name": name, "layer": layer, "role": role, "profile": profile, "probe": probe,
                  "probe_bits": probe_bits, **values, "value": value, "delta": value - base_value,
                  "damage": M.damage(metric, value, base_value), "seconds": round(time.perf_counter() - t0, 3)}
        records.append(record)
        if on_record is not None:
            on_record(base_record, record)
        bar.update(1)
        bar.set_postfix_str(f"{name} {metric}={value:.4g}")
    bar.close()
    set_profile(model, base)
    return base_record, records

