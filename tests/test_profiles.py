import json

import pytest

from bitswitch import BitswitchError, QuantOptions, parse_profile, resolve
from bitswitch.profiles import profile_to_mapping, quantized_tensor_bytes, safe_key, table_to_string
from bitswitch.quant import WeightQuant

UNITS = [f"L{i}.{r}" for i in range(12) for r in ("attn_in", "attn_out", "mlp_in", "mlp_out")] + ["head"]


def specs(profile, **opts):
    return {u: p.spec for u, p in resolve(profile, UNITS, QuantOptions(**opts)).items()}


def test_builtin_and_uniform():
    t = specs("w8a8")
    assert all(t[u] == "w8a8" for u in UNITS if u != "head") and t["head"] == "fp"
    assert set(specs("fp").values()) == {"fp"}
    assert specs("w4a16")["L3.mlp_in"] == "w4a16"


def test_later_rules_override_earlier():
    t = specs("w8a8;L*.mlp_in=w4a8;L0.*=fp")
    assert t["L0.mlp_in"] == "fp" and t["L0.attn_in"] == "fp"
    assert t["L1.mlp_in"] == "w4a8" and t["L1.attn_in"] == "w8a8"


def test_globs_weights_only_groups_and_head():
    t = specs("w6;L[0-5].*=w4g32a8;head=w8")
    assert t["L5.attn_out"] == "w4g32a8" and t["L6.attn_out"] == "w6"
    assert t["head"] == "w8"
    assert resolve("w4afp", UNITS)["L0.attn_in"].act is None


def test_options_shape_the_quantizers():
    p = resolve("w4a8", UNITS, QuantOptions(group_size=64, weight_symmetric=False, act_mode="tensor"))["L0.mlp_in"]
    assert p.weight == WeightQuant(4, 64, False) and p.act.mode == "tensor"


@pytest.mark.parametrize("bad, quoted", [
    ("w9a8", "'w9a8'"), ("w8a3", "'w8a3'"), ("w8x8", "'w8x8'"), ("L99.*=w4", "'L99.*'"),
    ("w8a8;;w4", "stray"), ("=w4", "empty selector"), ("w1", "'w1'"), ("wfpg32", "group size"),
])
def test_grammar_errors_quote_the_offending_part(bad, quoted):
    with pytest.raises(BitswitchError, match=".*") as e:
        resolve(bad, UNITS)
    msg = str(e.value)
    assert quoted in msg and "\n" not in msg


def test_profile_files(tmp_path):
    j = tmp_path / "mixed.json"
    j.write_text(json.dumps({"default": "w8a8", "L*.mlp_in": "w4a8", "L0.*": "fp"}))
    assert specs(str(j)) == specs("w8a8;L*.mlp_in=w4a8;L0.*=fp")
    assert parse_profile(str(j)).name == "mixed"
    y = tmp_path / "p.yaml"
    y.write_text("L*: w6a8\nhead: w8\n")
    assert specs(str(y))["head"] == "w8"
    with pytest.raises(BitswitchError, match="does not exist"):
        parse_profile(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(BitswitchError, match="must map selectors"):
        parse_profile(str(tmp_path / "bad.json"))


# SmolLM2-135M: 30 blocks, hidden 576, MLP 1536 (what mlp_out reads)
SMOL_WIDTHS = {**{f"L{i}.{r}": 576 for i in range(30) for r in ("attn_in", "attn_out", "mlp_in")},
               **{f"L{i}.mlp_out": 1536 for i in range(30)}, "head": 576}


def test_group_sizes_must_divide_every_unit_width_they_apply_to():
    units = list(SMOL_WIDTHS)
    with pytest.raises(BitswitchError) as e:
        resolve("w4g128a8", units, widths=SMOL_WIDTHS)
    msg = str(e.value)
    assert msg.startswith("profile 'w4g128a8': group size 128 does not divide the input width 576 of "
                          "L0.attn_in, L0.attn_out, L0.mlp_in, ... (90 units)")
    assert "1536" not in msg and "such as 32 or 64" in msg and "\n" not in msg
    # the default group size of the quantizer options is named as the flag it comes from
    with pytest.raises(BitswitchError, match=r"--group-size 160 .*576 .* \(90 units\) nor 1536 of .*\(30 units\)"):
        resolve("w4a8", units, QuantOptions(group_size=160), widths=SMOL_WIDTHS)
    # divisors, and groups only where they divide, resolve; without widths nothing is checked
    assert resolve("w4g64a8;L*.mlp_out=w4g128a8", units, widths=SMOL_WIDTHS)["L3.mlp_out"].weight.group_size == 128
    assert resolve("w4g128a8", units)["L0.attn_in"].weight.group_size == 128
    with pytest.raises(BitswitchError, match=r"576 of head \(1 unit\)"):   # the head counts when a rule quantizes it
        resolve("w4g64;head=w8g512", units, widths=SMOL_WIDTHS)


def test_table_round_trips_through_the_grammar():
    t = resolve("w8a8;L*.mlp_in=w4a8;L0.*=fp;head=w8", UNITS)
    assert resolve(table_to_string(t), UNITS) == t


def test_safe_keys():
    assert safe_key("w8a8") == "w8a8"
    k = safe_key("w8a8;L0.*=fp")
    assert "." not in k and k != safe_key("w8a8;L1.*=fp")


def test_tensor_bytes_hand_count():
    # 12 x 64 weight: 4-bit codes 384 B; per channel fp16 scales 24 B; asym zero points 12 B
    assert quantized_tensor_bytes(12, 64, WeightQuant(4, symmetric=False)) == {"codes": 384, "scales": 24, "zeros": 12}
    # 3-bit dense packing rounds up the whole tensor; groups of 16 -> 4 groups a row
    assert quantized_tensor_bytes(12, 64, WeightQuant(3, group_size=16)) == {"codes": 288, "scales": 96, "zeros": 0}
    # 16-bit keeps fp32 scales
    assert quantized_tensor_bytes(2, 8, WeightQuant(16)) == {"codes": 32, "scales": 8, "zeros": 0}


@pytest.mark.parametrize("text", ["w8a8", "fp", "w8a8;L3.mlp_out=w4a8;head=w8",
                                  "w8a8;L*.mlp_*=w4a8;L1.mlp_in=w6a8;L*.mlp_*=w5a8",  # a selector twice
                                  "w4a8;w6g32a8;L0.*=fp"])                             # default twice
def test_profile_to_mapping_reads_back_as_the_same_profile(text, tmp_path):
    mapping = profile_to_mapping(text)
    assert profile_to_mapping(parse_profile(text)) == mapping
    path = tmp_path / "p.json"
    path.write_text(json.dumps(mapping))
    assert resolve(parse_profile(str(path)), UNITS) == resolve(text, UNITS)
    assert profile_to_mapping(str(path)) == mapping


def test_profile_to_mapping_of_the_search_form_and_errors():
    assert profile_to_mapping("w8a8; L3.mlp_out = w4a8") == {"default": "w8a8", "L3.mlp_out": "w4a8"}
    with pytest.raises(BitswitchError, match="w9"):
        profile_to_mapping("w8a8;L0.*=w9")

