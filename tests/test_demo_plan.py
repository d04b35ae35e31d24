"""The demo's recipe choice: estimates from timings, the best recipe that fits, the cheapest when
none does; and the timings themselves on a tiny model."""

import json
import math

import pytest

import torch

from bitswitch.demo_plan import AUTO, RECIPES, Probe, check_budget, choose, estimate, gguf_profiles, native_grid, probe
from bitswitch.errors import BitswitchError
from bitswitch.evaluate.config import EvalConfig
from bitswitch.train.config import TrainConfig


P = Probe(train_step_s=10.0, gptq_s=200.0, eval_s=0.5, probe_s=60.0)


def test_estimate_adds_preparation_training_and_evaluation():
    assert estimate(RECIPES["lora"], P, steps=60, questions=50, profiles=4) == 60 * 10.0 + 50 * 4 * 0.5
    assert estimate(RECIPES["gptq"], P, steps=60, questions=50, profiles=4) == 200.0 + 700.0
    assert estimate(RECIPES["gptq"], Probe(10.0, None, 0.5, 60.0), 60, 50, 4) == math.inf


@pytest.mark.parametrize("budget_s, chosen, fits", [(960.0, "gptq", True), (959.0, "lora", True),
                                                     (760.0, "lora", True), (759.0, "lora", False)])
def test_choose_takes_the_best_recipe_that_fits_what_timing_left(budget_s, chosen, fits):
    # gptq 900 s, lora 700 s, after 60 s of timing
    name, est, ok = choose(P, budget_s, steps=60, questions=50, profiles=4, candidates=("gptq", "lora"))
    assert (name, ok) == (chosen, fits)
    assert est == {"gptq": 900.0, "lora": 700.0}
    assert AUTO == ("gguf", "gptq", "lora")
    assert choose(P, budget_s, 60, 50, 4)[0] == ("gguf" if fits else "lora")   # gguf costs what lora does


@pytest.mark.parametrize("minutes", [0, -1, float("nan"), float("inf")])
def test_a_budget_that_is_not_a_positive_number_is_refused(minutes):
    with pytest.raises(BitswitchError, match="--time-budget must be a positive number of minutes"):
        check_budget(minutes)


def squad_file(path, n=8):
    """A SQuAD v1.1 file of ``n`` short questions, one article: prompts that fit tiny models."""
    qas = [{"id": f"q{i}", "question": f"What is item {i}?", "answers": [{"text": f"item {i}", "answer_start": 0}]}
           for i in range(n)]
    data = {"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": "A list of items: " + ", ".join(f"item {i}" for i in range(n)) + ".", "qas": qas}]}]}
    path.write_text(json.dumps(data))
    return str(path)


def test_probe_times_every_stage_on_a_tiny_model(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    train, dev = squad_file(data / "train.json"), squad_file(data / "questions.json")
    tmp_path = tmp_path / "runs"
    tmp_path.mkdir()
    cfg = TrainConfig(model="tiny-llama", data=train, profiles=["fp", "w4a8"], steps=5, batch_size=2,
                      max_length=128, out=str(tmp_path / "train"), device="cpu")
    ev = EvalConfig(model="tiny-llama", task="squad", data=dev, profiles=["fp", "w4a8"], limit=4, batch_size=2,
                    max_new_tokens=4, out=str(tmp_path / "eval"), device="cpu")
    gptq = {"profiles": ["w4a8"], "calib_data": train, "calib_questions": 2, "hessians": "fp"}
    p = probe(cfg, ev, gptq)
    assert p.train_step_s > 0 and p.eval_s > 0 and p.gptq_s > 0
    assert p.probe_s >= p.train_step_s
    assert not any(tmp_path.iterdir())   # timing writes nothing where the run will go
    assert probe(cfg, ev, gptq, budget_s=1e-3).gptq_s is None   # lora alone does not fit: GPTQ is not timed


def on_grid(model, bits, symmetric):
    """``model`` with every block weight replaced by its llama.cpp ``(bits, symmetric)`` rounding."""
    from bitswitch.quant.gguf_grid import dequantize_blocks, quantize_blocks

    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and ".layers." in f".{name}":
                mod.weight.copy_(dequantize_blocks(*quantize_blocks(mod.weight, bits, symmetric)))
    return model


def test_native_grid_finds_the_format_a_base_was_shipped_on():
    from bitswitch.models import load_model

    model, _ = load_model("tiny-llama", device="cpu")
    assert native_grid(model) is None
    assert native_grid(on_grid(model, 8, True)) == "Q8_0"
    assert native_grid(on_grid(model, 4, False)) == "Q4_1"
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] += 1e-3   # one weight off the grid
    assert native_grid(model) is None


def test_on_its_native_grid_a_w4_profile_is_the_base_itself():
    from bitswitch.models import load_model
    from bitswitch.profiles import QuantOptions
    from bitswitch.switching import make_switchable, set_profile

    model, _ = load_model("tiny-llama", device="cpu")
    model = on_grid(model, 4, False)
    make_switchable(model, QuantOptions(**RECIPES["gguf"].train))
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        set_profile(model, "fp")
        fp = model(ids).logits
        set_profile(model, "w4")
        assert torch.equal(model(ids).logits, fp)
        set_profile(model, "w5")
        assert not torch.equal(model(ids).logits, fp)


def test_gguf_profiles_move_widths_without_a_format_down():
    assert gguf_profiles(["fp", "w8a8", "w6a8", "w4a8"]) == ["fp", "w8a8", "w5a8", "w4a8"]
    assert gguf_profiles(["w7", "w6", "w5", "w16"]) == ["w5", "w16"]
    with pytest.raises(BitswitchError, match="no format below 4 bits: drop w3a8"):
        gguf_profiles(["fp", "w3a8"])
