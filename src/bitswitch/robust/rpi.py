"""Random precision inference (RPI): at inference the precision is drawn at random from a set of profiles.

RPI is a *mode* of a switchable model, not a forward argument: :func:`rpi` installs a forward
pre-hook on the top model that, before a forward pass, may re-draw the precision and switches to it
through :mod:`bitswitch.switching` (``set_profile`` for whole-model draws, ``set_unit_profiles`` for
per-unit draws), so ``model.bitswitch`` always names what the units run at.
Everything that calls the model (greedy decoding, answer likelihood, attacks) therefore runs under
RPI without knowing about it.

Granularity (when a draw may happen):

- ``batch``: at the first forward of a batch, i.e. a forward without a KV cache (a prefill, or any
  ``use_cache=False`` scoring pass); the decoding steps of that batch keep its precision.
- ``forward``: at every forward pass, so every generated token may run at another profile.
- ``unit``: at every forward pass each unit (``L{i}.{role}``) draws on its own: precision and adapter
  of every unit may differ.
- ``token``: each unit draws for each token on its own (inside one forward too, prefill included,
  through :func:`bitswitch.dynamic.routing.routed`): with probability ``p`` uniformly from the set,
  else the first profile (independent draws, not a chain: p = 0 is the first profile bitwise, p = 1
  uniform). Attackers' draws (:class:`DrawSampler`) approximate it by per-unit draws.

Switching probability ``p``: at a draw point the current choice is re-drawn (uniformly from the set,
possibly the same profile) with probability ``p`` and kept otherwise. The start is the first profile
of the set, so ``p = 0`` is bitwise the fixed first profile. For any ``p > 0`` the profile at a
random forward is uniform over the set (the stationary law of this chain); attackers sample that law
(:class:`DrawSampler`) to average over the randomness (EOT).

Draws come from a ``torch.Generator`` seeded with ``seed``: the same seed and the same sequence of
forwards give the same precisions; :meth:`RPI.reseed` restarts the sequence.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import BitswitchError
from ..switching import resolve_profile, restore, set_profile, set_unit_profiles, snapshot, state, use_profile

GRANULARITIES = ("batch", "forward", "unit", "token")


@dataclass(frozen=True)
class RPIConfig:
    """What an RPI mode draws from: ``profiles`` (first = start), ``p``, ``granularity``, ``seed``."""

    profiles: tuple[str, ...]
    p: float = 0.5
    granularity: str = "forward"
    seed: int = 0
    name: str = field(default="rpi", compare=False)

    def __post_init__(self):
        object.__setattr__(self, "profiles", tuple(self.profiles))
        if not self.profiles:
            raise BitswitchError("RPI needs at least one profile: pass --rpi P1 P2 ..., e.g. --rpi w8a8 w6a8 w4a8")
        if len(set(self.profiles)) != len(self.profiles):
            raise BitswitchError(f"RPI profiles list a profile twice: {list(self.profiles)}: list each once")
        if not 0.0 <= self.p <= 1.0:
            raise BitswitchError(f"RPI switching probability {self.p} is outside [0, 1]: pass --rpi-p in 0..1")
        if self.granularity not in GRANULARITIES:
            raise BitswitchError(f"unknown RPI granularity {self.granularity!r}: use one of {', '.join(GRANULARITIES)}")

    def describe(self) -> str:
        return f"rpi({','.join(self.profiles)};p={self.p:g};{self.granularity})"


class _UnitTable:
    """The units and the resolved profiles of the set, so a per-unit draw (profile index per unit)
    becomes one :func:`~bitswitch.switching.set_unit_profiles` call."""

    def __init__(self, model: nn.Module, profiles: tuple[str, ...]):
        self.model = model
        self.units = list(state(model).units)
        self.profiles = [resolve_profile(model, name)[0] for name in profiles]

    def apply(self, choice: list[int]) -> None:
        """Switch unit ``units[i]`` to profile index ``choice[i]``."""
        set_unit_profiles(self.model, {u: self.profiles[k] for u, k in zip(self.units, choice)},
                          state(self.model).adapters_on)


class RPI:
    """The handle of an installed RPI mode; ``remove()`` (or leaving the ``with`` block) restores the
    profile the model had before. ``history`` lists the profile index drawn at each forward
    (per-unit: a tuple of indices), for inspection and tests."""

    def __init__(self, model: nn.Module, config: RPIConfig):
        self.model, self.config = model, config
        st = state(model)
        self._previous = snapshot(model)
        for name in config.profiles:  # validate every profile now, not at the first forward
            resolve_profile(model, name)
        set_profile(model, config.profiles[0], st.adapters_on)
        self._units = _UnitTable(model, config.profiles) if config.granularity == "unit" else None
        self.history: list = []
        self.reseed(config.seed)
        self._routing = None
        self._hook = model.register_forward_pre_hook(self._pre_forward, with_kwargs=True)
        self._start_routing()

    def _start_routing(self) -> None:
        """``token`` granularity: draws per unit and token inside each forward (the first profile is
        the routed base width, so rows that keep it are the static forward's)."""
        if self.config.granularity != "token":
            return
        from ..dynamic.routing import routed

        self._routing = routed(self.model, self.config.profiles, self._token_router)
        self._routing.__enter__()

    def _stop_routing(self) -> None:
        if self._routing is not None:
            self._routing.__exit__(None, None, None)
            self._routing = None

    def _token_router(self, unit: str, x: torch.Tensor) -> torch.Tensor:
        """(N, in) -> (N,) profile indices: a uniform draw with probability p, else the first."""
        k, n = len(self.config.profiles), x.shape[0]
        redraw = torch.rand(n, generator=self.generator) < self.config.p
        return torch.where(redraw, torch.randint(k, (n,), generator=self.generator), 0).to(x.device)

    def reseed(self, seed: int | None = None) -> None:
        """Restart the draw sequence from ``seed`` (default: the config's) at the first profile."""
        self.generator = torch.Generator().manual_seed(self.config.seed if seed is None else seed)
        n_units = len(self._units.units) if self._units is not None else 0
        self._current = 0
        self._unit_current = [0] * n_units
        set_profile(self.model, self.config.profiles[0], state(self.model).adapters_on)
        self.history = []

    @property
    def current(self) -> str:
        """The profile of the last whole-model draw (per-unit mode: the start profile)."""
        return self.config.profiles[self._current]

    def _pre_forward(self, module, args, kwargs):
        cfg = self.config
        if cfg.granularity == "token" or (cfg.granularity == "batch" and _has_cache(kwargs)):
            return None  # token: the routing draws; batch: a decoding step keeps the batch's precision
        k = len(cfg.profiles)
        if cfg.granularity == "unit":
            n = len(self._unit_current)
            redraw = torch.rand(n, generator=self.generator) < cfg.p          # (n_units,)
            picks = torch.randint(k, (n,), generator=self.generator)          # (n_units,)
            new = [int(picks[i]) if redraw[i] else c for i, c in enumerate(self._unit_current)]
            if new != self._unit_current:
                self._units.apply(new)
                self._unit_current = new
            self.history.append(tuple(new))
            return None
        redraw = float(torch.rand((), generator=self.generator)) < cfg.p
        pick = int(torch.randint(k, (), generator=self.generator))
        if redraw and pick != self._current:
            set_profile(self.model, cfg.profiles[pick], state(self.model).adapters_on)
            self._current = pick
        self.history.append(self._current)
        return None

    def remove(self) -> None:
        """Uninstall the hook and restore the profile the model had before :func:`rpi`."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
            self._stop_routing()
            restore(self.model, self._previous)

    @contextlib.contextmanager
    def paused(self):
        """Run without draws (e.g. while an attacker applies its own draws); the state is restored after."""
        hook, self._hook = self._hook, None
        if hook is not None:
            hook.remove()
            self._stop_routing()
        try:
            yield self
        finally:
            if hook is not None:
                self._hook = self.model.register_forward_pre_hook(self._pre_forward, with_kwargs=True)
                if self.config.granularity == "token":
                    self._start_routing()
                elif self._units is not None:
                    self._units.apply(self._unit_current)
                else:
                    set_profile(self.model, self.current, state(self.model).adapters_on)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def _has_cache(kwargs: dict) -> bool:
    # transformers 5 calls the KV-cache argument ``cache``, 4.x ``past_key_values``
    for name in ("past_key_values", "cache"):
        c = kwargs.get(name)
        if c is not None and (not hasattr(c, "get_seq_length") or c.get_seq_length() > 0):
            return True
    return False


def rpi(model: nn.Module, profiles, p: float = 0.5, granularity: str = "forward", seed: int = 0) -> RPI:
    """Put ``model`` in random precision inference over ``profiles``; returns the handle.

    ``with bitswitch.rpi(model, ["w8a8", "w4a8"], p=0.5, granularity="forward", seed=0):`` ... or
    ``h = bitswitch.rpi(...); ...; h.remove()``. Only one RPI mode at a time on a model.
    """
    if getattr(model, "_bitswitch_rpi", None) is not None and model._bitswitch_rpi._hook is not None:
        raise BitswitchError("this model is already in RPI mode: remove() the first handle before installing another")
    cfg = profiles if isinstance(profiles, RPIConfig) else RPIConfig(tuple(profiles), p, granularity, seed)
    handle = RPI(model, cfg)
    model._bitswitch_rpi = handle
    return handle


# -- what attackers sample: the stationary law of the draws --------------------------------------

Draw = tuple  # ("profile", name) or ("unit", (profile index per unit, ...))


class DrawSampler:
    """Seeded draws of the precision an RPI model runs a forward at, for expectation over
    transformation (EOT): the attacker averages its loss / gradient over ``eot`` such draws.

    A fixed profile (a string) always draws itself. For RPI with ``p > 0`` a draw is uniform over
    the set (per unit for ``unit`` granularity); with ``p = 0`` it is the first profile.
    """

    def __init__(self, model: nn.Module, setting, eot: int = 1, seed: int = 0):
        self.model, self.setting = model, setting
        self.eot = 1 if isinstance(setting, str) else max(1, eot)
        self.generator = torch.Generator().manual_seed(seed)
        self._units = (_UnitTable(model, setting.profiles)
                       if isinstance(setting, RPIConfig) and setting.granularity in ("unit", "token") else None)

    def sample(self) -> list[Draw]:
        """``eot`` draws (one for a fixed profile)."""
        s = self.setting
        if isinstance(s, str):
            return [("profile", s)]
        k = len(s.profiles)
        if s.p == 0:
            return [("profile", s.profiles[0])]
        if self._units is None:
            return [("profile", s.profiles[int(i)]) for i in torch.randint(k, (self.eot,), generator=self.generator)]
        n = len(self._units.units)
        return [("unit", tuple(torch.randint(k, (n,), generator=self.generator).tolist())) for _ in range(self.eot)]

    def apply(self, draw: Draw) -> None:
        """Put the model in the precision state of ``draw``."""
        if draw[0] == "profile":
            set_profile(self.model, draw[1], state(self.model).adapters_on)
        else:
            self._units.apply(list(draw[1]))


@contextlib.contextmanager
def use_setting(model: nn.Module, setting, seed: int | None = None):
    """Run at a *setting*: a fixed profile (``use_profile``) or an :class:`RPIConfig` (a seeded RPI mode)."""
    if isinstance(setting, str):
        with use_profile(model, setting, state(model).adapters_on):
            yield None
    else:
        cfg = setting if seed is None else RPIConfig(setting.profiles, setting.p, setting.granularity, seed,
                                                     setting.name)
        handle = rpi(model, cfg)
        try:
            yield handle
        finally:
            handle.remove()


def setting_name(setting) -> str:
    return setting if isinstance(setting, str) else setting.name
