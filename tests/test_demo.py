"""``bitswitch demo`` end to end on a tiny model: the recipe chosen and written first, the run
resumed with it, a mismatched recipe and a bad budget refused in one line."""

import json

import pytest

from bitswitch.cli import main
from bitswitch.demo import run_demo
from bitswitch.errors import BitswitchError
from tests.test_demo_plan import on_grid, squad_file


@pytest.fixture
def data(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    return squad_file(d / "train.json"), squad_file(d / "questions.json")


def _demo(data, out, model="tiny-llama", profiles=("fp", "w4a8"), **kw):
    train, dev = data
    return run_demo(model=model, train_data=train, dev_data=dev, profiles=profiles, steps=2,
                    batch_size=2, eval_limit=2, device="cpu", out=str(out), log=lambda m: None, **kw)


def test_auto_takes_gptq_when_it_fits_and_a_rerun_keeps_the_plan(data, tmp_path):
    out = tmp_path / "demo"
    res = _demo(data, out, time_budget=60)
    plan = json.loads((out / "plan.json").read_text())
    assert res["recipe"] == plan["recipe"] == "gptq" and plan["chosen_by"] == "auto" and plan["fits"]
    est = plan["estimates_s"]
    assert set(est) == {"gptq", "lora"} and plan["probe"]["gptq_s"] > 0
    assert est["gptq"] == pytest.approx(est["lora"] + plan["probe"]["gptq_s"], abs=2e-3)   # the same run, plus GPTQ
    assert (out / "gptq-base" / "config.json").is_file()
    assert f"model: {out / 'gptq-base'}" in (out / "train" / "config.yaml").read_text()
    records = json.loads((out / "eval" / "results.json").read_text())["records"]
    assert [r["profile"] for r in records] == ["fp", "w4a8"]
    again = _demo(data, out, time_budget=1e-6)   # the plan written first wins over a new budget
    assert again["recipe"] == "gptq"
    assert json.loads((out / "eval" / "results.json").read_text())["records"] == records   # resumed, not rerun


def test_auto_runs_lora_when_nothing_fits_and_says_so(data, tmp_path):
    out = tmp_path / "demo"
    assert _demo(data, out, time_budget=1e-6)["recipe"] == "lora"
    plan = json.loads((out / "plan.json").read_text())
    assert plan["fits"] is False and plan["probe"]["gptq_s"] is None and not (out / "gptq-base").exists()


def test_a_named_recipe_is_not_timed_and_a_different_one_cannot_resume(data, tmp_path):
    out = tmp_path / "demo"
    _demo(data, out, recipe="lora")
    assert json.loads((out / "plan.json").read_text())["recipe"] == "lora"
    with pytest.raises(BitswitchError, match="was started with --recipe lora"):
        _demo(data, out, recipe="gptq")


@pytest.mark.parametrize("args, message", [(["--time-budget", "0"], "--time-budget must be a positive number"),
                                           (["--recipe", "qat"], "--recipe must be auto or one of"),
                                           (["--recipe", "gguf", "--profiles", "fp", "w3a8"],
                                            "the gguf recipe has no format below 4 bits")])
def test_bad_recipe_or_budget_is_a_one_line_error(data, tmp_path, capsys, args, message):
    train, dev = data
    code = main(["demo", "--model", "tiny-llama", "--train-data", train, "--dev-data", dev, "--device", "cpu",
                 "--out", str(tmp_path / "demo"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "demo").exists()


def test_auto_takes_the_gguf_recipe_on_a_base_shipped_on_the_q4_1_grid(data, tmp_path):
    from bitswitch.models import load_model

    model, tok = load_model("tiny-llama", device="cpu")
    base = tmp_path / "q4_1-base"
    on_grid(model, 4, False).save_pretrained(base)
    tok.save_pretrained(base)
    out = tmp_path / "demo"
    res = _demo(data, out, model=str(base), profiles=("fp", "w6a8", "w4a8"), time_budget=60)
    plan = json.loads((out / "plan.json").read_text())
    assert res["recipe"] == plan["recipe"] == "gguf" and plan["native_grid"] == "Q4_1"
    assert set(plan["estimates_s"]) == {"gguf", "gptq", "lora"} and plan["profiles"] == ["fp", "w5a8", "w4a8"]
    saved = json.loads((out / "train" / "adapters" / "adapter_config.json").read_text())["options"]
    assert (saved["weight_grid"], saved["weight_symmetric"]) == ("gguf", False)
    records = json.loads((out / "eval" / "results.json").read_text())["records"]
    assert [r["profile"] for r in records] == ["fp", "w5a8", "w4a8"]
