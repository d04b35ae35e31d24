"""SQuAD v1.1 exact match and F1 for one prediction, as the official ``evaluate-v1.1.py`` computes them.

Both normalise text the official way (lowercase, drop punctuation, drop the articles a/an/the,
collapse whitespace) and take the best score over the gold answers. Scores are fractions in [0, 1];
the mean over questions times 100 is the usual SQuAD number.

Written out rather than taken from ``torchmetrics.functional.text.squad`` because torchmetrics only
exposes corpus means and its per-answer F1 follows the SQuAD v2.0 rule (1.0 when prediction and gold
both normalise to nothing), where v1.1 scores 0. The normalisation is identical, and the tests check
that means agree with torchmetrics wherever the two rules coincide.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lowercase, remove punctuation, remove articles, collapse whitespace (official order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _f1_one(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals some normalised gold answer, else 0.0."""
    _check_golds(golds)
    target = normalize_answer(prediction)
    return float(any(target == normalize_answer(gold) for gold in golds))


def f1(prediction: str, golds: Sequence[str]) -> float:
    """Best token-level F1 (bag of normalised words) between the prediction and any gold answer."""
    _check_golds(golds)
    return max(_f1_one(prediction, gold) for gold in golds)


def _check_golds(golds: Sequence[str]) -> None:
    # a bare string would be scored character by character: catch that mistake early
    if isinstance(golds, str) or not golds:
        raise ValueError(f"golds must be a non-empty sequence of answer strings, got {golds!r}")
