"""The cyclic schedule with real-valued widths, and norms at lower precision as training noise."""

import json
import math

import pytest

from bitswitch import BitswitchError
from bitswitch.train.config import TrainConfig
from bitswitch.train.schedules import Schedule, cyclic_bits
from bitswitch.train.trainer import Trainer, train

from .test_trainer import _cfg, squad_file  # noqa: F401 - the fixture

UNITS = [f"L{i}.{r}" for i in range(3) for r in ("attn_in", "attn_out", "mlp_in", "mlp_out")]


def test_continuous_cycle_is_the_unrounded_cosine():
    vals = [cyclic_bits(t, 100, 2, 4, 5, continuous=True) for t in range(100)]
    assert vals[0] == 4 and vals[25] == pytest.approx(4.5) and 4.99 < vals[49] < 5
    assert vals == [4 + 0.5 * (1 + math.cos(math.pi * (t % 50) / 50 + math.pi)) for t in range(100)]
    assert [cyclic_bits(t, 100, 2, 4, 8) for t in (0, 25, 49)] == [4, 6, 8]   # rounded as before


def test_integer_continuous_schedule_equals_the_integer_one_where_the_cosine_is_an_integer():
    cont = Schedule("cyclic", [], 100, cycles=2, b_min=4, b_max=4, continuous=True)
    assert all(cont.at(t) == ["w4a8"] for t in range(100))


def test_per_step_draws_follow_the_real_width():
    s = Schedule("cyclic", [], 400, seed=1, cycles=1, b_min=4.5, b_max=4.5, continuous=True)
    draws = [s.at(t)[0] for t in range(400)]
    assert set(draws) == {"w4a8", "w5a8"}
    assert 0.4 < draws.count("w5a8") / 400 < 0.6
    assert draws == [Schedule("cyclic", [], 400, seed=1, cycles=1, b_min=4.5, b_max=4.5, continuous=True).at(t)[0]
                     for t in range(400)]                       # a pure function of (step, seed)
    assert s.all_profiles() == ["w4a8", "w5a8"]
    assert Schedule("cyclic", [], 10, b_min=4.3, b_max=5.7).all_profiles() == ["w4a8", "w5a8", "w6a8"]


def test_per_unit_draws_give_a_mixed_profile():
    s = Schedule("cyclic", [], 100, seed=2, cycles=1, b_min=4.5, b_max=4.5, continuous=True, fractional="unit",
                 units=UNITS)
    rules = s.at(3)[0].split(";")
    assert [r.split("=")[0] for r in rules] == UNITS
    assert {r.split("=")[1] for r in rules} <= {"w4a8", "w5a8"}


@pytest.mark.parametrize("kw, needle", [
    (dict(b_min=1.5, b_max=4, continuous=True), "b_min"),
    (dict(b_min=4, b_max=9.5), "2..8"),
    (dict(b_min=4, b_max=5, continuous=True, fractional="tensor"), "fractional"),
])
def test_bad_real_widths_are_one_line_errors(kw, needle):
    with pytest.raises(BitswitchError, match=needle) as e:
        Schedule("cyclic", [], 10, **kw)
    assert "\n" not in str(e.value)


def test_config_rejects_unit_draws_with_profile_keying_and_negative_offsets():
    with pytest.raises(BitswitchError, match="keying"):
        TrainConfig(schedule="cyclic", continuous=True, fractional="unit", keying="profile")
    with pytest.raises(BitswitchError, match="norm_offset"):
        TrainConfig(norm_offset=-1)
    assert TrainConfig(schedule="cyclic", b_min=4.5, b_max=6).b_min == 4.5


def test_training_with_real_bits_and_low_precision_norms(tmp_path, squad_file):  # noqa: F811
    cfg = _cfg(tmp_path, squad_file, model="tiny-llama", steps=4, schedule="cyclic", cycles=1, b_min=4.5, b_max=6.5,
               continuous=True, keying="shared", norm_offset=2)
    trainer = Trainer(cfg)
    seen = []
    original = trainer._switch

    def spy(profile):
        original(profile)
        qn = [m for m in trainer.inner.modules() if type(m).__name__ == "QuantNorm"]
        seen.append((profile, {m.norm_bits for m in qn}))
    trainer._switch = spy
    trainer.run()
    assert len(seen) == 4
    for profile, bits in seen:
        assert bits == {int(profile[1]) - 2}          # w5a8 -> norms at 3 bits
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)


def test_norm_offset_zero_leaves_norms_alone(tmp_path, squad_file):  # noqa: F811
    train(_cfg(tmp_path, squad_file, steps=1, profiles=["w8a8"], schedule="fixed"))
    # the saved adapters hold no norm state: evaluation loads them on an unwrapped model
    assert (tmp_path / "run" / "adapters" / "adapters.safetensors").is_file()
