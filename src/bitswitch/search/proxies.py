"""Cheap sensitivity proxies: predicted damage of quantizing each unit, from one gradient pass.

With the model at the base profile (adapters active), the loss ``L`` (answer cross-entropy for
SQuAD, next-token cross-entropy for text) is differentiated with respect to every unit's base
weight ``W`` (through the straight-through estimator, i.e. with respect to the weight the profile
runs). The quantization noise of a unit at ``b`` bits is ``dW_b = Q_b(W) - W`` against the float
weights, around which the trained loss is near a minimum; the second-order model
``L(b) ~ L(W) + 1/2 dW_b^T H dW_b`` gives the damage relative to the base,
``1/2 dW_b^T H dW_b - 1/2 dW_base^T H dW_base``: positive below the base's bits, negative (a gain)
above them, so a search from a low base (e.g. ``w4a8``) sees what raising a unit buys. ``H`` is
approximated three ways:

* ``fisher``: diagonal empirical Fisher, ``1/2 sum_i F_ii dW_i^2`` with ``F = mean_tokens g_t^2``, the
  per-token squared gradients (estimated with one random-sign backward per batch, :func:`_signed_sum`);
* ``fisher-grad``: ``fisher`` plus the first-order term ``g . (Q_b(W) - Q_base(W))`` with ``g`` the
  mean per-token gradient. Why: a quantized model on data it was not trained on is not at a minimum,
  and the particular rounding of a unit moves the loss along the gradient by as much as the
  curvature does (on SmolLM2 / WikiText-2 it takes the rank correlation with measured 3-bit damages
  from 0.50 to 0.74); the term is deterministic for a given rounding, not noise;
* ``taylor``: the unit's block Fisher along ``dW``: ``1/2 mean_tokens (g_t . dW)^2`` (the same estimator);
* ``hutchinson``: Hessian trace per unit by Hutchinson's estimator (``E[v^T H v]``, Rademacher
  ``v``, one double-backward per batch), ``1/2 tr(H_u) / n_u * ||dW||^2`` (HAWQ-v2).

Scores are in nats per scored token, the scale of the measured ``answer_ppl`` / ``ppl`` damage.
A tied LM head shares its weight with the embedding, so ``head``'s gradient includes the
embedding's; its score is approximate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import torch
import torch.nn.functional as F

from ..errors import BitswitchError
from ..quant.functional import fake_quantize_weight
from ..switching import resolve_profile, set_profile, state, unit_modules
from .metrics import MetricData

PROXIES = ("fisher", "fisher-grad", "taylor", "hutchinson")


def loss_batches(md: MetricData, tokenizer, n_batches: int, batch_size: int) -> list[dict]:
    """Up to ``n_batches`` batches: ``{"ids", "mask", "positions"}`` (b, T) plus ``"targets"`` and
    ``"scored"`` (b, A) for the last A positions (squad: the answers; text: every next token)."""
    from ..evaluate.generate import _pad, _pad_id, answer_token_ids

    batches = []
    if md.task == "squad":
        targets = [answer_token_ids(tokenizer, a) for a in md.answers]
        for start in range(0, min(len(md.prompts), n_batches * batch_size), batch_size):
            rows = range(start, min(start + batch_size, len(md.prompts)))
            ids, mask = _pad([md.prompts[i] + targets[i] for i in rows], _pad_id(tokenizer), torch.device("cpu"))
            lengths = torch.tensor([len(targets[i]) for i in rows])
            width = int(lengths.max())
            scored = torch.arange(width) >= width - lengths[:, None]              # (b, A)
            batches.append({"ids": ids, "mask": mask, "positions": (mask.cumsum(-1) - 1).clamp(min=0),
                            "targets": ids[:, -width:], "scored": scored})
    else:
        n = md.ids.shape[1]
        for start in range(0, n - 1, md.window):
            ids = md.ids[:, start:start + md.window]
            if ids.shape[1] < 2 or len(batches) >= n_batches:
                break
            mask = torch.ones_like(ids)
            batches.append({"ids": ids, "mask": mask, "positions": (mask.cumsum(-1) - 1),
                            "targets": ids[:, 1:], "scored": torch.ones_like(ids[:, 1:], dtype=torch.bool)})
    return batches


def _token_nll(model, batch: dict) -> torch.Tensor:
    """Cross-entropy of every scored target of one batch, (n,)."""
    device = next(model.parameters()).device
    width = batch["targets"].shape[1]
    out = model(input_ids=batch["ids"].to(device), attention_mask=batch["mask"].to(device),
                position_ids=batch["positions"].to(device), use_cache=False, logits_to_keep=width + 1)
    logits = out.logits[:, -width - 1:-1].float()                                # (b, A, V)
    nll = F.cross_entropy(logits.transpose(1, 2), batch["targets"].to(device), reduction="none")  # (b, A)
    return nll[batch["scored"].to(device)]


def _signed_sum(nll: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``sum_t s_t l_t`` with independent random signs ``s_t``: its gradient ``G = sum_t s_t g_t``
    has ``E[G_i^2] = sum_t g_{t,i}^2``, so one backward per batch estimates the *per-token* squared
    gradients the Fisher is made of. Why not the gradient of the mean loss: its square is
    ``(mean_t g_t)^2`` plus ``1/T`` of the Fisher, i.e. mostly the squared mean gradient, which
    measures how far the model is from a minimum of this data, not the curvature around it."""
    return (_rademacher(nll, gen) * nll).sum()


