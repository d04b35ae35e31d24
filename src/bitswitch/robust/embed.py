"""Embedding-space attacks (PGD, FGSM): a continuous upper bound on what a text attacker can do.

A perturbation ``delta`` (k, d) is added to the input embeddings of the ``k`` editable tokens (the
question, optionally the context outside answer spans) and pushed up the answer loss:

- ``linf``: every entry of delta in ``[-eps, eps]``; steps ``delta += alpha * sign(g)``, then clip;
- ``l2``: every token's delta in the ball of radius ``eps``; steps along ``g / ||g||`` per token,
  then project.

``eps`` is given relative to the embedding table's scale (``linf``: the std of its entries; ``l2``:
its mean row norm), so one value means the same on any model; the absolute radius is recorded.
There is no text: the record keeps the token positions, the deltas go to a safetensors file, and
:func:`perturbed` replays them (an embedding forward hook adds them while the prompt is processed).
"""

from __future__ import annotations

import contextlib

import torch

from ..data.squad import PromptConfig, SquadExample
from ..errors import BitswitchError
from ..evaluate.generate import answer_token_ids
from .examples import AdvExample, token_layout
from .loss import AnswerScorer

NORMS = ("linf", "l2")


def absolute_eps(model, eps: float, norm: str) -> float:
    table = model.get_input_embeddings().weight.detach().float()
    if norm not in NORMS:
        raise BitswitchError(f"unknown embedding-attack norm {norm!r}: use linf or l2")
    return float(eps * (table.std() if norm == "linf" else table.norm(dim=-1).mean()))


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    scale = (eps / delta.norm(dim=-1, keepdim=True).clamp(min=1e-12)).clamp(max=1.0)
    return delta * scale


def embed_attack(model, tokenizer, example: SquadExample, cfg: PromptConfig, sampler, method: str = "pgd",
                 eps: float = 0.5, norm: str = "linf", steps: int = 5, context: bool = False,
                 craft: str = "") -> tuple[AdvExample, torch.Tensor]:
    """Attack one question; returns the record and the delta (k, d) (fgsm: one step of size eps)."""
    tl = token_layout(tokenizer, example, cfg, context=context, alpha_only=False)
    answer = answer_token_ids(tokenizer, example.answers[0])
    positions = tl.editable
    scorer = AnswerScorer(model, tokenizer, sampler, tl.ids, answer, min(positions, default=tl.prefix_len()))
    e_abs = absolute_eps(model, eps, norm)
    d = model.get_input_embeddings().weight.shape[1]
    delta = torch.zeros(len(positions), d, device=scorer.device)
    n_steps, alpha = (1, e_abs) if method == "fgsm" else (steps, 2.5 * e_abs / max(steps, 1))
    loss_clean = float(scorer.losses([tl.ids])[0])
    for _ in range(n_steps if positions else 0):
        _, grad, m = scorer.loss_and_grad(tl.ids, delta, positions)
        g = grad[torch.tensor(positions) - m].float()                         # (k, d)
        if norm == "linf":
            step = g.sign()
        else:
            step = g / g.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        delta = _project(delta + alpha * step, e_abs, norm)
    loss_adv = scorer.loss_and_grad(tl.ids, delta, positions)[0] if positions else loss_clean
    size = float(delta.abs().max() if norm == "linf" else delta.norm(dim=-1).max()) if positions else 0.0
    adv = AdvExample(example.id, f"embed-{method}", craft, example.question, example.context, example.question,
                     example.context, len(positions), [], len(positions), loss_clean, loss_adv,
                     {"norm": norm, "eps": eps, "eps_abs": e_abs, "delta_norm": size, "positions": positions,
                      "forwards": scorer.calls})
    return adv, delta.detach().cpu()


@contextlib.contextmanager
def perturbed(model, positions: list[int], delta: torch.Tensor, length: int):
    """Add ``delta`` (k, d) at prompt ``positions`` whenever the embedding layer sees one sequence of
    at least ``length`` tokens (the prompt's prefill, or prompt + answer when scoring); decoding steps
    (one token) pass unchanged. Replays therefore run one question per batch, without padding.
    """
    emb = model.get_input_embeddings()
    idx = torch.as_tensor(positions, dtype=torch.long)

    def hook(module, args, out):
        if out.shape[0] == 1 and out.shape[1] >= length and len(idx):
            return out.index_add(1, idx.to(out.device), delta[None].to(out.device, out.dtype))
        return out

    handle = emb.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
