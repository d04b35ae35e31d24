import pytest
import torch

from bitswitch.quant import ActQuant, WeightQuant
from bitswitch.quant import functional as qf


def _w(out=16, inp=64, seed=0):
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_per_channel_weight_has_at_most_2_pow_b_levels(bits, symmetric):
    wq = qf.fake_quantize_weight(_w(), WeightQuant(bits, symmetric=symmetric))
    for row in wq:
        assert row.unique().numel() <= 2**bits


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_per_group_weight_levels_and_codes(bits):
    cfg = WeightQuant(bits, group_size=16, symmetric=False)
    w = _w()
    code, scale, zero = qf.quantize_weight(w, cfg)
    assert scale.shape == (16, 4) and zero.shape == (16, 4)
    assert code.min() >= 0 and code.max() <= 2**bits - 1
    wq = qf.fake_quantize_weight(w, cfg)
    for g in wq.reshape(16, 4, 16).reshape(-1, 16):
        assert g.unique().numel() <= 2**bits


def test_group_size_must_divide():
    with pytest.raises(ValueError, match="does not divide"):
        qf.fake_quantize_weight(_w(inp=60), WeightQuant(4, group_size=16))


def test_uniform_matches_reference_ops():
    """Symmetric per-channel 8-bit equals torch's own fake_quantize_per_channel_affine."""
    w = _w()
    cfg = WeightQuant(8)
    scale, _ = qf.weight_qparams(w, cfg)
    ref = torch.fake_quantize_per_channel_affine(w, scale.squeeze(1), torch.zeros(16, dtype=torch.int32),
                                                 0, -127, 127)
    assert torch.equal(qf.fake_quantize_weight(w, cfg), ref)


def test_weight_scales_are_fp16_representable():
    scale, _ = qf.weight_qparams(_w(), WeightQuant(4))
    assert torch.equal(scale, scale.half().float())


def test_16_bit_within_1e_3_relative():
    w = _w()
    wq = qf.fake_quantize_weight(w, WeightQuant(16))
    assert ((wq - w).norm() / w.norm()) < 1e-3
    x = torch.randn(3, 7, 64)
    xq = qf.fake_quantize_act(x, ActQuant(16))
    assert ((xq - x).norm() / x.norm()) < 1e-3


@pytest.mark.parametrize("bits", [4, 6, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_per_token_activation_levels(bits, symmetric):
    x = torch.randn(2, 5, 128) * torch.linspace(0.1, 10, 5)[None, :, None]
    xq = qf.fake_quantize_act(x, ActQuant(bits, symmetric=symmetric))
    for tok in xq.reshape(-1, 128):
        assert tok.unique().numel() <= 2**bits


def test_per_token_ste_gradient_is_identity():
    x = torch.randn(4, 32, requires_grad=True)
    qf.fake_quantize_act(x, ActQuant(4)).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_static_tensor_clips_and_masks_gradient():
    x = torch.tensor([-3.0, -0.5, 0.0, 0.5, 3.0], requires_grad=True)
    y = qf.fake_quantize_act(x, ActQuant(8, mode="tensor", symmetric=True), (torch.tensor(-1.0), torch.tensor(1.0)))
    assert y.detach().abs().max() <= 1.0 + 1e-6
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="calibrated"):
        qf.fake_quantize_act(x, ActQuant(8, mode="tensor"))


@pytest.mark.parametrize("bits", [3, 4, 6])
def test_log_quantizer_powers_of_two(bits):
    w = _w()
    cfg = WeightQuant(bits, method="log")
    wq = qf.fake_quantize_weight(w, cfg)
    scale, _ = qf.weight_qparams(w, cfg)
    for row, s in zip(wq, scale):
        assert row.unique().numel() <= 2**bits
        mags = (row[row != 0].abs() / s).log2()
        assert torch.allclose(mags, mags.round(), atol=1e-5)       # magnitudes are s * 2^-k
        assert mags.min() >= -(2 ** (bits - 1) - 2) - 1e-5


def test_all_zero_rows_and_tokens_stay_finite():
    w = torch.zeros(4, 8)
    assert torch.equal(qf.fake_quantize_weight(w, WeightQuant(4)), w)
    x = torch.zeros(2, 8)
    assert torch.equal(qf.fake_quantize_act(x, ActQuant(8)), x)


def test_configs_validate():
    with pytest.raises(ValueError):
        WeightQuant(9)
    with pytest.raises(ValueError):
        ActQuant(3)
    with pytest.raises(ValueError):
        WeightQuant(4, method="log", symmetric=False)


def test_bf16_weights_keep_dtype():
    w = _w().bfloat16()
    assert qf.fake_quantize_weight(w, WeightQuant(4)).dtype == torch.bfloat16
