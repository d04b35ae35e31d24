"""SmolLM2-135M on the first 16 real SQuAD v1.1 dev questions (weights distributed at 4 bits)."""

import json

import pytest

from bitswitch.evaluate.config import EvalConfig
from bitswitch.evaluate.runner import run_eval
from tests.conftest import require_smollm2, shared_data

pytestmark = pytest.mark.integration


def test_squad_fp_and_w8a8_are_reproducible(tmp_path):
    require_smollm2()
    dev = str(shared_data("squad-v1.1", "dev-part1-v1.1.json"))
    cfg = dict(model="smollm2-135m", task="squad", data=dev, limit=16, device="cpu", max_new_tokens=16)
    first = run_eval(EvalConfig(profiles=["fp", "w8a8"], out=str(tmp_path / "a"), **cfg), log=lambda m: None)
    again = run_eval(EvalConfig(profiles=["fp"], out=str(tmp_path / "b"), **cfg), log=lambda m: None)
    assert [r["profile"] for r in first["records"]] == ["fp", "w8a8"]
    fp = first["records"][0]
    assert fp["n"] == 16 and fp["f1"] > 0
    preds = [(tmp_path / d / "predictions-fp.jsonl").read_text().splitlines() for d in ("a", "b")]
    assert [json.loads(x)["prediction"] for x in preds[0]] == [json.loads(x)["prediction"] for x in preds[1]]
