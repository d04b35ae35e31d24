"""The arithmetic of a GGUF verification: agreement, paired differences, bits per weight, theoretical sizes, goals."""

import math

import pytest

from bitswitch.verify import stats


def test_agreement_counts_identical_answers():
    assert stats.agreement(["Paris", "1990", "the cat"], ["Paris", "1991", "the cat"]) == 2 / 3
    assert stats.agreement(["a"], ["a"]) == 1.0
    assert stats.agreement(["Paris"], ["paris"]) == 0.0            # character for character, no normalising
    with pytest.raises(ValueError, match="one length"):
        stats.agreement(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="non-empty"):
        stats.agreement([], [])


def test_paired_difference_and_its_standard_error():
    # differences 10, 0, -10, 20: mean 5, sample sd sqrt(500/3), se = sd / 2
    d = stats.paired_difference([60.0, 50.0, 40.0, 100.0], [50.0, 50.0, 50.0, 80.0])
    assert d["mean"] == 5.0 and d["n"] == 4
    assert d["se"] == pytest.approx(math.sqrt(500 / 3) / 2)
    same = stats.paired_difference([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same == {"mean": 0.0, "se": 0.0, "n": 3}
    assert stats.paired_difference([1.0], [0.0])["se"] is None       # one pair has no spread
    with pytest.raises(ValueError):
        stats.paired_difference([1.0], [1.0, 2.0])


def test_relative_difference():
    assert stats.relative_difference(20.2, 20.0) == pytest.approx(0.01)
    assert stats.relative_difference(19.8, 20.0) == pytest.approx(-0.01)
    with pytest.raises(ValueError):
        stats.relative_difference(1.0, 0.0)


def test_bits_per_weight_of_the_block_formats():
    assert {t: stats.bits_per_weight(t) for t in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "F16", "F32")} == \
        {"Q8_0": 8.5, "Q4_0": 4.5, "Q4_1": 5.0, "Q5_0": 5.5, "Q5_1": 6.0, "F16": 16.0, "F32": 32.0}
    assert stats.block_format("Q4_0") == (32, 18)
    with pytest.raises(ValueError, match="unknown GGML type"):
        stats.bits_per_weight("Q3_X")


def test_theoretical_bytes_sums_tensors_at_their_formats():
    # SmolLM2-135M at w4a8 (Q4_0): 30 blocks x 7 matrices, 134,515,008 weights of which 106,168,320 in
    # blocks; the embedding 49152 x 576 F16, 61 norms of 576 F32
    blocks = [("Q4_0", 576 * 576)] * 60 + [("Q4_0", 576 * 192)] * 60 + [("Q4_0", 576 * 1536)] * 90
    tensors = blocks + [("F16", 49152 * 576)] + [("F32", 576)] * 61
    out = stats.theoretical_bytes(tensors)
    q_weights = 60 * 576 * 576 + 60 * 576 * 192 + 90 * 576 * 1536
    assert out["quantized_weights"] == q_weights
    assert out["by_type"]["Q4_0"] == {"tensors": 210, "weights": q_weights, "bits_per_weight": 4.5,
                                      "bytes": q_weights // 32 * 18}
    assert out["by_type"]["F16"]["bytes"] == 49152 * 576 * 2 and out["by_type"]["F32"]["bytes"] == 61 * 576 * 4
    assert out["bytes"] == q_weights // 32 * 18 + 49152 * 576 * 2 + 61 * 576 * 4
    assert out["quantized_bits_per_weight"] == 4.5
    mixed = stats.theoretical_bytes([("Q8_0", 64), ("Q4_0", 64)])
    assert mixed["bytes"] == 2 * 34 + 2 * 18 and mixed["quantized_bits_per_weight"] == 6.5
    assert stats.theoretical_bytes([("F16", 10)])["quantized_bits_per_weight"] is None
    with pytest.raises(ValueError, match="does not fill blocks of 32"):
        stats.theoretical_bytes([("Q4_0", 48)])


def test_goal_checks():
    checks = stats.goal_checks({"agreement": 0.95, "d_f1": -1.2, "ppl_rel_diff": 0.004})
    assert [c["met"] for c in checks] == ["yes", "NO", "yes"]           # >= 95% holds at equality
    assert [c["value"] for c in checks] == [0.95, -1.2, 0.004]
    assert [c["met"] for c in stats.goal_checks({"agreement": 0.9})] == ["NO", "not measured", "not measured"]
