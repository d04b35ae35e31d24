"""Controllers: the threshold fit meets its budget on calibration data, one allowed width is the
static profile bitwise, routing per token is exact, budgets outside the widths are one-line errors,
and the request controller's error diffusion."""

import pytest
import torch

from bitswitch.accounting import profile_report
from bitswitch.dynamic import FakeQuantEngine, RequestController, ThresholdController, Usage, WidthSet, routed
from bitswitch.errors import BitswitchError
from bitswitch.runtime import Runtime
from bitswitch.switching import set_profile, state

from .conftest import switchable


def batches(n=6, t=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (1, t), generator=g) for _ in range(n)]


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2"])
def model(request):
    return switchable(request.param)[0]


def logits(model, ids):
    with torch.inference_mode():
        return model(ids).logits


@pytest.mark.parametrize("widths,budget", [("w4g32,w8", 4.5), ("w4g32,w8", 5.5), ("w8,w4g32", 7.0),
                                           ("w3g32,w4g32,w8", 3.5), ("w3g32,w4g32,w8", 5.0)])
def test_threshold_fit_meets_budget_on_calibration_data(model, widths, budget):
    ws = WidthSet.from_model(model, widths)
    ctl = ThresholdController.from_model(model, ws)
    got = ctl.fit(model, batches(), budget, tol=0.02, max_iter=12)
    assert abs(got - budget) <= 0.05
    assert ctl.measure(model, batches(), "bits") == got          # deterministic
    usage = Usage(ws)
    with ctl.install(model, usage):
        logits(model, batches()[0])
    assert 0 < usage.summary()["width_share"][ws.widths[0]] < 1   # a real mix, per token


def test_threshold_fit_by_bytes(model):
    ws = WidthSet.from_model(model, "w4g32,w8")
    lo, hi = ws.cost_range("bytes")
    budget = lo + 0.3 * (hi - lo)
    got = ThresholdController.from_model(model, ws).fit(model, batches(), budget, by="bytes", tol=0.01 * (hi - lo))
    assert abs(got - budget) <= 0.05 * (hi - lo)


@pytest.mark.parametrize("width", ["w8", "w4g32"])
def test_single_width_is_the_static_profile_bitwise(model, width):
    ws = WidthSet.from_model(model, width)
    ctl = ThresholdController.from_model(model, ws)
    assert ctl.fit(model, batches(2), ws.bits[0]) == pytest.approx(ws.bits[0])
    ids = batches(1, seed=3)[0]
    set_profile(model, width)
    want = logits(model, ids)
    set_profile(model, "fp")
    with ctl.install(model):
        got = logits(model, ids)
    assert torch.equal(got, want)
    assert state(model).profile.name == "fp"    # restored on exit


@pytest.mark.parametrize("index", [0, 1])
def test_all_tokens_routed_to_one_width_is_that_profile_bitwise(model, index):
    ws = WidthSet.from_model(model, "w4g32,w8")
    ids = batches(1, seed=4)[0]
    set_profile(model, ws.widths[index])
    want = logits(model, ids)
    with routed(model, ws, lambda unit, x: torch.full((x.shape[0],), index, dtype=torch.long)):
        assert torch.equal(logits(model, ids), want)


def test_per_token_routing_equals_switching_between_tokens(model):
    """Tokens before s at w8, from s on at w4g32, in one forward == an engine prefilling s tokens at
    w8 and feeding the rest at w4g32 (the cache keeps the earlier tokens' keys)."""
    ws = WidthSet.from_model(model, "w4g32,w8")
    ids, s = batches(1, t=20, seed=5)[0], 12
    pos = torch.arange(ids.shape[1])
    with routed(model, ws, lambda unit, x: (pos < s).long()):       # index 1 = w8 before s, 0 = w4g32 after
        got = logits(model, ids)[0]
    engine = FakeQuantEngine(model, None)
    engine.set_profile("w8")
    head = engine.prefill(ids[0, :s].tolist())
    engine.set_profile("w4g32")
    tail = engine.step(ids[0, s:].tolist())
    set_profile(model, "w8")
    assert torch.allclose(got[:s], logits(model, ids)[0, :s], atol=1e-5)   # earlier tokens: w8 alone
    assert torch.allclose(got[:s], head, atol=1e-5)
    assert torch.allclose(got[s:], tail, atol=1e-5)


@pytest.mark.parametrize("budget", [3.9, 8.1, 16])
def test_budget_outside_the_widths_is_one_line(model, budget):
    ws = WidthSet.from_model(model, "w4g32,w8")
    for make in (lambda: RequestController(ws, budget),
                 lambda: ThresholdController.from_model(model, ws).fit(model, batches(1), budget)):
        with pytest.raises(BitswitchError) as err:
            make()
        assert "\n" not in str(err.value) and "4 .. 8" in str(err.value)


