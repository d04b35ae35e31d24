"""GPTQ as a preparation step: roundings computed on calibration prompts, saved beside the prepared
model, attached when it is loaded, and run the same by fake quantization, export and the runtime."""

import json

import pytest
import torch

from bitswitch.cli import main
from bitswitch.errors import BitswitchError
from bitswitch.export import export_model, load_exported
from bitswitch.loading import load_switchable
from bitswitch.models import tiny_model
from bitswitch.prepare.gptq import calibration_ids, gptq_round
from bitswitch.quant.functional import quantize_weight
from bitswitch.roundings import INDEX, TENSORS, attach_roundings, collect_roundings, read_roundings, save_roundings
from bitswitch.runtime import Runtime
from bitswitch.switching import make_switchable, set_profile, unit_modules
from tests.conftest import shared_data

SPECS = ["w4", "w3g32"]


def _calib(tok, n=6):
    return calibration_ids(tok, str(shared_data("squad-v1.1", "train-subset-v1.1.json")), n, max_length=256)


def _rounded(spec="tiny-llama", sequential=True, asym=False):
    from bitswitch.profiles import QuantOptions

    model, tok = tiny_model(spec)
    model.eval()
    make_switchable(model, QuantOptions(weight_symmetric=not asym))
    gptq_round(model, SPECS, _calib(tok), sequential=sequential, progress=False)
    return model, tok


@pytest.mark.parametrize("sequential", [False, True])
def test_every_unit_module_gets_a_rounding_per_quantizer_on_the_rtn_grid(sequential):
    model, _ = _rounded(sequential=sequential)
    moved = 0
    for unit, _, mod in unit_modules(model):
        if unit == "head":           # the LM head keeps round-to-nearest
            assert not mod.roundings
            continue
        assert len(mod.roundings) == 2
        for cfg, (codes, scale, _) in mod.roundings.items():
            rtn = quantize_weight(mod.weight_out_in().detach(), cfg)
            assert torch.equal(scale, rtn[1])
            moved += int((codes != rtn[0]).sum())
    assert moved > 0


def test_roundings_survive_save_and_load_bit_for_bit(tmp_path):
    model, _ = _rounded(asym=True)
    saved = collect_roundings(model)
    save_roundings(saved, tmp_path)
    back = read_roundings(tmp_path)
    assert back.keys() == saved.keys()
    for module, per_cfg in saved.items():
        assert back[module].keys() == per_cfg.keys()
        for cfg, (codes, scale, zero) in per_cfg.items():
            c, s, z, sha = back[module][cfg]
            assert sha is None   # no fingerprints given
            assert torch.equal(c, codes) and torch.equal(s, scale) and torch.equal(z, zero)
    fresh, _ = tiny_model("tiny-llama")
    from bitswitch.profiles import QuantOptions

    make_switchable(fresh, QuantOptions(weight_symmetric=False))
    assert attach_roundings(fresh, tmp_path) == sum(len(v) for v in saved.values())


def test_a_corrupt_or_mismatched_file_is_one_line_error(tmp_path):
    model, _ = _rounded()
    save_roundings(collect_roundings(model), tmp_path)
    data = bytearray((tmp_path / TENSORS).read_bytes())
    data[-5] ^= 0xFF
    (tmp_path / TENSORS).write_bytes(bytes(data))
    with pytest.raises(BitswitchError, match="corrupt") as err:
        read_roundings(tmp_path)
    assert "\n" not in str(err.value)
    save_roundings(collect_roundings(model), tmp_path)
    other, _ = tiny_model("tiny-llama", seed=1)          # same shapes, other weights
    make_switchable(other)
    with pytest.raises(BitswitchError, match="other weights"):
        attach_roundings(other, tmp_path)
    (tmp_path / INDEX).write_text("{not json")
    with pytest.raises(BitswitchError, match="malformed"):
        read_roundings(tmp_path)


def test_evaluation_text_is_refused_for_calibration():
    _, tok = tiny_model("tiny-llama")
    with pytest.raises(BitswitchError, match="evaluation split"):
        calibration_ids(tok, str(shared_data("squad-v1.1", "dev-part1-v1.1.json")), 4)


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gpt2"])
def test_prepare_then_fake_quant_runtime_and_export_agree(spec, tmp_path):
    calib = str(shared_data("squad-v1.1", "train-subset-v1.1.json"))
    out = tmp_path / "prep"
    assert main(["prepare", "--model", spec, "--device", "cpu", "--rotate", "hadamard", "--gptq", *SPECS,
                 "--calib-data", calib, "--calib-questions", "4", "--calib-max-length", "128",
                 "--out", str(out)]) == 0
    index = json.loads((out / INDEX).read_text())
    assert {e["weight"]["bits"] for e in index["entries"]} == {4, 3}
    model, tok = load_switchable(str(out), device="cpu")
    assert all(len(m.roundings) == (0 if u == "head" else 2) for u, _, m in unit_modules(model))
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    for profile in SPECS:
        set_profile(model, profile)
        with torch.no_grad():
            want = model(ids).logits
        rt = Runtime.load(str(out), profiles=[profile], kernel="reference", device="cpu")
        assert (rt.logits(ids, torch.ones_like(ids)) - want).abs().max() < 1e-4
        export_model(model, tok, profile, tmp_path / f"exp-{profile}", unquantized_dtype="fp32")
        exported, _ = load_exported(tmp_path / f"exp-{profile}", int8_kernel=False)
        with torch.no_grad():
            assert (exported(ids).logits - want).abs().max() < 1e-4
    # the roundings are what runs: without them (round to nearest) the logits differ
    plain, _ = load_switchable(str(out), device="cpu")
    for _, _, m in unit_modules(plain):
        m.roundings.clear()
        m.clear_cache()
    set_profile(plain, "w3g32")
    set_profile(model, "w3g32")
    with torch.no_grad():
        assert not torch.allclose(plain(ids).logits, model(ids).logits)


def test_gptq_without_calibration_data_is_a_one_line_cli_error(capsys, tmp_path):
    assert main(["prepare", "--model", "tiny-llama", "--gptq", "w4", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--calib-data" in err and "\n" not in err


def test_max_blocks_rounds_only_the_first_blocks():
    from bitswitch.profiles import QuantOptions

    model, tok = tiny_model("tiny-llama")
    model.eval()
    make_switchable(model, QuantOptions())
    gptq_round(model, SPECS, _calib(tok, 2), sequential=False, progress=False, max_blocks=1)
    rounded = {unit.split(".")[0] for unit, _, mod in unit_modules(model) if mod.roundings}
    assert rounded == {"L0"}
