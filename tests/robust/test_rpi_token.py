"""RPI at ``token`` granularity: a random width per unit and per token, inside one forward."""

import pytest
import torch

from bitswitch.models import tiny_model
from bitswitch.robust.rpi import DrawSampler, RPIConfig, rpi
from bitswitch.switching import make_switchable, set_profile, state


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2"])
def model(request):
    m, _ = tiny_model(request.param)
    return make_switchable(m.eval())


def run(model, ids):
    with torch.inference_mode():
        return model(ids).logits


IDS = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))


def test_p0_is_the_first_profile_bitwise(model):
    set_profile(model, "w4g32")
    want = run(model, IDS)
    set_profile(model, "fp")
    with rpi(model, ["w4g32", "w8"], p=0.0, granularity="token"):
        assert torch.equal(run(model, IDS), want)
    assert state(model).profile.name == "fp"


def test_draws_differ_per_token_and_repeat_per_seed(model):
    with rpi(model, ["w4g32", "w3g32"], p=1.0, granularity="token", seed=3) as h:
        a = run(model, IDS)
        b = run(model, IDS)
        h.reseed()
        c = run(model, IDS)
    assert not torch.equal(a, b) and torch.equal(a, c)
    outs = []
    for p in ("w4g32", "w3g32"):
        set_profile(model, p)
        outs.append(run(model, IDS))
    assert not torch.equal(a, outs[0]) and not torch.equal(a, outs[1])   # a per-token mix, neither profile


def test_paused_runs_the_first_profile_and_resumes(model):
    set_profile(model, "w8")
    want = run(model, IDS)
    with rpi(model, ["w8", "w3g32"], p=1.0, granularity="token") as h:
        with h.paused():
            assert torch.equal(run(model, IDS), want)
        assert not torch.equal(run(model, IDS), want)


def test_attack_draws_are_per_unit(model):
    draws = DrawSampler(model, RPIConfig(("w8", "w4g32"), 1.0, "token"), eot=3).sample()
    assert len(draws) == 3 and all(d[0] == "unit" for d in draws)
