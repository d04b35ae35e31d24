"""Byte and bit accounting of searched profiles against a hand count on tiny-llama."""

from fractions import Fraction

import pytest

import bitswitch as bs
from bitswitch.errors import BitswitchError
from bitswitch.search.space import build_space, noise_energy, parse_candidates

# tiny-llama: hidden 64, intermediate 128, 4 heads of 16, 2 KV heads, vocab 257, untied head
SHAPES = {"attn_in": [(64, 64), (32, 64), (32, 64)], "attn_out": [(64, 64)],
          "mlp_in": [(128, 64), (128, 64)], "mlp_out": [(64, 128)]}


def _model(**options):
    model, _ = bs.load_model("tiny-llama", device="cpu")
    bs.make_switchable(model, bs.QuantOptions(**options))
    return model


def _hand_bytes(bits: int, group: int | None, zero_bytes: int) -> dict[str, int]:
    """Per role: packed codes + fp16 scales + zero points of its modules."""
    out = {}
    for role, shapes in SHAPES.items():
        total = 0
        for o, i in shapes:
            groups = o * (i // group if group else 1)
            total += -(-o * i * bits // 8) + 2 * groups + zero_bytes * groups
        out[role] = total
    return out


@pytest.mark.parametrize("asym, group", [(False, None), (True, None), (True, 16), (False, 32)])
def test_weight_bytes_equal_a_hand_count(asym, group):
    model = _model(weight_symmetric=not asym, group_size=group)
    space = build_space(model, "w8a8", "3,4,8")
    assign = {u: 8 for u in space.units}
    assign.update({"L0.attn_in": 3, "L0.attn_out": 3, "L0.mlp_in": 3, "L0.mlp_out": 3, "L1.attn_in": 4})
    profile = space.profile(assign)
    total = sum(p.numel() for p in model.parameters())
    unit_params = sum(o * i for shapes in SHAPES.values() for o, i in shapes)
    zero = 1 if asym else 0
    by_bits = {b: _hand_bytes(b, group, zero) for b in (3, 4, 8)}
    quantized = (sum(by_bits[3].values()) + by_bits[4]["attn_in"]
                 + sum(v for r, v in by_bits[8].items() if r != "attn_in"))
    unquantized = 2 * (total - 2 * unit_params)      # embeddings, norms, the fp head: fp16
    hand = quantized + unquantized
    rep = bs.profile_report(model, profile)
    assert space.weight_bytes(assign) == rep["weight_bytes"] == hand
    assert rep["quantized_bytes"] == quantized and rep["unquantized_bytes"] == unquantized
    assert space.fp16_weight_bytes == 2 * total and space.fp32_weight_bytes == 4 * total
    p = {r: sum(o * i for o, i in s) for r, s in SHAPES.items()}
    bits = 3 * unit_params + 4 * p["attn_in"] + 8 * (unit_params - p["attn_in"])
    assert space.avg_bits(assign) == rep["avg_w_bits"] == bits / (2 * unit_params)


def test_fixed_parts_follow_the_base_profile():
    model = _model()
    space = build_space(model, "w8a8;head=w8a8", "4,8")    # a quantized head is counted, not searched
    assert "head" not in space.units
    for b in (4, 8):
        assign = space.uniform(b)
        rep = bs.profile_report(model, space.profile(assign))
        assert space.profile(assign).endswith("head=w8a8")
        assert space.weight_bytes(assign) == rep["weight_bytes"]
        assert space.avg_bits(assign) == pytest.approx(rep["avg_w_bits"], abs=1e-12)


def test_avg_bits_budget_is_exact():
    model = _model()
    space = build_space(model, "w8a8", "4,6,8")
    n = space.counted_params
    assert space.avg_bits_budget(4) == 4 * n
    assert space.avg_bits_budget(4.1) == int(Fraction(41, 10) * n)
    assert space.avg_bits(space.uniform(4)) == 4.0


def test_candidates_and_energy():
    assert parse_candidates("8, 4,6,4") == (4, 6, 8)
    for bad in ("", "4,9", "four"):
        with pytest.raises(BitswitchError):
            parse_candidates(bad)
    model = _model()
    space = build_space(model, "w8a8", "3,4,6,8")
    energy = noise_energy(model, space)
    for row in energy.values():
        assert row[3] > row[4] > row[6] > row[8] > 0.0       # against the float weights
