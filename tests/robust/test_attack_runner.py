import math

import pytest

from bitswitch.robust.attack_runner import AttackConfig, rpi_summary


def _cell(*f1s):
    """A replay result with per-question rows (F1 as fractions, as the SQuAD metric gives them)."""
    return {"f1": 100 * sum(f1s) / len(f1s), "rows": [{"id": q, "f1": v} for q, v in zip("abc", f1s)]}


def test_rpi_summary_pairs_questions_for_its_standard_errors():
    cfg = AttackConfig(model="m", data="d", out="o", craft=["w8a8", "w4a8"], rpi=["w8a8", "w4a8"])
    clean = {"w8a8": _cell(1, 1, 0), "w4a8": _cell(1, 0, 0), "rpi": _cell(1, 0, 0)}
    matrix = {"w8a8": {"w8a8": _cell(0, 0, 0), "rpi": _cell(0, 1, 0)},
              "w4a8": {"w4a8": _cell(1, 0, 0), "rpi": _cell(1, 0, 0)},
              "rpi": {"rpi": _cell(1, 1, 0)}}
    s = rpi_summary(clean, matrix, cfg)
    assert s["profiles"] == ["w8a8", "w4a8"]
    # clean: fixed mean per question (100, 50, 0) against RPI (100, 0, 0): differences (0, 50, 0)
    assert s["clean_cost"] == pytest.approx(50 / 3) and s["clean_cost_se"] == pytest.approx(50 / 3)
    # adaptive: RPI (100, 100, 0) against the fixed diagonal's mean (50, 0, 0): (50, 100, 0)
    assert s["recovered_adaptive"] == pytest.approx(50) and s["recovered_adaptive_se"] == pytest.approx(50 / math.sqrt(3))
    # transfer: fixed crafts replayed under RPI, mean (50, 50, 0), against (50, 0, 0): (0, 50, 0)
    assert s["recovered_transfer"] == pytest.approx(50 / 3) and s["recovered_transfer_se"] == pytest.approx(50 / 3)
    # without per-question rows (an old results file) the errors are unknown, not zero
    bare = {k: {"f1": v["f1"]} for k, v in clean.items()}
    assert rpi_summary(bare, matrix, cfg)["clean_cost_se"] is None


def test_config_defaults_and_what_the_adversarial_files_depend_on():
    from bitswitch.cli import build_parser
    from bitswitch.commands.args import config_from_args
    from bitswitch.errors import BitswitchError

    a = build_parser().parse_args(["attack", "--model", "m", "--attack", "hotflip", "--data", "d", "--out", "o",
                                   "--attack-context", "--eval-profiles", "fp", "w4a8"])
    cfg = config_from_args(AttackConfig, a)
    assert (cfg.batch_size, cfg.attacks, cfg.craft, cfg.context) == (16, ["hotflip"], ["fp"], True)
    assert cfg.eval == ["fp", "w4a8"]
    assert AttackConfig(model="m", data="d", out="o").eval == ["fp"]
    with pytest.raises(BitswitchError, match="--data"):
        AttackConfig(model="m", out="o")
    # the attack's own knobs and the replay batch size enter the file and cell hashes where they
    # matter, not the shared part: another column list or batch size reuses the crafted files
    base = AttackConfig(model="m", data="d", out="o").question_settings()
    assert AttackConfig(model="m", data="d", out="o2", eval=["w4a8"], batch_size=2, device="cpu",
                        budget=2).question_settings() == base
    assert "template" in base and "options" in base and "attacks" not in base
    assert AttackConfig(model="m", data="d", out="o", limit=3).question_settings() != base
