"""Learned clipping (quant/clipping.py, QuantLinear.clips): an untrained clip is the round-to-nearest
grid bit for bit; clips get finite non-zero gradients and stay in range; the clipped codes are in
range; saved with the adapters bit for bit; export and the runtime run the clipped grid."""

import pytest
import torch
import torch.nn.functional as F

import bitswitch as bs
from bitswitch.adapters import add_clips, clip_parameters, load_adapters, save_adapters
from bitswitch.errors import BitswitchError
from bitswitch.export import export_model, load_exported
from bitswitch.models import tiny_model
from bitswitch.quant.clipping import (CLIP_MIN, clip_key, clip_shape, fake_quantize_weight_clipped, parse_clip_key,
                                      project_, quantize_weight_clipped)
from bitswitch.quant.config import UnitPrecision, WeightQuant
from bitswitch.quant.functional import dequantize_weight, fake_quantize_weight, qrange, quantize_weight
from bitswitch.quant.linear import QuantLinear
from bitswitch.runtime import Runtime
from bitswitch.switching import set_profile, unit_modules

CFGS = [WeightQuant(4, 32), WeightQuant(2, 16), WeightQuant(3), WeightQuant(8), WeightQuant(4, 32, False),
        WeightQuant(2, None, False)]


def _lin(seed=0):
    torch.manual_seed(seed)
    lin = QuantLinear(torch.nn.Linear(64, 48))
    with torch.no_grad():
        lin.base.weight[5] = 0.0            # an all-zero row: scale 1, codes 0
        lin.base.weight[7, :32] = 0.3       # a constant group
    lin.base.weight.requires_grad_(False)
    return lin


@pytest.mark.parametrize("cfg", CFGS, ids=lambda c: clip_key(c))
def test_an_untrained_clip_is_the_round_to_nearest_grid_bitwise(cfg):
    lin = _lin()
    w = lin.weight_out_in()
    theta = torch.ones(clip_shape(48, 64, cfg))
    for a, b in zip(quantize_weight(w, cfg), quantize_weight_clipped(w, cfg, theta)):
        assert (a is None and b is None) or torch.equal(a, b)
    assert torch.equal(fake_quantize_weight(w, cfg), fake_quantize_weight_clipped(w, cfg, theta))
    lin.precision = UnitPrecision(cfg)
    x = torch.randn(3, 64)
    with torch.no_grad():
        before = lin(x)
    lin.add_clip(cfg).requires_grad_(True)
    with torch.no_grad():
        assert torch.equal(lin(x), before)
    assert torch.equal(lin(x).detach(), before)      # the differentiable path too


@pytest.mark.parametrize("cfg", CFGS, ids=lambda c: clip_key(c))
def test_clips_get_finite_nonzero_gradients_and_stay_in_range(cfg):
    lin = _lin()
    lin.precision = UnitPrecision(cfg)
    clip = lin.add_clip(cfg).requires_grad_(True)
    opt = torch.optim.AdamW([clip], lr=10.0, weight_decay=0.0)   # a huge lr: every step hits a bound
    x = torch.randn(16, 64)
    target = torch.randn(16, 48)
    for step in range(4):
        loss = F.mse_loss(lin(x), target)
        loss.backward()
        assert torch.isfinite(clip.grad).all()
        assert clip.grad.abs().sum() > 0
        opt.step()
        opt.zero_grad()
        project_(clip)
        assert float(clip.detach().min()) >= CLIP_MIN and float(clip.detach().max()) <= 1.0
    assert float(clip.detach().min()) < 1.0          # it moved
    codes, scale, zero = lin.weight_codes(cfg)
    lo, hi = qrange(cfg.bits, cfg.symmetric)
    assert int(codes.min()) >= lo and int(codes.max()) <= hi
    # the cached inference path multiplies exactly the clipped codes, and so does the training path
    want = F.linear(x, dequantize_weight(codes, scale, zero, cfg), lin.base.bias)
    with torch.no_grad():
        assert torch.equal(lin(x), want)
    assert torch.equal(lin(x).detach(), want)


