"""Training losses: cross-entropy on the supervised tokens, self-distillation KL, hidden-state MSE.

The LM head runs only at the positions whose next token is supervised (``logits_to_keep`` with
the union of those positions over the batch), through the model's own forward so DDP works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def supervised_forward(model, batch: dict, hidden: bool = False):
    """Run ``model`` on ``batch`` keeping logits only where a target exists.

    Returns ``(logits (N, V), targets (N,), hidden_states or None)`` with N the number of
    supervised tokens in the batch.
    """
    target = batch["labels"][:, 1:]                                     # (B, T-1): token t+1 of position t
    keep = (target != IGNORE).any(0).nonzero().squeeze(1)              # (K,) positions any row supervises
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep,
                output_hidden_states=hidden, use_cache=False)
    tgt = target[:, keep]                                               # (B, K)
    sel = tgt != IGNORE
    return out.logits[sel], tgt[sel], (out.hidden_states if hidden else None)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy; logits (N, V) in any dtype, computed in float32."""
    return F.cross_entropy(logits.float(), targets)


def distill_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) per token, averaged, scaled by T^2 (Hinton et al.); both (N, V)."""
    t = temperature
    log_s = F.log_softmax(student.float() / t, -1)
    log_t = F.log_softmax(teacher.float() / t, -1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * t * t


def hidden_mse(student, teacher, mask: torch.Tensor, layers: list[int]) -> torch.Tensor:
    """Mean over ``layers`` of the MSE between hidden states (B, T, C) at unmasked positions."""
    m = mask.bool()
    losses = [F.mse_loss(student[i][m].float(), teacher[i][m].float()) for i in layers]
    return torch.stack(losses).mean()
