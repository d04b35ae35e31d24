import ast
from pathlib import Path

import pytest
import torch
from torch import nn

import bitswitch as bs
from bitswitch.norms import make_norms_quantizable, norm_bits_below, set_norm_bits
from bitswitch.quant.config import UnitPrecision, WeightQuant
from bitswitch.quant.norm import QuantNorm, fake_quantize_norm_output, fake_quantize_norm_weight


def test_norm_weight_quantizer_matches_its_definition():
    g = torch.tensor([0.5, -1.0, 0.26, 2.0, 0.0])
    # 3 bits: qmax 3, s = 2/3; codes round(g / s) = [0.75->1, -1.5->-2, 0.39->0, 3, 0]
    s = 2.0 / 3
    assert torch.allclose(fake_quantize_norm_weight(g, 3), torch.tensor([1, -2, 0, 3, 0]) * s)
    assert torch.equal(fake_quantize_norm_weight(torch.zeros(4), 2), torch.zeros(4))
    x = torch.randn(64, generator=torch.Generator().manual_seed(0))
    assert fake_quantize_norm_weight(x, 4).unique().numel() <= 15


def test_norm_output_quantizer_matches_its_definition():
    y = torch.tensor([[-1.0, 0.0, 0.5, 2.0], [1.0, 2.0, 3.0, 4.0]])
    # row 0, 2 bits: lo -1, hi 2, s = 1, z = 1: codes [0, 1, round(0.5)=0 -> +1 = 1, 3] -> [-1, 0, 0, 2]
    # row 1: lo 0 (range widened to 0), hi 4, s = 4/3, z = 0: round([0.75, 1.5, 2.25, 3]) = [1, 2, 2, 3]
    want = torch.tensor([[-1.0, 0.0, 0.0, 2.0], [4 / 3, 8 / 3, 8 / 3, 4.0]])
    assert torch.allclose(fake_quantize_norm_output(y, 2), want)
    assert torch.equal(fake_quantize_norm_output(torch.zeros(2, 3), 4), torch.zeros(2, 3))


def test_straight_through_gradient():
    y = torch.randn(3, 8, requires_grad=True)
    fake_quantize_norm_output(y, 3).sum().backward()
    assert torch.equal(y.grad, torch.ones_like(y))


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_quant_norm_state_on_tiny_models(name):
    model, _ = bs.load_model(name)
    ids = torch.randint(0, 200, (2, 9), generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        ref = model(ids).logits
        names = make_norms_quantizable(model)
        assert names and all(isinstance(model.get_submodule(n), QuantNorm) for n in names)
        assert make_norms_quantizable(model) == names          # idempotent
        assert torch.equal(model(ids).logits, ref)             # None: the wrapped module itself, bitwise
        assert set_norm_bits(model, 16) == len(names)
        close = model(ids).logits
        set_norm_bits(model, 2)
        far = model(ids).logits
        set_norm_bits(model, None)
        assert torch.equal(model(ids).logits, ref)
    assert (close - ref).abs().max() < (far - ref).abs().max()
    assert (close - ref).abs().max() < 1e-2


def test_quantized_rmsnorm_is_gain_times_normalized_input():
    model, _ = bs.load_model("tiny-llama")
    make_norms_quantizable(model)
    qn = next(m for m in model.modules() if isinstance(m, QuantNorm))
    set_norm_bits(model, 4)
    x = torch.randn(2, 3, qn.base.weight.numel())
    h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + qn.base.variance_epsilon)
    want = fake_quantize_norm_output(fake_quantize_norm_weight(qn.base.weight, 4) * h, 4)
    assert torch.allclose(qn(x), want)
    ln = QuantNorm(nn.LayerNorm(8))
    with pytest.raises(TypeError):
        QuantNorm(nn.Linear(2, 2))
    with pytest.raises(bs.BitswitchError):
        set_norm_bits(model, 1)
    assert ln(torch.randn(2, 8)).shape == (2, 8)


def test_norm_bits_below_the_lowest_weight_width():
    table = {"a": UnitPrecision(WeightQuant(8)), "b": UnitPrecision(WeightQuant(4)), "c": UnitPrecision()}
    assert norm_bits_below(table, 2) == 2 and norm_bits_below(table, 1) == 3
    assert norm_bits_below({"c": UnitPrecision()}, 2) == 14


def test_only_set_norm_bits_writes_norm_precision():
    root = Path(bs.__file__).parent
    writers = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, (ast.AugAssign, ast.AnnAssign)) else []
            for t in targets:
                if isinstance(t, ast.Attribute) and t.attr == "norm_bits":
                    own_init = rel == "quant/norm.py" and isinstance(t.value, ast.Name) and t.value.id == "self"
                    if not own_init:
                        writers.append(f"{rel}:{node.lineno}")
    assert writers and all(w.startswith("norms.py:") for w in writers), writers
