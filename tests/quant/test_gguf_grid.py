"""The gguf grid: bitswitch's fake quantization equals llama.cpp's block formats (gguf-py's numpy
reference, ``gguf.quants``) bit for bit, for every format, on random and adversarial weights."""

import pytest
import torch

import bitswitch as bs
from bitswitch.commands.args import quant_options
from bitswitch.cli import build_parser
from bitswitch.errors import BitswitchError
from bitswitch.models import tiny_model
from bitswitch.profiles import QuantOptions, quantized_tensor_bytes, resolve
from bitswitch.quant.config import WeightQuant
from bitswitch.quant.functional import dequantize_weight, fake_quantize_weight, quantize_weight
from bitswitch.quant.gguf_grid import TYPES, quantize_blocks
from bitswitch.switching import unit_modules

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize, quantize  # noqa: E402

FORMATS = sorted(TYPES.items(), key=lambda kv: kv[1])  # ((bits, symmetric), name)
IDS = [name for _, name in FORMATS]
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24, "Q8_0": 34}


def reference(w: torch.Tensor, name: str) -> torch.Tensor:
    """gguf-py's quantize then dequantize, float32 (out, in)."""
    qt = gguf.GGMLQuantizationType[name]
    return torch.from_numpy(dequantize(quantize(w.numpy(), qt), qt).copy())


