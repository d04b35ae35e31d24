"""The attacks end to end on the real model and real questions: SmolLM2-135M, two SQuAD v1.1 dev questions.

Small on purpose (one edit, a few candidates, short answers) so it fits CI; the 100-question benchmark is
``benchmarks/bench_attack.py``. What it checks holds at any size: the budget, replayable text that
really changed, the matrix diagonal equal to the direct attack, and a rerun that recomputes nothing.
"""

import json

import pytest

from bitswitch.robust.attack_runner import AttackConfig, run_attack
from bitswitch.robust.examples import read_adv_jsonl
from tests.conftest import require_smollm2, shared_data

pytestmark = pytest.mark.integration


def test_hotflip_and_typo_on_smollm2_with_rpi(tmp_path):
    require_smollm2()
    dev = str(shared_data("squad-v1.1", "dev-part1-v1.1.json"))
    cfg = AttackConfig(model="smollm2-135m", data=dev, out=str(tmp_path / "a"), attacks=["hotflip", "typo"],
                       craft=["w8a8"], eval=["fp", "w8a8"], rpi=["w8a8", "w4a8"], eot=1, rpi_matrix="diagonal",
                       limit=2, budget=1, candidates=4, max_new_tokens=8, batch_size=2, device="cpu")
    logs = []
    res = run_attack(cfg, log=logs.append)
    assert res["n"] == 2 and set(res["clean"]) == {"fp", "w8a8", "rpi"}
    for attack in ("hotflip", "typo"):
        r = res["results"][attack]
        assert set(r["matrix"]) == {"w8a8", "rpi"} and set(r["matrix"]["w8a8"]) == {"fp", "w8a8"}
        assert r["direct"]["w8a8"] == r["matrix"]["w8a8"]["w8a8"]
        for row in ("w8a8", "rpi"):
            header, advs = read_adv_jsonl(tmp_path / "a" / f"adv-{attack}-{row}.jsonl")
            assert header["params"]["budget"] == 1 and len(advs) == 2
            assert all(a.n_edits <= 1 for a in advs)
            # an applied edit is visible in the replayable text, and an unedited question is unchanged
            assert all((a.adv_question != a.question) == (a.n_edits > 0) for a in advs)
        # at a fixed profile the greedy search only accepts an edit that raises the answer loss
        # (against RPI the two losses come from different precision draws, so no such order holds)
        _, fixed = read_adv_jsonl(tmp_path / "a" / f"adv-{attack}-w8a8.jsonl")
        assert all(a.loss_adv >= a.loss_clean - 1e-4 for a in fixed)   # batched vs single forward
    # rerun: every adversarial file and every replay is reused
    logs.clear()
    again = run_attack(cfg, log=logs.append)
    assert sum("reusing" in m for m in logs) == 4
    assert json.dumps(again["results"], sort_keys=True) == json.dumps(res["results"], sort_keys=True)