def test_width_set_errors_and_order(model):
    assert WidthSet.from_model(model, "w8, w4g32").widths == ("w4g32", "w8")
    for bad in ("w4,w4g32", "", "w9"):
        with pytest.raises(BitswitchError):
            WidthSet.from_model(model, bad)


def test_usage_matches_static_accounting(model):
    ws = WidthSet.from_model(model, "w4g32,w8")
    for i, w in enumerate(ws.widths):
        usage = Usage(ws)
        usage.new_sequence()
        usage.record_all(i, 10)
        rep = profile_report(model, w)
        assert usage.realized("bits") == pytest.approx(rep["avg_w_bits"])
        assert usage.realized("bytes") == pytest.approx(rep["quantized_bytes"])   # the head stays fp
        assert usage.summary()["sequences"] == {"n": 1, "avg_w_bits": {"min": ws.bits[i], "max": ws.bits[i]},
                                                "bytes_per_token": {"min": rep["quantized_bytes"],
                                                                    "max": rep["quantized_bytes"]}}


def test_width_set_from_runtime_equals_from_model():
    model, tok = switchable("tiny-llama")
    a = WidthSet.from_model(model, "w4g32,w8")
    b = WidthSet.from_runtime(Runtime.from_model(model, tok, ["w4g32", "w8"]), "w4g32,w8")
    assert a == b


def test_request_controller_diffuses_the_budget(model):
    ws = WidthSet.from_model(model, "w4g32,w8")
    ctl = RequestController(ws, 6.0)
    assert [ctl.next_width() for _ in range(6)] == ["w4g32", "w8"] * 3
    ctl = RequestController(ws, 5.0)
    picks = [ctl.next_index() for _ in range(8)]
    assert sum(ws.bits[i] for i in picks) / 8 == 5.0
    assert [RequestController(ws, 4.0).next_width() for _ in range(2)] == ["w4g32"] * 2


def test_request_controller_switches_per_sequence(model):
    ws = WidthSet.from_model(model, "w4g32,w8")
    ctl, usage = RequestController(ws, 6.0), Usage(ws)
    ids = batches(2, t=10)
    set_profile(model, "w4g32")
    want_low = logits(model, ids[0])
    set_profile(model, "w8")
    want_high = logits(model, ids[1])
    with ctl.install(model, usage):
        assert torch.equal(logits(model, ids[0]), want_low)
        assert torch.equal(logits(model, ids[1]), want_high)
    assert [s["avg_w_bits"] for s in usage.per_sequence()] == [4, 8] and usage.realized() == pytest.approx(6.0)


def test_runtime_routing_matches_fake_routing():
    """The same router on the runtime (float32 reference kernel) and on fake quantization: per-token
    mixed prefill logits agree to float rounding; decoding switches whole units (one matmul)."""
    from bitswitch.dynamic import RuntimeEngine, runtime_routed

    model, tok = switchable("tiny-llama")
    rt = Runtime.from_model(model, tok, ["w4g32", "w8"], kernel="reference")
    ws = WidthSet.from_model(model, "w4g32,w8")
    ctl = ThresholdController.from_model(model, ws)
    ctl.fit(model, batches(), 6.0)
    ids = batches(1, seed=7)[0]
    fake_usage, rt_usage = Usage(ws), Usage(ws)
    with ctl.install(model, fake_usage):
        want = logits(model, ids)[0]
    engine = RuntimeEngine(rt)
    with runtime_routed(rt, ws, ctl, rt_usage):
        got = engine.prefill(ids[0].tolist(), ids.shape[1] + 1)
        engine.step([3])
    assert (got - want).abs().max() < 1e-4
    assert rt_usage.tokens == ids.shape[1] + 1
    assert abs(rt_usage.realized() - fake_usage.realized()) < 0.5
    assert rt.profile == "w8"


def test_runtime_routing_all_low_is_the_static_width():
    from bitswitch.dynamic import RuntimeEngine, runtime_routed

    model, tok = switchable("tiny-gpt2")
    rt = Runtime.from_model(model, tok, ["w4g32", "w8"])
    ws = WidthSet.from_runtime(rt, "w4g32,w8")
    engine = RuntimeEngine(rt)
    ids = batches(1, seed=8)[0][0].tolist()
    engine.set_profile("w4g32")
    want = engine.prefill(ids)
    with runtime_routed(rt, ws, lambda unit, x: torch.zeros(x.shape[0], dtype=torch.long)):
        assert torch.equal(engine.prefill(ids), want)
