"""GateController: a small learned gate per block unit picks each token's width from the unit's input.

    gate = GateController.from_model(model, widths)
    train_gate(model, gate, batches, penalty=0.05, steps=64)   # the switchable model stays frozen
    gate.fit(model, batches, budget=4.5)                        # the price per bit that meets a budget
    with gate.install(model, usage):
        model(ids)
    gate.save("gate.safetensors"); GateController.load("gate.safetensors", model)   # train once, reuse

The gate of unit u reads a token's input x (in,) as features f = [x / rms(x), log rms(x)] (direction
and scale: a unit's quantization error grows with both) and gives one logit per width,
l = G_u f + c_u. At run time the width is argmax_w (l_w - price * bits_w). ``price`` is the one
scalar fitted (like ThresholdController's threshold) so the realized cost meets a budget: a higher
price never gives a token a wider width (the argmax of lines in the price moves to smaller slopes
-bits_w), so the cost falls with it. Unlike the threshold rule the gate weighs what each width costs.

Training (:func:`train_gate`): each unit's output is the straight-through Gumbel-softmax mix of its
outputs at every width, y = sum_w h_w y_w + sum_w (p_w - sg(p_w)) y_w, with p = softmax((l + g) / tau)
for Gumbel noise g and h the one-hot of argmax p: the forward is exactly the chosen width's output
(the second sum is zero), the backward that of the soft mix. The loss per token is
KL(top width || gated) of the next-token distribution plus ``penalty`` times the expected average
weight bits, sum_u sum_w softmax(l)_w cost_u(w) (WidthSet.costs: summed over units, a token's
average bits). A larger penalty trades KL for bits. Gates start out preferring the top width.
"""

from __future__ import annotations

import contextlib
import hashlib
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BitswitchError
from ..switching import adapter_key, resolve_profile, restore, set_profile, snapshot, state, use_profile
from .budget import fit_scalar, realized_cost
from .routing import output_at, routed
from .usage import Usage
from .widths import WidthSet


def _key(unit: str) -> str:
    return unit.replace(".", "_")        # ModuleDict keys cannot hold dots


def features(x: torch.Tensor) -> torch.Tensor:
    """x (N, in) -> (N, in + 1) float32: the direction x / rms(x) and log rms(x)."""
    x = x.detach().float()
    rms = x.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-6)
    return torch.cat([x / rms, rms.log()], -1)


