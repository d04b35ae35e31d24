"""The learned gate: its training forward is exactly the chosen widths' forward, only the gate
learns, a larger bit penalty lowers the realized bits, the fitted price meets a budget, and one
allowed width is the static profile bitwise."""

import pytest
import torch

from bitswitch.dynamic import GateController, WidthSet, gated, train_gate
from bitswitch.errors import BitswitchError
from bitswitch.switching import set_profile, state

from .conftest import switchable
from .test_controllers import batches, logits


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2"])
def model(request):
    return switchable(request.param)[0]


def test_training_forward_at_one_width_is_that_profile_bitwise(model):
    """Gates pinned to one width (a logit gap no Gumbel noise of this seed overcomes): the
    straight-through mix returns exactly that width's outputs."""
    ws = WidthSet.from_model(model, "w4g32,w8")
    ids = batches(1, seed=5)[0]
    for index in (0, 1):
        gate = GateController.from_model(model, ws)
        with torch.no_grad():
            for g in gate.gates.values():
                g.bias.copy_(torch.tensor([100.0, 0.0] if index == 0 else [0.0, 100.0]))
        set_profile(model, ws.widths[index])
        want = logits(model, ids)
        set_profile(model, "fp")
        with torch.no_grad(), gated(model, gate, generator=torch.Generator().manual_seed(0)):
            got = model(ids).logits
        assert torch.equal(got, want)
        assert state(model).profile.name == "fp"


def test_only_the_gate_learns(model):
    ws = WidthSet.from_model(model, "w4g32,w8")
    gate = GateController.from_model(model, ws)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    hist = train_gate(model, gate, batches(2), penalty=0.1, steps=3)
    assert len(hist) == 3 and all(h["bits"] > 0 for h in hist)
    assert all(g.weight.abs().sum() > 0 for g in gate.gates.values())          # every gate got gradients
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


def test_a_mask_of_every_position_is_the_bare_batch_bitwise(model):
    """(ids, all-True mask) trains exactly as the bare ids; a partial mask trains on its positions only."""
    ws = WidthSet.from_model(model, "w4g32,w8")
    runs = {}
    for kind in ("bare", "full", "last"):
        data = [b if kind == "bare" else (b, torch.ones_like(b, dtype=torch.bool)) for b in batches(2)]
        if kind == "last":
            data = [(b, torch.arange(b.shape[1]).unsqueeze(0) >= b.shape[1] - 3) for b in batches(2)]
        gate = GateController.from_model(model, ws)
        hist = train_gate(model, gate, data, penalty=0.1, steps=3, seed=2)
        runs[kind] = (hist, {k: v.clone() for k, v in gate.state_dict().items()})
    assert runs["bare"][0] == runs["full"][0]
    assert all(torch.equal(v, runs["full"][1][k]) for k, v in runs["bare"][1].items())
    assert runs["last"][0][0]["kl"] != runs["full"][0][0]["kl"]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in runs["last"][0])


@pytest.mark.parametrize("mask", ["empty", "shape"])
def test_a_bad_mask_is_a_one_line_error(model, mask):
    ws = WidthSet.from_model(model, "w4g32,w8")
    ids = batches(1)[0]
    bad = torch.zeros_like(ids, dtype=torch.bool) if mask == "empty" else torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(BitswitchError, match="mask") as err:
        train_gate(model, GateController.from_model(model, ws), [(ids, bad)], penalty=0.1, steps=1)
    assert "\n" not in str(err.value)


def test_penalty_lowers_realized_bits_monotonically(model):
    ws = WidthSet.from_model(model, "w3g32,w4g32,w8")
    realized = []
    for penalty in (0.0, 0.02, 0.2, 2.0):
        gate = GateController.from_model(model, ws)
        train_gate(model, gate, batches(), penalty=penalty, steps=24, lr=0.05, seed=1)
        realized.append(gate.measure(model, batches()))
    assert all(a >= b for a, b in zip(realized, realized[1:])), realized
    assert realized[0] > realized[-1]


@pytest.mark.parametrize("widths,budget", [("w4g32,w8", 4.5), ("w4g32,w8", 6.5), ("w3g32,w4g32,w8", 3.5)])
def test_fitted_price_meets_the_budget_on_calibration_data(model, widths, budget):
    ws = WidthSet.from_model(model, widths)
    gate = GateController.from_model(model, ws)
    train_gate(model, gate, batches(), penalty=0.05, steps=16, lr=0.05)
    got = gate.fit(model, batches(), budget, tol=0.02)
    assert abs(got - budget) <= 0.05
    assert gate.measure(model, batches()) == got                    # deterministic


def test_single_width_is_the_static_profile_bitwise(model):
    ws = WidthSet.from_model(model, "w4g32")
    gate = GateController.from_model(model, ws)
    assert gate.fit(model, batches(2), 4) == pytest.approx(4)
    ids = batches(1, seed=3)[0]
    set_profile(model, "w4g32")
    want = logits(model, ids)
    set_profile(model, "fp")
    with gate.install(model):
        assert torch.equal(logits(model, ids), want)


def test_budget_outside_the_widths_is_an_error(model):
    gate = GateController.from_model(model, WidthSet.from_model(model, "w4g32,w8"))
    with pytest.raises(BitswitchError, match="outside what widths"):
        gate.fit(model, batches(1), 9.0)


def test_saved_gate_loads_to_the_same_routing(model, tmp_path):
    ws = WidthSet.from_model(model, "w3g32,w4g32,w8")
    gate = GateController.from_model(model, ws)
    train_gate(model, gate, batches(2), penalty=0.05, steps=4, lr=0.05)
    gate.fit(model, batches(2), 5.0)
    path = gate.save(tmp_path / "g.safetensors")
    back = GateController.load(path, model)
    assert back.widths.widths == ws.widths and back.price == gate.price
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in gate.state_dict().items())
    ids = batches(1, seed=7)[0]
    with gate.install(model):
        want = logits(model, ids)
    with back.install(model):
        assert torch.equal(logits(model, ids), want)


def test_corrupt_or_foreign_gate_file_is_a_one_line_error(model, tmp_path):
    gate = GateController.from_model(model, WidthSet.from_model(model, "w4g32,w8"))
    path = gate.save(tmp_path / "g.safetensors")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF                                   # a flipped bit in the tensor data
    (tmp_path / "bad.safetensors").write_bytes(bytes(data))
    with pytest.raises(BitswitchError, match="sha256 mismatch"):
        GateController.load(tmp_path / "bad.safetensors", model)
    (tmp_path / "cut.safetensors").write_bytes(bytes(data[:40]))
    with pytest.raises(BitswitchError, match="cannot be read"):
        GateController.load(tmp_path / "cut.safetensors", model)
    other = switchable("tiny-gpt2" if "llama" in type(model).__name__.lower() else "tiny-llama")[0]
    with pytest.raises(BitswitchError, match="another model|cannot be read|unknown"):
        GateController.load(path, other)
