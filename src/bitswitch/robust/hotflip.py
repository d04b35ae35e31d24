"""HotFlip (Ebrahimi et al., 2018) on SQuAD prompts: white-box token substitution.

The first-order change of the answer loss when token ``x_i`` becomes ``v`` is
``g_i . (E_v - E_{x_i})`` with ``g_i`` the gradient of the loss w.r.t. the input embedding at
position ``i`` (the gradient w.r.t. the one-hot input, times the embedding matrix). Each step takes
the ``candidates`` best (position, token) pairs by that score, measures their true loss in one
batched forward, and applies the best one if it raises the loss. At most ``budget`` positions ever
differ from the clean prompt (a position already flipped may flip again without spending budget).

Replacement tokens are letters-only vocabulary tokens of the same kind as the token they replace
(with or without a leading space), so the edit can be written back into the question text; the
adversarial text is what gets replayed (``extra.retokenized_same`` says whether re-tokenizing it
gives exactly the attacked ids).
"""

from __future__ import annotations

import re

import torch

from ..data.squad import PromptConfig, SquadExample
from ..evaluate.generate import answer_token_ids
from .examples import AdvExample, token_layout
from .loss import AnswerScorer

_WORD = re.compile(r"^[A-Za-z]+$")
_SPACE_WORD = re.compile(r"^ [A-Za-z]+$")


def candidate_vocab(tokenizer, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool masks (size,) of letters-only tokens without / with a leading space (cached per tokenizer)."""
    cached = getattr(tokenizer, "_bitswitch_hotflip_vocab", None)
    if cached is not None and cached[0].numel() == size:
        return cached
    n = min(size, len(tokenizer))
    texts = tokenizer.batch_decode([[i] for i in range(n)], clean_up_tokenization_spaces=False)
    special = set(tokenizer.all_special_ids)
    plain = torch.zeros(size, dtype=torch.bool)
    spaced = torch.zeros(size, dtype=torch.bool)
    for i, t in enumerate(texts):
        if i in special:
            continue
        plain[i] = bool(_WORD.match(t))
        spaced[i] = bool(_SPACE_WORD.match(t))
    tokenizer._bitswitch_hotflip_vocab = (plain, spaced)
    return plain, spaced


def hotflip(model, tokenizer, example: SquadExample, cfg: PromptConfig, sampler, budget: int = 3,
            candidates: int = 8, context: bool = False, craft: str = "") -> AdvExample:
    """Attack one question; returns the replayable :class:`AdvExample` (never more than ``budget`` flips)."""
    tl = token_layout(tokenizer, example, cfg, context=context)
    answer = answer_token_ids(tokenizer, example.answers[0])
    scorer = AnswerScorer(model, tokenizer, sampler, tl.ids, answer, tl.prefix_len())
    table = model.get_input_embeddings().weight.detach()                 # (V, d)
    plain, spaced = candidate_vocab(tokenizer, table.shape[0])
    clean_ids = list(tl.ids)
    cur = list(tl.ids)
    loss_clean = float(scorer.losses([cur])[0])
    cur_loss = loss_clean
    dec = {i: tokenizer.decode([clean_ids[i]], clean_up_tokenization_spaces=False) for i in tl.editable}
    for _ in range(budget if tl.editable else 0):
        draws = sampler.sample()
        _, grad, m = scorer.loss_and_grad(cur, draws=draws)              # grad (S, d) for positions m..
        flipped = [i for i in tl.editable if cur[i] != clean_ids[i]]
        allowed = tl.editable if len(flipped) < budget else flipped
        pos = torch.tensor(allowed)
        g = grad[pos - m]                                                 # (P, d)
        cur_t = torch.tensor([cur[i] for i in allowed])
        scores = g @ table.T - (g * table[cur_t]).sum(-1, keepdim=True)   # (P, V): first-order loss gain
        kinds = torch.stack([spaced if dec[i].startswith(" ") else plain for i in allowed])  # (P, V)
        kinds[torch.arange(len(allowed)), cur_t] = False                  # a flip must change the token
        scores = scores.masked_fill(~kinds, float("-inf"))
        k = min(candidates, int(kinds.sum()))
        if k == 0:
            break
        top = scores.flatten().topk(k).indices
        trials = []
        for flat in top.tolist():
            p, v = allowed[flat // scores.shape[1]], flat % scores.shape[1]
            trial = list(cur)
            trial[p] = v
            trials.append(trial)
        losses = scorer.losses([cur] + trials, draws)                     # same draws for all: fair pick
        best = int(losses[1:].argmax())
        if losses[1 + best] <= losses[0]:
            break
        cur, cur_loss = trials[best], float(losses[1 + best])
    return _to_example(tokenizer, example, tl, clean_ids, cur, cfg, budget, craft, loss_clean, cur_loss,
                       scorer.calls)


def _to_example(tokenizer, example, tl, clean_ids, cur, cfg, budget, craft, loss_clean, loss_adv, calls):
    """Write the flipped tokens back into the question / context text."""
    lay = tl.layout
    q0, c0 = lay.question_span[0], lay.context_span[0]
    question, context = example.question, example.context
    edits = []
    for i in sorted((i for i in tl.editable if cur[i] != clean_ids[i]), key=lambda i: -tl.offsets[i][0]):
        s, e = tl.offsets[i]
        old = tokenizer.decode([clean_ids[i]], clean_up_tokenization_spaces=False)
        new = tokenizer.decode([cur[i]], clean_up_tokenization_spaces=False)
        if old != lay.text[s:e] or s in (q0 - 1, c0 - 1):  # the leading space is not the field's
            new = new[1:] if new.startswith(" ") else new
            s = s + 1 if s in (q0 - 1, c0 - 1) else s
        if s >= q0 and e <= lay.question_span[1]:
            question = question[:s - q0] + new + question[e - q0:]
        else:
            context = context[:s - c0] + new + context[e - c0:]
        edits.append({"pos": i, "from": old, "to": tokenizer.decode([cur[i]], clean_up_tokenization_spaces=False)})
    adv = AdvExample(example.id, "hotflip", craft, example.question, example.context, question, context, budget,
                     edits[::-1], len(edits), loss_clean, loss_adv)
    re_ids = token_layout(tokenizer, adv.adversarial(example), cfg, alpha_only=False).ids
    adv.extra = {"retokenized_same": re_ids == cur, "forwards": calls}
    return adv
