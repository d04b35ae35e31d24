"""Accounting of dynamic widths: how many tokens each unit ran at each width, and what that cost.

``Usage.record(unit, idx)`` is called by whatever decides widths (routers, request controllers);
``summary()`` turns the counts into realized average weight bits and weight bytes read per token,
overall and per unit; ``new_sequence()`` marks where a sequence starts, so ``summary()`` also gives
the spread of the per-sequence figures (``per_sequence()`` lists them).
"""

from __future__ import annotations

import torch

from .widths import WidthSet


class Usage:
    """``counts``: per block unit, tokens run at each width (W,) int64."""

    def __init__(self, widths: WidthSet):
        self.widths = widths
        self.counts = {u: torch.zeros(len(widths.widths), dtype=torch.int64) for u in widths.units}
        self._marks: list[dict[str, torch.Tensor]] = []   # counts when each sequence started

    def new_sequence(self) -> None:
        self._marks.append({u: c.clone() for u, c in self.counts.items()})

    def per_sequence(self) -> list[dict]:
        """``[{"tokens", "avg_w_bits", "bytes_per_token"}]``, one per sequence marked."""
        ends = self._marks[1:] + [self.counts]
        out = []
        for start, end in zip(self._marks, ends):
            part = Usage(self.widths)
            part.counts = {u: end[u] - start[u] for u in self.counts}
            if part.tokens:
                out.append({"tokens": part.tokens, "avg_w_bits": round(part.realized("bits"), 4),
                            "bytes_per_token": round(part.realized("bytes"), 1)})
        return out

    def record(self, unit: str, idx: torch.Tensor) -> None:
        """``idx`` (N,): the width index each of N tokens ran ``unit`` at."""
        if idx.numel() == 1:   # one decoding step: one count (a bincount costs several ops per unit and token)
            self.counts[unit][int(idx)] += 1
            return
        self.counts[unit] += torch.bincount(idx.reshape(-1).cpu(), minlength=len(self.widths.widths))

    def record_all(self, index: int, tokens: int) -> None:
        """Every unit ran ``tokens`` tokens at width ``index`` (one profile for a whole forward)."""
        for c in self.counts.values():
            c[index] += tokens

    def merge(self, other: Usage) -> None:
        for u, c in other.counts.items():
            self.counts[u] += c

    @property
    def tokens(self) -> int:
        """Tokens seen (by the first unit: every unit sees every token)."""
        return int(next(iter(self.counts.values())).sum()) if self.counts else 0

    def realized(self, by: str = "bits") -> float:
        """Average cost per token (weight bits, or bytes read) over the tokens recorded."""
        n = self.tokens
        if n == 0:
            return float("nan")
        costs = self.widths.costs(by)
        return float(sum((c.double() * costs[u]).sum() for u, c in self.counts.items()) / n)

    def summary(self) -> dict:
        """``{"tokens", "avg_w_bits", "bytes_per_token", "width_share", "units": {unit: {"avg_w_bits",
        "bytes_per_token"}}}``; ``width_share``: the fraction of (unit, token) pairs at each width."""
        bits = torch.tensor(self.widths.bits, dtype=torch.float64)
        units = {}
        for u, c in self.counts.items():
            n = max(int(c.sum()), 1)
            units[u] = {"avg_w_bits": round(float((c.double() * bits).sum() / n), 4),
                        "bytes_per_token": round(float((c.double() * torch.tensor(self.widths.nbytes[u],
                                                                                   dtype=torch.float64)).sum() / n), 1)}
        total = sum(self.counts.values()) if self.counts else torch.zeros(len(self.widths.widths))
        share = {w: round(float(total[i]) / max(float(total.sum()), 1), 4) for i, w in enumerate(self.widths.widths)}
        seqs = self.per_sequence()
        spread = {k: {"min": min(r[k] for r in seqs), "max": max(r[k] for r in seqs)}
                  for k in ("avg_w_bits", "bytes_per_token")} if seqs else {}
        return {"tokens": self.tokens, "avg_w_bits": round(self.realized("bits"), 4),
                "bytes_per_token": round(self.realized("bytes"), 1), "width_share": share,
                "sequences": {"n": len(seqs), **spread}, "units": units}
