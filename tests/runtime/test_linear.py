"""RuntimeLinear: per-spec packed weights, switching without repacking, activations, LoRA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bitswitch.errors import BitswitchError
from bitswitch.profiles import QuantOptions
from bitswitch.quant.config import ActQuant
from bitswitch.quant.functional import fake_quantize_act
from bitswitch.runtime import RuntimeLinear, int4_available, set_width

SPECS = ["fp", "w8a8", "w4g32a8", "w4g32", "w6g32", "w8"]


@pytest.fixture
def linear():
    torch.manual_seed(0)
    lin = nn.Linear(128, 48)
    with torch.no_grad():
        lin.weight.mul_(0.5)
    return lin


@pytest.fixture
def x():
    return torch.randn(2, 3, 128, generator=torch.Generator().manual_seed(1))


def test_packs_each_weight_once_and_names_its_kernels(linear):
    m = RuntimeLinear.from_linear(linear, SPECS)
    # fp, w8 (w8a8 and w8 share it), w4g32 (w4g32a8 and w4g32 share it), w6g32
    assert m.pack_count == 4 and set(m.weights) == {"fp", "w8", "w4g32", "w6g32"}
    kinds = {k: w.kind for k, w in m.weights.items()}
    assert kinds == {"fp": "bf16", "w8": "int8", "w4g32": "int4" if int4_available() else "dequant",
                     "w6g32": "dequant"}
    assert m.active == "fp"
    m.add_width("w4g32a4")               # a new activation width on a packed weight: no packing
    assert m.pack_count == 4 and m.precisions["w4g32a4"] == ("w4g32", ActQuant(4))


@pytest.mark.parametrize("spec", SPECS)
def test_forward_is_the_packed_kernel_on_quantized_bf16_input(linear, x, spec):
    m = RuntimeLinear.from_linear(linear, SPECS)
    set_width(m, spec)
    y = m(x)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 3, 48)
    key, act = m.precisions[spec]
    xf = x.reshape(6, 128)
    # activations are quantized in float32 (fake quantization's levels), then cast to bf16
    xq = (xf if act is None else fake_quantize_act(xf, act)).to(torch.bfloat16)
    assert torch.equal(y.reshape(6, 48), m.weights[key].matmul(xq) + m.bias)


def test_switching_back_and_forth_is_bitwise_and_never_repacks(linear, x):
    m = RuntimeLinear.from_linear(linear, SPECS)
    first = {}
    for spec in SPECS:
        set_width(m, spec)
        first[spec] = m(x)
    packs = m.pack_count
    for spec in ["w4g32", "fp", "w8a8", "w4g32a8", "w6g32", "w4g32", "w8", "fp", "w4g32a8"]:
        set_width(m, spec)
        assert torch.equal(m(x), first[spec])
    assert m.pack_count == packs
    assert not torch.equal(first["fp"], first["w4g32"])


def test_set_width_switches_every_unit_or_none(linear, x):
    model = nn.Sequential(RuntimeLinear.from_linear(linear, ["fp", "w8a8"]),
                          RuntimeLinear.from_linear(nn.Linear(48, 16), ["fp", "w8a8", "w4g16"]))
    assert set_width(model, "w8a8") == 2
    assert [u.active for u in model] == ["w8a8", "w8a8"]
    with pytest.raises(BitswitchError, match="not packed") as e:
        set_width(model, "w4g16")
    assert "\n" not in str(e.value)
    assert [u.active for u in model] == ["w8a8", "w8a8"]      # nothing switched
    assert model(x).shape == (2, 3, 16)


def test_lora_is_added_for_its_spec_only(linear, x):
    m = RuntimeLinear.from_linear(linear, ["w4g32a8", "w8a8"])
    set_width(m, "w4g32a8")
    base = m(x)
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(4, 128, generator=g) * 0.1, torch.randn(48, 4, generator=g) * 0.1
    m.add_lora("w4g32a8", a, b, scaling=2.0)
    xb = x.to(torch.bfloat16)
    delta = (xb @ a.to(torch.bfloat16).t()) @ b.to(torch.bfloat16).t() * 2.0   # from the unquantized input
    assert torch.equal(m(x), base + delta)
    set_width(m, "w8a8")
    plain = RuntimeLinear.from_linear(linear, ["w8a8"])
    assert torch.equal(m(x), plain(x))


def test_conv1d_is_its_transposed_linear(linear, x):
    transformers = pytest.importorskip("transformers.pytorch_utils")
    conv = transformers.Conv1D(48, 128)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.t())
        conv.bias.copy_(linear.bias)
    a, b = RuntimeLinear.from_linear(conv, ["w4g32a8"]), RuntimeLinear.from_linear(linear, ["w4g32a8"])
    assert torch.equal(a(x), b(x))


def test_user_errors_are_one_line(linear):
    def check(fn, match):
        with pytest.raises(BitswitchError, match=match) as e:
            fn()
        assert "\n" not in str(e.value)

    check(lambda: RuntimeLinear.from_linear(linear, ["w9"]), "weight bits 9")
    check(lambda: RuntimeLinear.from_linear(linear, ["w4g48"]), "does not divide")
    check(lambda: RuntimeLinear.from_linear(linear, ["w4g16"], kernel="int4"), "groups of|int4")
    check(lambda: RuntimeLinear.from_linear(linear, ["w8a8"], QuantOptions(act_mode="tensor")), "per token")
    m = RuntimeLinear.from_linear(linear, ["fp"])
    check(lambda: m.add_width("w4g32"), "not packed")
    check(lambda: m.add_lora("w8", torch.zeros(2, 128), torch.zeros(48, 2), 1.0), "no width")
    check(lambda: m.add_lora("fp", torch.zeros(2, 64), torch.zeros(48, 2), 1.0), "LoRA A")
