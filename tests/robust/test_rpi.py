import pytest
import torch

import bitswitch as bs
from bitswitch.errors import BitswitchError
from bitswitch.robust.rpi import DrawSampler, RPIConfig, use_setting
from bitswitch.switching import unit_modules

PROFILES = ["w8a8", "w4a8", "w6a8"]


def _model(spec="tiny-llama"):
    model, tok = bs.load_model(spec, device="cpu")
    bs.make_switchable(model, keying="profile")
    bs.add_adapters(model, PROFILES, bs.AdapterConfig(r=2))
    for p in model.parameters():   # LoRA B starts at zero: make the adapters matter
        if p.dim() == 2 and p.abs().sum() == 0:
            p.data.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    return model, tok


@pytest.mark.parametrize("granularity", ["batch", "forward", "unit"])
@pytest.mark.parametrize("spec", ["tiny-gpt2", "tiny-llama"])
def test_p0_is_bitwise_the_fixed_first_profile(ids, spec, granularity):
    model, _ = _model(spec)
    with torch.no_grad():
        bs.set_profile(model, "w4a8")
        fixed = [model(ids).logits for _ in range(3)]
        with bs.rpi(model, ["w4a8", "w8a8", "w6a8"], p=0.0, granularity=granularity, seed=3) as h:
            drawn = [model(ids).logits for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(fixed, drawn))
    assert h.history and all(x in (0, (0,) * len(h.history[0]) if granularity == "unit" else 0) for x in h.history)


@pytest.mark.parametrize("granularity", ["forward", "unit"])
def test_same_seed_same_outputs_other_seed_other_draws(ids, granularity):
    model, _ = _model()

    def run(seed):
        with torch.no_grad(), bs.rpi(model, PROFILES, p=0.7, granularity=granularity, seed=seed) as h:
            outs = [model(ids).logits for _ in range(8)]
        return outs, list(h.history)

    a, ha = run(0)
    b, hb = run(0)
    c, hc = run(1)
    assert ha == hb and all(torch.equal(x, y) for x, y in zip(a, b))
    assert ha != hc
    assert len({str(x) for x in ha}) > 1                  # it really switches
    # the outputs follow the draws: a forward at a drawn profile equals that fixed profile's forward
    if granularity == "forward":
        for out, k in zip(a, ha):
            with torch.no_grad(), bs.use_profile(model, PROFILES[k]):
                assert torch.equal(out, model(ids).logits)


def test_batch_granularity_draws_only_without_cache():
    model, tok = _model()
    from bitswitch.evaluate.generate import greedy_generate

    with bs.rpi(model, PROFILES, p=1.0, granularity="batch", seed=0) as h:
        greedy_generate(model, tok, [[5, 6, 7, 8], [9, 10, 11]], max_new_tokens=5, batch_size=1,
                        stop_at_newline=False)
    # two batches -> two draws, however many tokens were decoded
    assert len(h.history) == 2


def test_unit_granularity_mixes_units_and_remove_restores():
    model, _ = _model()
    bs.set_profile(model, "w8a8")
    before = [(m.precision, m.active_adapter) for _, _, m in unit_modules(model)]
    h = bs.rpi(model, PROFILES, p=1.0, granularity="unit", seed=0)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))
    blocks = [m for u, _, m in unit_modules(model) if u.startswith("L")]   # the head stays fp
    specs = {m.precision.spec for m in blocks}
    keys = {m.active_adapter for m in blocks}
    assert len(specs) > 1 and keys == set(PROFILES)      # precision and adapter drawn per unit
    for m in blocks:                                       # each unit's adapter matches its precision
        assert m.active_adapter == {"w8a8": "w8a8", "w4a8": "w4a8", "w6a8": "w6a8"}[m.precision.spec]
    h.remove()
    assert [(m.precision, m.active_adapter) for _, _, m in unit_modules(model)] == before


def test_bad_config_and_double_install_are_one_line_errors():
    model, _ = _model()
    with pytest.raises(BitswitchError, match="outside"):
        bs.rpi(model, PROFILES, p=1.5)
    with pytest.raises(BitswitchError, match="granularity"):
        bs.rpi(model, PROFILES, granularity="layer")
    with pytest.raises(BitswitchError, match="w9a8"):
        bs.rpi(model, ["w9a8"])
    with bs.rpi(model, PROFILES):
        with pytest.raises(BitswitchError, match="already"):
            bs.rpi(model, PROFILES)


def test_draw_sampler_is_seeded_and_respects_p0():
    model, _ = _model()
    cfg = RPIConfig(tuple(PROFILES), 0.5, "forward", 0)
    a = DrawSampler(model, cfg, eot=6, seed=2).sample()
    assert a == DrawSampler(model, cfg, eot=6, seed=2).sample() and len(a) == 6
    assert DrawSampler(model, RPIConfig(tuple(PROFILES), 0.0), eot=6).sample() == [("profile", "w8a8")]
    assert DrawSampler(model, "w4a8", eot=6).sample() == [("profile", "w4a8")]
    with use_setting(model, cfg) as h:
        assert h is not None and h.current == "w8a8"


def _runs_at(model) -> dict:
    """What every unit actually runs at: (spec, adapter, observer key) of its modules."""
    out = {}
    for u, _, m in unit_modules(model):
        out.setdefault(u, set()).add(("fp" if m.precision is None else m.precision.spec, m.active_adapter,
                                      m.observer_key))
    return out


def _recorded(model) -> dict:
    """What the switch state says every unit runs at (the head has no adapter: roles exclude it)."""
    st = model.bitswitch
    out = {}
    for u, _, m in unit_modules(model):
        key = st.unit_profiles[u].key
        out.setdefault(u, set()).add((st.table[u].spec, key if key in m.adapters else None, key))
    return out


@pytest.mark.parametrize("granularity", ["forward", "unit"])
def test_switch_state_names_what_the_units_run_at_after_every_draw(ids, granularity):
    model, _ = _model()
    bs.set_profile(model, "w8a8")
    mixes = set()
    with torch.no_grad(), bs.rpi(model, PROFILES, p=1.0, granularity=granularity, seed=0) as h:
        for _ in range(5):
            model(ids)
            st = model.bitswitch
            assert _runs_at(model) == _recorded(model)
            assert bs.resolve(st.profile, st.units, st.options) == st.table   # the recorded profile spells it
            if granularity == "forward":
                assert st.profile.name == h.current
            mixes.add(len({p.name for p in st.unit_profiles.values()}))
        sampler = DrawSampler(model, RPIConfig(tuple(PROFILES), 0.5, granularity), eot=1, seed=4)
        with h.paused():
            sampler.apply(sampler.sample()[0])
            assert _runs_at(model) == _recorded(model)
    if granularity == "unit":
        assert max(mixes) > 1          # a real per-unit mix was drawn and recorded
    assert model.bitswitch.profile.name == "w8a8" and _runs_at(model) == _recorded(model)


def test_use_setting_restores_a_per_unit_mix_exactly():
    model, _ = _model()
    h = bs.rpi(model, PROFILES, p=1.0, granularity="unit", seed=0)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))
    h._hook.remove()                  # keep the mix, stop drawing
    before = _runs_at(model)
    with use_setting(model, "w4a8") as none:
        assert none is None and model.bitswitch.profile.name == "w4a8"
    assert _runs_at(model) == before == _recorded(model)