def test_a_clip_pulls_in_where_rounding_error_dominates():
    """LSQ's gradient: one outlier per row, the rest tiny; shrinking the range cuts the error of all
    the rest, so minimising the weight error lowers the factor."""
    torch.manual_seed(0)
    w = torch.randn(8, 64) * 0.01
    w[:, 0] = 1.0
    cfg = WeightQuant(3)
    theta = torch.ones(clip_shape(8, 64, cfg), requires_grad=True)
    (fake_quantize_weight_clipped(w, cfg, theta) - w).pow(2).sum().backward()
    assert (theta.grad > 0).all()     # descending lowers the factor


def test_keys_round_trip_and_unsupported_grids_take_no_clip():
    for cfg in CFGS:
        assert parse_clip_key(clip_key(cfg)) == cfg
    lin = _lin()
    for cfg in (WeightQuant(4, 32, grid="nested"), WeightQuant(4, 32, grid="gguf"), WeightQuant(16),
                WeightQuant(4, method="log")):
        with pytest.raises(ValueError, match="no learned clip"):
            lin.add_clip(cfg)
        assert lin.clip(cfg) is None
    with pytest.raises(ValueError, match="outside"):
        lin.add_clip(WeightQuant(4, 32), torch.full((48, 2), 1.5))
    with pytest.raises(ValueError, match="shape"):
        lin.add_clip(WeightQuant(4, 32), torch.ones(48, 1))


def _clipped_model(spec, profiles=("w4g32", "w8")):
    model, tok = tiny_model(spec)
    model.eval()
    bs.make_switchable(model)
    add_clips(model, profiles)
    g = torch.Generator().manual_seed(1)
    for clip in clip_parameters(model):
        with torch.no_grad():
            clip.copy_(0.5 + 0.5 * torch.rand(clip.shape, generator=g))
    return model, tok


def test_clips_save_and_load_with_the_adapters_bit_for_bit(tmp_path, ids):
    model, _ = _clipped_model("tiny-llama")
    bs.add_adapters(model, ["w4g32"])
    set_profile(model, "w4g32")
    with torch.no_grad():
        want = model(ids).logits
    save_adapters(model, tmp_path / "ad", ["w4g32", "w8"])
    fresh, _ = tiny_model("tiny-llama")
    fresh.eval()
    bs.make_switchable(fresh)
    load_adapters(fresh, tmp_path / "ad")
    a = {n: c for _, n, m in unit_modules(model) for c in m.clips.values()}
    b = {n: c for _, n, m in unit_modules(fresh) for c in m.clips.values()}
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    set_profile(fresh, "w4g32")
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, want)


def test_a_clip_outside_its_range_is_a_one_line_error(tmp_path):
    from safetensors.torch import load_file, save_file

    from bitswitch.adapters import load_adapter_state_dict

    model, _ = _clipped_model("tiny-gpt2", ("w4g32",))
    save_adapters(model, tmp_path / "ad")
    tensors = load_file(str(tmp_path / "ad" / "adapters.safetensors"))
    name = next(k for k in tensors if "::clip::" in k)
    tensors[name] = tensors[name] * 3
    save_file(tensors, str(tmp_path / "bad.safetensors"))
    with pytest.raises(BitswitchError, match="outside"):
        load_adapter_state_dict(model, load_file(str(tmp_path / "bad.safetensors")))


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gpt2"])
def test_export_and_runtime_run_the_clipped_grid(spec, ids, tmp_path):
    model, tok = _clipped_model(spec)
    set_profile(model, "w4g32")
    with torch.no_grad():
        want = model(ids).logits
        plain = tiny_model(spec)[0]
        bs.make_switchable(plain)
        set_profile(plain, "w4g32")
        assert not torch.equal(plain.eval()(ids).logits, want)     # the clip changed the grid
    export_model(model, tok, "w4g32", tmp_path / "exp", unquantized_dtype="fp32")
    loaded, _ = load_exported(tmp_path / "exp", int8_kernel=False)
    with torch.no_grad():
        assert (loaded(ids).logits - want).abs().max() < 1e-4
    rt = Runtime.from_model(model, tok, ["w4g32", "w8"], kernel="reference")
    assert (rt.logits(ids, torch.ones_like(ids)) - want).abs().max() < 1e-4
    set_profile(model, "w8")
    with torch.no_grad():
        want8 = model(ids).logits
    rt.set_profile("w8")
    assert (rt.logits(ids, torch.ones_like(ids)) - want8).abs().max() < 1e-4