def _rademacher(like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Independent +-1 entries of ``like``'s shape, dtype and device (drawn on the CPU generator)."""
    return (torch.randint(0, 2, like.shape, generator=gen) * 2 - 1).to(like)


def _accumulate(sums: dict, key, t: torch.Tensor) -> None:
    sums[key] = sums[key] + t if key in sums else t


@contextlib.contextmanager
def _unit_weight_grads(model, units):
    """Only the searched units' base weights require grad inside the block (restored after)."""
    flags = {p: p.requires_grad for p in model.parameters()}
    params = {}
    for p in model.parameters():
        p.requires_grad_(False)
    for unit, name, mod in unit_modules(model):
        if unit in units:
            mod.base.weight.requires_grad_(True)
            params[name] = (unit, mod)
    try:
        yield params
    finally:
        for p, f in flags.items():
            p.requires_grad_(f)
            p.grad = None


@contextlib.contextmanager
def _eager_attention(model, method: str):
    """Hutchinson differentiates twice; PyTorch's fused CPU attention kernels have no double
    backward, so the model's own (eager) attention runs inside the block."""
    current = getattr(model.config, "_attn_implementation", None)
    switch = method == "hutchinson" and current not in (None, "eager") and hasattr(model, "set_attn_implementation")
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(current)


def _out_in(mod, t: torch.Tensor) -> torch.Tensor:
    return t.t() if mod.conv1d else t


def proxy_scores(model, tokenizer, md: MetricData, base: str, bits, method: str = "fisher",
                 n_batches: int = 4, batch_size: int = 4, units=None, seed: int = 0,
                 progress: bool = True) -> dict:
    """Proxy damage ``{unit: {bits: score}}`` of every unit (default: all, head included) at each of
    ``bits``, relative to ``base``. Returns ``{"scores", "method", "batches", "seconds"}``.

    Memory: one float32 copy of the units' weights for the gradients, and for ``fisher`` another
    for the squared-gradient sums; ``hutchinson`` keeps the double-backward graph of one batch.
    """
    from tqdm.auto import tqdm

    if method not in PROXIES:
        raise BitswitchError(f"unknown proxy {method!r}: use {', '.join(PROXIES)}")
    if n_batches < 1 or batch_size < 1:
        raise BitswitchError("--proxy-batches and --batch-size must be at least 1")
    t0 = time.perf_counter()
    _, table = resolve_profile(model, base)
    options = state(model).options
    units = set(units) if units is not None else {u for u, _, _ in unit_modules(model)}
    bits = sorted(set(bits))
    batches = loss_batches(md, tokenizer, n_batches, batch_size)
    was_training = model.training
    model.eval()
    set_profile(model, base)
    gen = torch.Generator().manual_seed(seed)
    tokens = 0                                         # scored tokens seen (fisher/taylor normalise by it)
    fisher: dict[str, torch.Tensor] = {}               # module -> sum over batches of G^2, (out, in)
    grad_sum: dict[str, torch.Tensor] = {}             # module -> sum over tokens of g_t (fisher-grad)
    trace: dict[str, float] = {}                       # unit -> sum over batches of v.Hv
    taylor: dict[tuple[str, int], float] = {}          # (unit, bits) -> sum over batches of (g . dW)^2

    def noise(mod, unit, b):  # Q_b(W) - W, (out, in); b None: the base's own noise
        return _noise(mod, table[unit].weight, b, options)

    with _unit_weight_grads(model, units) as params, torch.enable_grad(), _eager_attention(model, method):
        names = list(params)
        weights = [params[n][1].base.weight for n in names]
        for batch in tqdm(batches, desc=f"proxy {method}", unit="batch", dynamic_ncols=True, disable=not progress):
            nll = _token_nll(model, batch)
            if method == "hutchinson":  # the Hessian of the mean loss itself
                grads = torch.autograd.grad(nll.mean(), weights, create_graph=True)
                vs = [_rademacher(w, gen) for w in weights]
                hv = torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, vs)), weights)
                for n, v, h in zip(names, vs, hv):
                    trace[params[n][0]] = trace.get(params[n][0], 0.0) + float((v * h).sum())
                continue
            tokens += nll.numel()
            signed = _signed_sum(nll, gen)
            if method == "fisher-grad":  # the same forward, a second backward for the plain sum
                for n, g in zip(names, torch.autograd.grad(nll.sum(), weights, retain_graph=True)):
                    _accumulate(grad_sum, n, _out_in(params[n][1], g.float()))
            grads = torch.autograd.grad(signed, weights)
            dots: dict[tuple[str, int], float] = {}
            for n, g in zip(names, grads):
                unit, mod = params[n]
                g = _out_in(mod, g.float())
                if method in ("fisher", "fisher-grad"):
                    _accumulate(fisher, n, g.pow(2))
                else:  # g . dW over the unit's modules first, squared per batch below
                    for b in (None, *bits):
                        dots[(unit, b)] = dots.get((unit, b), 0.0) + float((g * noise(mod, unit, b)).sum())
            for key, v in dots.items():
                taylor[key] = taylor.get(key, 0.0) + v * v
        model.train(was_training)
        nb = len(batches)
        scores: dict[str, dict[int, float]] = {u: {b: 0.0 for b in bits} for u in units}
        numel = {u: 0 for u in units}
        for n, (unit, mod) in params.items():
            numel[unit] += mod.base.weight.numel()
        with torch.no_grad():
            for n, (unit, mod) in (params.items() if method != "taylor" else ()):
                weight = fisher[n] / tokens if method != "hutchinson" else trace[unit] / nb / numel[unit]
                base_noise = noise(mod, unit, None)
                at_base = float((weight * base_noise.pow(2)).sum())
                for b in bits:  # exactly 0 at the base's own bits: the same quantizer, the same noise
                    dw_b = noise(mod, unit, b)
                    scores[unit][b] += 0.5 * (float((weight * dw_b.pow(2)).sum()) - at_base)
                    if n in grad_sum:  # g . (Q_b(W) - Q_base(W)), mean over tokens
                        scores[unit][b] += float((grad_sum[n] * (dw_b - base_noise)).sum()) / tokens
        for (unit, b), v in taylor.items():   # empty unless method == "taylor"
            if b is not None:
                scores[unit][b] = 0.5 * (v - taylor[(unit, None)]) / tokens
    return {"scores": scores, "method": method, "batches": nb, "seconds": round(time.perf_counter() - t0, 3)}


@torch.no_grad()
def _noise(mod, base_quant, bits: int | None, options) -> torch.Tensor:
    """Quantization noise ``Q_bits(W) - W`` of one module against its float weight, (out, in);
    ``bits`` None: the base's own noise (0 for an fp base). The candidate quantizer keeps the base's
    group size and symmetry (the options' defaults for an fp base)."""
    w = mod.weight_out_in().detach().float()
    if bits is None:
        return fake_quantize_weight(w, base_quant) - w if base_quant is not None else torch.zeros_like(w)
    template = base_quant or options.precision(bits, None, None).weight
    return fake_quantize_weight(w, dataclasses.replace(template, bits=bits)) - w