def assert_bitwise(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal bit patterns (so -0.0 != 0.0 and NaNs compare by payload)."""
    assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape
    diff = (a.view(torch.int32) != b.view(torch.int32)).sum().item()
    assert diff == 0, f"{diff} of {a.numel()} weights differ"


def cfg(bits: int, symmetric: bool) -> WeightQuant:
    return WeightQuant(bits, 32, symmetric, grid="gguf")


def adversarial() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    halves = torch.arange(-127, 128, dtype=torch.float32)[:96] + 0.5          # x * id lands on k + 0.5
    w = {
        "normal": torch.randn(96, 256, generator=g),
        "uniform": torch.rand(64, 128, generator=g) * 2 - 1,
        "heavy-tailed": torch.randn(64, 128, generator=g) ** 3,
        "bf16 values": torch.randn(64, 128, generator=g).bfloat16().float(),
        "all-zero blocks": torch.zeros(8, 64),
        "negative zeros": torch.full((8, 64), -0.0),
        "mixed zeros": torch.zeros(8, 64).index_fill_(1, torch.arange(0, 64, 2), -0.0),
        "tiny (fp16 d subnormal)": torch.randn(32, 64, generator=g) * 1e-6,
        "tinier (fp16 d flushes to 0)": torch.randn(32, 64, generator=g) * 1e-10,
        "large": torch.randn(32, 64, generator=g) * 1e3,
        "ties at .5": halves.reshape(3, 32).repeat(4, 1),
        "integers": torch.randint(-16, 17, (64, 128), generator=g).float(),
    }
    mm = torch.zeros(8, 64)          # max negative vs positive of equal magnitude: the first one wins
    mm[0::2, 3], mm[0::2, 9] = 1.0, -1.0
    mm[1::2, 3], mm[1::2, 9] = -1.0, 1.0
    mm[:, 40], mm[:, 33] = 2.0, -2.0
    w["max negative vs positive"] = mm + torch.linspace(-0.5, 0.5, 64)
    return w


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
@pytest.mark.parametrize("case", list(adversarial()))
def test_fake_quantization_is_llama_cpp_bit_for_bit(fmt, case):
    (bits, symmetric), name = fmt
    w = adversarial()[case]
    assert_bitwise(fake_quantize_weight(w, cfg(bits, symmetric)), reference(w, name))


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
def test_codes_path_and_out_buffer_match(fmt):
    (bits, symmetric), name = fmt
    w = torch.randn(48, 96, generator=torch.Generator().manual_seed(1))
    c = cfg(bits, symmetric)
    codes, d, m = quantize_weight(w, c)
    assert (m is None) == symmetric and d.shape == (48, 3)
    stored = codes.to(torch.int8 if symmetric else torch.uint8)            # QuantLinear's 1-byte cache
    buf = torch.empty(48, 96)
    out = dequantize_weight(stored, d, m, c, out=buf)
    assert out.data_ptr() == buf.data_ptr()
    assert_bitwise(out, reference(w, name))
    assert torch.equal(d, d.half().float())                                # scales are fp16 values
    levels = 2**bits - 1
    lo, hi = (-(levels + 1) // 2, levels // 2) if symmetric else (0, levels)
    if bits == 8:
        lo = -127
    assert lo <= codes.min().item() and codes.max().item() <= hi


def test_rounding_quirks_are_llama_cpps():
    """Ties round away from zero (Q8_0's roundf), truncation after +h+0.5 (Q4_0), and the signed max."""
    halves = (torch.arange(32, dtype=torch.float32) - 16 + 0.5)
    halves[0] = -127.0                                 # amax 127: d = 1, so x * id = x exactly
    q8, d8, _ = quantize_blocks(halves.reshape(1, 32), 8, True)
    assert d8.item() == 1.0
    expect = [-127] + [int(x + (0.5 if x > 0 else -0.5)) for x in halves[1:].tolist()]   # away from 0
    assert q8[0].tolist() == expect and q8[0, 1].item() == -15 and q8[0, 31].item() == 16
    # 0.49999997 is below one half: roundf gives 0, floor(x + 0.5) would give 1
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 1] = 127.0, 0.49999997
    assert quantize_blocks(x, 8, True)[0][0, 1].item() == 0
    # Q4_0: max is the value of largest magnitude *with its sign*; d = max / -8; first of equal magnitudes
    b = torch.zeros(2, 32)
    b[0, 4], b[0, 7] = -8.0, 8.0
    b[1, 4], b[1, 7] = 8.0, -8.0
    q4, d4, _ = quantize_blocks(b, 4, True)
    assert d4[:, 0].tolist() == [1.0, -1.0]
    assert q4[0, 4].item() == -8 and q4[0, 7].item() == 7    # +8 is one step beyond the grid: clipped to 7
    assert fake_quantize_weight(b, cfg(4, True))[0, 7].item() == 7.0


def test_model_units_run_the_llama_cpp_grid():
    """Through make_switchable / set_profile: every unit's quantized weight (inference codes cache and
    the autograd float cache) is gguf-py's dequantization of its float weight."""
    for symmetric, bits, name in ((True, 4, "Q4_0"), (False, 5, "Q5_1"), (True, 8, "Q8_0")):
        model, _ = bs.load_model("tiny-llama", device="cpu")
        model.requires_grad_(False)                  # LoRA training: the base is frozen, its weights cached
        bs.make_switchable(model, QuantOptions(weight_symmetric=symmetric, weight_grid="gguf"))
        bs.set_profile(model, f"w{bits}a8;head=w{bits}")
        for _, _, mod in unit_modules(model):
            assert mod.precision.weight == cfg(bits, symmetric)
            ref = reference(mod.weight_out_in().detach(), name)
            with torch.no_grad():
                assert_bitwise(mod.quantized_weight(mod.precision.weight).clone(), ref)
            with torch.enable_grad():
                assert_bitwise(mod.quantized_weight(mod.precision.weight).detach(), ref)


def test_options_force_blocks_of_32_and_refuse_other_widths():
    o = QuantOptions(weight_grid="gguf")
    assert o.precision(4, None, 8).weight == WeightQuant(4, 32, True, grid="gguf")
    assert o.precision(8, 32, None).weight == WeightQuant(8, 32, True, grid="gguf")
    units = ["L0.attn_in", "L0.mlp_out"]
    for bad, match in (("w3a8", "no GGUF type"), ("w16", "no GGUF type"), ("w4g64a8", "blocks of 32")):
        with pytest.raises(BitswitchError, match=match) as err:
            resolve(bad, units, o)
        assert "\n" not in str(err.value)
    with pytest.raises(BitswitchError, match="blocks of 32 input columns"):
        QuantOptions(weight_grid="gguf", group_size=64)
    with pytest.raises(BitswitchError, match="log"):
        QuantOptions(weight_grid="gguf", method="log")
    with pytest.raises(ValueError, match="no GGUF type"):
        WeightQuant(6, 32, grid="gguf")


def test_input_width_not_a_multiple_of_32_names_the_unit():
    model, _ = tiny_model("tiny-llama", hidden=48)             # every unit but mlp_out reads 48 columns
    bs.make_switchable(model, QuantOptions(weight_grid="gguf"))
    with pytest.raises(BitswitchError, match=r"gguf weight grid .* 48 of L0\.attn_in") as err:
        bs.set_profile(model, "w4a8")
    assert "\n" not in str(err.value)
    bs.set_profile(model, "fp;L*.mlp_out=w4")                   # 96 columns: fine


def test_accounting_counts_llama_cpp_block_bytes():
    for (bits, symmetric), name in FORMATS:
        got = sum(quantized_tensor_bytes(64, 128, cfg(bits, symmetric)).values())
        assert got == 64 * 128 // 32 * BLOCK_BYTES[name]
        qt = gguf.GGMLQuantizationType[name]
        assert quantize(torch.randn(64, 128).numpy(), qt).nbytes == got


def test_cli_flag():
    a = build_parser().parse_args(["eval", "--model", "tiny-llama", "--task", "wikitext", "--out", "o",
                                   "--profiles", "w4a8", "--weight-grid", "gguf",
                                   "--weight-asym"])
    assert quant_options(a) == QuantOptions(weight_symmetric=False, weight_grid="gguf")


def test_a8_on_the_gguf_grid_is_llama_cpps_q8_0_activation_blocks():
    from bitswitch.quant.config import ActQuant
    from bitswitch.quant.functional import fake_quantize_act

    o = QuantOptions(weight_grid="gguf")
    act = o.precision(4, None, 8).act
    assert act == ActQuant(8, "q8_0", True)
    assert o.precision(4, None, 6).act.mode == "token"                 # other widths keep bitswitch's modes
    assert QuantOptions(weight_grid="gguf", act_mode="tensor").precision(4, None, 8).act.mode == "tensor"
    x = torch.randn(3, 5, 96, generator=torch.Generator().manual_seed(2)) * 4
    x[0, 0, :32] = 0.0                                                   # an all-zero block
    ref = reference(x.reshape(15, 96), "Q8_0").reshape(x.shape)
    assert_bitwise(fake_quantize_act(x, act), ref)
    xg = x.clone().requires_grad_(True)
    y = fake_quantize_act(xg, act)
    assert_bitwise(y.detach(), ref)
    y.backward(torch.arange(x.numel(), dtype=torch.float32).reshape(x.shape))
    assert torch.equal(xg.grad, torch.arange(x.numel(), dtype=torch.float32).reshape(x.shape))   # straight through
    with pytest.raises(ValueError, match="multiple of 32"):
        fake_quantize_act(torch.randn(2, 48), act)
    with pytest.raises(ValueError, match="a8 only"):
        ActQuant(4, "q8_0", True)
