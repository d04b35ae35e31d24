"""A unit's own rounding of its frozen weight (``QuantLinear.set_rounding``, e.g. from GPTQ): fake
quantization, export and the runtime all multiply exactly those codes."""

import pytest
import torch

import bitswitch as bs
from bitswitch.export import export_model, load_exported
from bitswitch.models import tiny_model
from bitswitch.quant.config import WeightQuant
from bitswitch.quant.functional import dequantize_weight, fake_quantize_weight, quantize_weight
from bitswitch.quant.linear import QuantLinear
from bitswitch.runtime import Runtime
from bitswitch.switching import set_profile, unit_modules

CFG = WeightQuant(4, 32)


def _other_rounding(w, cfg, seed=0):
    """Round-to-nearest codes with a seeded ~20% of them moved one level (inside the range)."""
    codes, scale, zero = quantize_weight(w, cfg)
    g = torch.Generator().manual_seed(seed)
    step = torch.randint(-1, 2, codes.shape, generator=g) * (torch.rand(codes.shape, generator=g) < 0.2)
    q = 2 ** (cfg.bits - 1) - 1
    return (codes + step).clamp(-q, q).to(torch.int32), scale, zero


@pytest.mark.parametrize("grad", [False, True])
def test_forward_multiplies_the_set_codes(grad):
    torch.manual_seed(0)
    lin = QuantLinear(torch.nn.Linear(64, 48))
    lin.base.weight.requires_grad_(False)
    lin.precision = bs.quant.config.UnitPrecision(CFG)
    x = torch.randn(3, 64)
    codes, scale, zero = _other_rounding(lin.weight_out_in(), CFG)
    assert not torch.equal(codes, quantize_weight(lin.weight_out_in(), CFG)[0])
    before = lin(x).detach()
    lin.set_rounding(CFG, codes, scale, zero)
    with torch.set_grad_enabled(grad):
        got = lin(x)
    want = torch.nn.functional.linear(x, dequantize_weight(codes, scale, zero, CFG), lin.base.bias)
    assert torch.equal(got.detach(), want)
    assert not torch.equal(got.detach(), before)
    assert torch.equal(lin.weight_codes(CFG)[0], codes)
    assert torch.equal(lin.weight_codes(WeightQuant(8))[0], quantize_weight(lin.weight_out_in(), WeightQuant(8))[0])


def test_round_to_nearest_as_a_rounding_changes_nothing():
    torch.manual_seed(0)
    lin = QuantLinear(torch.nn.Linear(64, 32))
    lin.precision = bs.quant.config.UnitPrecision(CFG)
    x = torch.randn(2, 64)
    with torch.no_grad():
        before = lin(x)
        lin.set_rounding(CFG, *quantize_weight(lin.weight_out_in(), CFG))
        assert torch.equal(lin(x), before)
    assert torch.equal(fake_quantize_weight(lin.weight_out_in(), CFG), lin._quantize(CFG, "float"))


def test_bad_roundings_are_refused():
    lin = QuantLinear(torch.nn.Linear(64, 32))
    codes, scale, zero = quantize_weight(lin.weight_out_in(), CFG)
    with pytest.raises(ValueError, match="do not match the weight"):
        lin.set_rounding(CFG, codes[:4], scale, zero)
    with pytest.raises(ValueError, match="grid"):
        lin.set_rounding(CFG, codes, scale[:, :1], zero)
    with pytest.raises(ValueError, match="range"):
        lin.set_rounding(CFG, codes * 3, scale, zero)


def _rounded_model(spec):
    model, tok = tiny_model(spec)
    model.eval()
    bs.make_switchable(model)
    for i, (_, _, m) in enumerate(unit_modules(model)):
        m.set_rounding(CFG, *_other_rounding(m.weight_out_in().detach(), CFG, seed=i))
    return model, tok


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gpt2"])
def test_export_and_runtime_use_the_rounding(spec, ids, tmp_path):
    model, tok = _rounded_model(spec)
    set_profile(model, "w4g32")
    with torch.no_grad():
        want = model(ids).logits
    export_model(model, tok, "w4g32", tmp_path / "exp", unquantized_dtype="fp32")
    loaded, _ = load_exported(tmp_path / "exp", int8_kernel=False)
    with torch.no_grad():
        got = loaded(ids).logits
    assert (got - want).abs().max() < 1e-4
    rt = Runtime.from_model(model, tok, ["w4g32"], kernel="reference")
    assert (rt.logits(ids, torch.ones_like(ids)) - want).abs().max() < 1e-4
    fast = Runtime.from_model(model, tok, ["w4g32"])   # the int4 kernel packs the same codes
    assert (fast.logits(ids, torch.ones_like(ids)) - want).abs().max() < 0.08 * want.abs().max()
