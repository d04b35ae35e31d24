import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from bitswitch.quant import ActQuant, QuantLinear, UnitPrecision, WeightQuant
from bitswitch.quant.functional import fake_quantize_weight


def _conv1d():
    torch.manual_seed(0)
    c = Conv1D(12, 8)
    nn.init.normal_(c.weight)
    nn.init.normal_(c.bias)
    return c


def test_fp_is_bitwise_the_base_layer():
    x = torch.randn(3, 5, 8)
    for base in (_conv1d(), nn.Linear(8, 12)):
        q = QuantLinear(base)
        assert torch.equal(q(x), base(x))


def test_conv1d_quantizes_per_output_channel():
    base = _conv1d()
    q = QuantLinear(base)
    assert (q.out_features, q.in_features) == (12, 8)
    q.precision = UnitPrecision(WeightQuant(2))
    wq = q.quantized_weight(q.precision.weight)          # (out, in)
    assert wq.shape == (12, 8)
    for row in wq:
        assert row.unique().numel() <= 4
    x = torch.randn(4, 8)
    assert torch.allclose(q(x), x @ wq.t() + base.bias, atol=1e-6)


@pytest.mark.parametrize("mode", ["codes", "float"])
def test_weight_cache_is_reused_and_invalidated_by_edits(mode):
    q = QuantLinear(nn.Linear(8, 12).requires_grad_(False))    # frozen, as under LoRA training
    q.weight_cache = mode
    cfg = WeightQuant(4)
    a = q.quantized_weight(cfg)
    cached = q._wcache[(cfg, mode)][1]
    assert torch.equal(q.quantized_weight(cfg), a) and q._wcache[(cfg, mode)][1] is cached  # no re-quantization
    with torch.no_grad():
        q.base.weight.mul_(2)                            # in-place edit bumps the version
    b = q.quantized_weight(cfg)
    assert q._wcache[(cfg, mode)][1] is not cached and torch.allclose(b, 2 * a)


@pytest.mark.parametrize("cfg", [WeightQuant(8), WeightQuant(4, 4), WeightQuant(8, None, False), WeightQuant(3, 4, False)])
def test_codes_cache_is_one_byte_per_weight_and_bitwise_fake_quant(cfg):
    w = torch.randn(12, 8) * 3
    q = QuantLinear(nn.Linear(8, 12).requires_grad_(False))
    q.scratch = {}
    with torch.no_grad():
        q.base.weight.copy_(w)
        wq = q.quantized_weight(cfg)                          # auto + no grad: codes into the scratch buffer
        assert wq.data_ptr() == q.scratch[((12, 8), w.device)].data_ptr()
        assert torch.equal(wq, fake_quantize_weight(w, cfg))  # bitwise the float path
    codes = q._wcache[(cfg, "codes")][1][0]
    assert codes.element_size() == 1 and codes.shape == (12, 8)
    assert torch.equal(q.quantized_weight(cfg), fake_quantize_weight(w, cfg))  # auto + grad: float cache
    assert (cfg, "float") in q._wcache


def test_activation_only_precision_uses_base_weight():
    base = nn.Linear(8, 12)
    q = QuantLinear(base)
    q.precision = UnitPrecision(None, ActQuant(16))
    x = torch.randn(2, 8)
    assert torch.allclose(q(x), base(x), rtol=1e-3, atol=1e-3)


def test_trainable_base_weight_gets_straight_through_gradients():
    q = QuantLinear(nn.Linear(8, 12))
    q.precision = UnitPrecision(WeightQuant(4))
    x = torch.randn(3, 8)
    q(x).sum().backward()
    assert torch.allclose(q.base.weight.grad, torch.ones(12, 3) @ x)
    assert not q._wcache                                      # nothing cached for a trainable weight


def test_caches_made_in_inference_mode_work_outside_it():
    q = QuantLinear(nn.Linear(8, 12).requires_grad_(False))
    q.scratch = {}
    x = torch.randn(3, 8)
    q.precision = UnitPrecision(WeightQuant(4), ActQuant(8))
    with torch.inference_mode():
        a = q(x).clone()
    with torch.no_grad():
        assert torch.equal(q(x), a)                  # in-place dequantization into the scratch buffer
    q.weight_cache = "float"
    with torch.inference_mode():
        q(x)
    xg = x.clone().requires_grad_()
    q(xg).sum().backward()                            # the float cache can be saved for backward
    assert xg.grad is not None