class GateController(nn.Module):
    """``gates``: per block unit a Linear(in + 1, W); ``price``: logits per weight bit (fitted)."""

    def __init__(self, widths: WidthSet, in_features: dict[str, int], price: float = 0.0):
        super().__init__()
        self.widths, self.price = widths, price
        n = len(widths.widths)
        self.gates = nn.ModuleDict({_key(u): nn.Linear(in_features[u] + 1, n) for u in widths.units})
        with torch.no_grad():
            for g in self.gates.values():
                g.weight.zero_()
                g.bias.copy_(torch.linspace(0, 2, n))        # the top width first
        self.register_buffer("bits", torch.tensor(widths.bits, dtype=torch.float32))

    @classmethod
    def from_model(cls, model, widths: WidthSet) -> GateController:
        ins = {}
        for unit, _, mod in unit_inputs(model, widths):
            ins[unit] = mod.in_features
        return cls(widths, ins).to(next(model.parameters()).device)

    def save(self, path) -> Path:
        """Write the gate atomically as safetensors; its widths, price and a sha256 of the tensors
        (checked by :meth:`load`) in the metadata."""
        from safetensors.torch import save

        from ..io import atomic_write_bytes

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        meta = {"widths": ",".join(self.widths.widths), "price": repr(self.price), "sha256": _digest(tensors)}
        return atomic_write_bytes(path, save(tensors, metadata=meta))

    @classmethod
    def load(cls, path, model) -> GateController:
        """The gate saved at ``path`` for ``model`` (its widths come from the file); a missing, corrupt
        or mismatched file is a one-line BitswitchError."""
        from safetensors import safe_open

        fix = "train a gate for this model again (bitswitch eval --dynamic gate without --gate)"
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:     # safetensors raises several types for a bad file
            raise BitswitchError(f"gate file {path} cannot be read ({type(exc).__name__}): {fix}") from None
        if not {"widths", "price", "sha256"} <= meta.keys():
            raise BitswitchError(f"gate file {path} lacks its widths, price or sha256 metadata: {fix}")
        if _digest(tensors) != meta["sha256"]:
            raise BitswitchError(f"gate file {path} is corrupt (sha256 mismatch): {fix}")
        gate = cls.from_model(model, WidthSet.from_model(model, meta["widths"]))
        want = {k: tuple(v.shape) for k, v in gate.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in tensors.items()}
        if want != got:
            bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
            raise BitswitchError(f"gate file {path} was trained for another model ({len(bad)} tensors differ, e.g. "
                                 f"{bad[0]}): {fix}")
        gate.load_state_dict(tensors)
        gate.price = float(meta["price"])
        return gate

    def logits(self, unit: str, x: torch.Tensor) -> torch.Tensor:
        """x (N, in) -> (N, W) float32."""
        gate = self.gates[_key(unit)]
        return gate(features(x).to(gate.weight.device))

    @torch.no_grad()
    def forward(self, unit: str, x: torch.Tensor) -> torch.Tensor:
        """The router: x (N, in) -> (N,) width indices."""
        return (self.logits(unit, x) - self.price * self.bits).argmax(-1).to(x.device)

    def install(self, model, usage: Usage | None = None):
        """``with gate.install(model, usage):`` runs the model under this controller."""
        return routed(model, self.widths, self, usage)

    def measure(self, model, batches, by: str = "bits") -> float:
        return realized_cost(self, model, batches, by)

    def fit(self, model, batches, budget: float, by: str = "bits", tol: float = 0.02, max_iter: int = 12) -> float:
        """Set ``price`` so the realized cost on ``batches`` is within ``tol`` of ``budget`` (or as
        near as ``max_iter`` routed passes get); returns the realized cost."""
        self.widths.check_budget(budget, by)
        batches = list(batches)
        if len(self.widths.widths) == 1:
            self.price = 0.0
            return self.measure(model, batches, by)

        def measure(price):
            self.price = price
            return self.measure(model, batches, by)

        self.price, got = fit_scalar(measure, 0.0, budget, tol, max_iter, step=0.25)
        return got


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode() + str(tensors[k].dtype).encode() + str(tuple(tensors[k].shape)).encode())
        h.update(tensors[k].contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def unit_inputs(model, widths: WidthSet):
    """``(unit, name, module)`` for the first module of each routed unit (the one its gate reads)."""
    st = state(model)
    for unit in widths.units:
        name = st.units[unit][0]
        yield unit, name, model.get_submodule(name)


@contextlib.contextmanager
def gated(model, gate: GateController, tau: float = 1.0, generator: torch.Generator | None = None):
    """Training forward (see the module): every routed unit's output is the straight-through
    Gumbel-softmax mix of its widths. Yields a list that collects, per unit forward, the expected
    cost (N,) in average weight bits; restores the model's precision on exit."""
    st = state(model)
    ws = gate.widths
    tables = [resolve_profile(model, w) for w in ws.widths]
    costs = {u: c.float() for u, c in ws.costs("bits").items()}
    saved = snapshot(model)
    set_profile(model, ws.widths[0], st.adapters_on)
    mix: dict[str, tuple] = {}
    expected: list[torch.Tensor] = []

    def decide(mod, args, unit):
        logits = gate.logits(unit, args[0].reshape(-1, args[0].shape[-1]))
        noise = -torch.empty_like(logits).exponential_(generator=generator).log()
        p = F.softmax((logits + noise) / tau, -1)
        hard = F.one_hot(p.argmax(-1), p.shape[-1]).to(p.dtype)
        mix[unit] = (hard, p - p.detach())
        expected.append(F.softmax(logits, -1) @ costs[unit].to(logits.device))

    def combine(mod, args, y, unit):
        hard, soft = mix[unit]
        x = args[0].reshape(-1, args[0].shape[-1])
        outs = [y.reshape(-1, y.shape[-1])]
        for prof, table in tables[1:]:
            key = adapter_key(st.keying, prof, table[unit]) if st.adapters_on else None
            outs.append(output_at(mod, x, table[unit], key if key in mod.adapters else None))
        hard, soft = hard.to(y.device), soft.to(y.device)
        out = sum(hard[:, j:j + 1] * o + soft[:, j:j + 1] * o for j, o in enumerate(outs))
        return out.to(y.dtype).view_as(y)

    handles = []
    try:
        for unit in ws.units:
            mods = [model.get_submodule(n) for n in st.units[unit]]
            handles.append(mods[0].register_forward_pre_hook(partial(decide, unit=unit)))
            handles += [m.register_forward_hook(partial(combine, unit=unit)) for m in mods]
        yield expected
    finally:
        for h in handles:
            h.remove()
        restore(model, saved)


def train_gate(model, gate: GateController, batches, penalty: float, steps: int = 64, lr: float = 0.01,
               tau: float = 1.0, seed: int = 0, progress=None) -> list[dict]:
    """Train ``gate`` on ``batches`` (cycled) for ``steps`` steps, the switchable model frozen; returns
    per step ``{"kl", "bits", "loss"}`` (expected bits per token).

    A batch is a (1, T) id tensor (the KL is averaged over every position) or an ``(ids, mask)`` pair
    with ``mask`` (1, T) bool: the KL is averaged over the masked positions only (e.g. those that
    predict an answer, :func:`bitswitch.data.squad.answer_batches`), while every token's gate still
    learns through them (attention carries a prompt token's error to the answer). The bits penalty
    is always over every token."""
    device = next(model.parameters()).device
    top = gate.widths.widths[-1]
    gen = torch.Generator(device=device).manual_seed(seed)
    opt = torch.optim.Adam(gate.parameters(), lr=lr)
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    model.eval()
    history = []
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        for step in range(steps):
            ids, mask = _batch(batches[step % len(batches)], device)
            with torch.no_grad(), use_profile(model, top, state(model).adapters_on):
                teacher = F.log_softmax(model(ids).logits.float(), -1).flatten(0, -2)[mask]
            with gated(model, gate, tau, gen) as expected:
                student = F.log_softmax(model(ids).logits.float(), -1).flatten(0, -2)[mask]
            kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
            bits = torch.stack(expected).sum(0).mean() if expected else torch.zeros((), device=device)
            loss = kl + penalty * bits
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append({"kl": kl.item(), "bits": bits.item(), "loss": loss.item()})
            if progress is not None:
                progress.update(1)
                progress.set_postfix(kl=f"{history[-1]['kl']:.4f}", bits=f"{history[-1]['bits']:.2f}")
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
        model.train(was_training)
    return history


def _batch(batch, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids (1, T), flat mask (T,))`` of a training batch: a bare id tensor weighs every position."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device), torch.ones(batch.numel(), dtype=torch.bool, device=device)
    ids, mask = batch
    if mask.shape != ids.shape or not mask.any():
        raise BitswitchError(f"a gate training batch's mask must have its ids' shape {tuple(ids.shape)} and mark "
                             f"at least one position, got {tuple(mask.shape)} with {int(mask.sum())} marked")
    return ids.to(device), mask.reshape(-1).to(device)
