"""The transferability matrix: examples crafted at the row setting, replayed at the column setting.

Every cell is :func:`~.replay.replay` of the row's adversarial examples at the column's setting,
so the diagonal (crafted and evaluated at the same setting) is the direct white-box attack result.
Cells are computed column by column (one precision switch per column) and handed to ``on_cell`` as
they finish, so a caller can persist them and skip them when resuming (``done``).
"""

from __future__ import annotations

from tqdm.auto import tqdm

from ..data.squad import PromptConfig, SquadExample
from .examples import AdvExample
from .replay import replay, success_rate


def cell_key(attack: str, row: str, col: str) -> str:
    return f"{attack}|{row}|{col}"


def transfer_matrix(model, tokenizer, examples: list[SquadExample], attack: str,
                    adversarial: dict[str, list[AdvExample]], settings: dict, cfg: PromptConfig,
                    clean: dict[str, dict], deltas: dict[str, list] | None = None, max_new_tokens: int = 16,
                    batch_size: int = 16, seed: int = 0, done: dict | None = None, on_cell=None,
                    skip=None, log=print) -> dict[str, dict[str, dict]]:
    """``{row: {col: {"em", "f1", "answer_ppl", "n", "success_rate", "f1_drop", "rows"}}}``.

    adversarial: row name -> its examples (aligned with ``examples``); settings: column name ->
    setting (profile string or RPIConfig); clean: column name -> the clean replay at that column.
    """
    done = done or {}
    matrix: dict[str, dict[str, dict]] = {row: {} for row in adversarial}
    by_id = {ex.id: ex for ex in examples}
    for col, setting in settings.items():
        for row, advs in adversarial.items():
            key = cell_key(attack, row, col)
            if skip is not None and skip(row, col):
                continue
            if key in done:
                matrix[row][col] = done[key]
                continue
            adv_examples = [a.adversarial(by_id[a.id]) for a in advs]
            with tqdm(total=len(adv_examples), desc=f"{attack} {row}->{col}", unit="q", dynamic_ncols=True,
                      leave=False) as bar:
                res = replay(model, tokenizer, adv_examples, cfg, setting, max_new_tokens, batch_size, seed,
                             deltas=(deltas or {}).get(row), progress=bar)
            res["success_rate"] = success_rate(clean[col]["rows"], res["rows"])
            res["f1_drop"] = clean[col]["f1"] - res["f1"]
            matrix[row][col] = res
            log(f"[{attack}] crafted at {row}, evaluated at {col}: F1 {res['f1']:.2f} "
                f"(clean {clean[col]['f1']:.2f}), success {res['success_rate']}")
            if on_cell is not None:
                on_cell(key, res)
    return matrix
