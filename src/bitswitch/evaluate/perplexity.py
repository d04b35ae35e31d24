"""Sliding-window perplexity, the protocol of the transformers perplexity guide.

Windows of ``window`` tokens start every ``stride`` tokens; each window scores only the tokens
not scored by the previous one (the rest are context). ``stride == window`` gives
non-overlapping windows.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def windows(n_tokens: int, window: int, stride: int):
    """Yield ``(begin, end, n_target)``: the slice ``[begin, end)`` and how many of its last
    tokens are scored."""
    if not 0 < stride <= window:
        raise ValueError(f"stride must be in 1..window ({window}), got {stride}")
    prev_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        yield begin, end, end - prev_end
        prev_end = end
        if end == n_tokens:
            break


@torch.inference_mode()
def perplexity(model, input_ids: torch.Tensor, window: int = 1024, stride: int | None = None,
               progress=None) -> dict:
    """Perplexity of ``model`` on ``input_ids`` (1, N).

    Returns ``{"ppl", "nll", "tokens"}`` where ``tokens`` counts the scored predictions (the first
    token of the text and of each window's context are never predicted, as in the guide).
    """
    stride = stride or window
    device = next(model.parameters()).device
    nll_sum, n_scored = 0.0, 0
    for begin, end, n_target in windows(input_ids.shape[1], window, stride):
        ids = input_ids[:, begin:end].to(device)
        logits = model(ids).logits[:, :-1].float()                     # (1, T-1, V)
        labels = ids[:, 1:].clone()                                     # (1, T-1)
        valid = min(n_target, labels.shape[1])  # a window's first token has no context to predict it
        labels[:, : labels.shape[1] - valid] = -100
        nll_sum += F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100,
                                   reduction="sum").item()
        n_scored += valid
        if progress is not None:
            progress.update(n_target)
    nll = nll_sum / max(n_scored, 1)
    return {"ppl": math.exp(nll), "nll": nll, "tokens": n_scored}
