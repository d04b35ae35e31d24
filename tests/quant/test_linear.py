import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from bitswitch.quant import ActQuant, QuantLinear, UnitPrecision, WeightQuant


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


def test_weight_cache_is_reused_and_invalidated_by_edits():
    q = QuantLinear(nn.Linear(8, 12).requires_grad_(False))    # frozen, as under LoRA training
    cfg = WeightQuant(4)
    a = q.quantized_weight(cfg)
    assert q.quantized_weight(cfg) is a                  # no re-quantization
    with torch.no_grad():
        q.base.weight.mul_(2)                            # in-place edit bumps the version
    b = q.quantized_weight(cfg)
    assert b is not a and torch.allclose(b, 2 * a)


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
