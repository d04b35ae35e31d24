"""The report's section registry: what a renderer gets (:class:`StepResult`, :class:`Context`),
what it returns (:class:`Section`) and :func:`register`. Renderers live in :mod:`.sections` and
:mod:`.sections_analysis`, which both import this module and not each other's registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StepResult:
    """One finished step: its run.json entry, its kind and its loaded results."""
    run: dict
    step: dict
    kind: str
    data: dict
    dir: Path

    @property
    def label(self) -> str:
        return str(self.step.get("label") or self.step["id"])


@dataclass
class Section:
    title: str
    body: str
    answers: list[str] = field(default_factory=list)


@dataclass
class Context:
    """Where a section puts its figures and how the report links them."""
    plot_dir: Path
    rel: str                 # the plot folder relative to the report file
    prefix: str              # file-name prefix unique to the run
    ruled: set = field(default_factory=set)   # kinds the experiment's answer rules already cover

    def figure(self, name: str) -> Path:
        return self.plot_dir / f"{self.prefix}-{name}.png"

    def image(self, path: str, alt: str) -> str:
        return f"![{alt}]({self.rel}/{Path(path).name})"


@dataclass
class Renderer:
    kind: str
    title: str
    order: int
    render: object
    rows: object = None


RENDERERS: dict[str, Renderer] = {}


def register(kind: str, title: str | None = None, order: int = 50, rows=None):
    """Decorator: ``render(items, ctx) -> Section`` for ``kind``; ``rows(items) -> [row]`` for answers."""
    def deco(fn):
        RENDERERS[kind] = Renderer(kind, title or kind, order, fn, rows)
        return fn
    return deco
