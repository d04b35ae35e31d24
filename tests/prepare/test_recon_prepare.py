"""Block-wise reconstruction as a preparation step: learned grids lower every block's error, leave the
floating-point model bit for bit as it was, are saved beside the prepared model with the weights'
sha256 (their scales are their own), attached when it is loaded, and run the same by fake
quantization, export and the runtime."""

import json

import pytest
import torch

from bitswitch.cli import main
from bitswitch.errors import BitswitchError
from bitswitch.export import export_model, load_exported
from bitswitch.loading import load_switchable
from bitswitch.models import tiny_model
from bitswitch.prepare.recon import recon_batches, recon_round
from bitswitch.profiles import QuantOptions
from bitswitch.quant.functional import quantize_weight
from bitswitch.roundings import INDEX, attach_roundings
from bitswitch.runtime import Runtime
from bitswitch.switching import make_switchable, set_profile, unit_modules
from tests.conftest import shared_data

SPECS = ["w3g32", "w2g16"]
TRAIN = str(shared_data("squad-v1.1", "train-subset-v1.1.json"))


def _batches(tok, seqs=4, seq_len=64):
    return recon_batches(tok, TRAIN, seqs, seq_len, 2)


def _reconstructed(spec="tiny-llama", asym=True, epochs=3, loss="channel", init="rtn"):
    model, tok = tiny_model(spec)
    model.eval()
    make_switchable(model, QuantOptions(weight_symmetric=not asym))
    record = recon_round(model, SPECS, _batches(tok), epochs=epochs, lr=1e-3, scale_lr=1e-3, loss=loss,
                         init=init, progress=False)
    return model, tok, record


@pytest.mark.parametrize("loss, init", [("channel", "rtn"), ("mse", "rtn"), ("mse", "search"), ("token", "search")])
def test_every_block_reconstructs_with_less_error_than_round_to_nearest(loss, init):
    """(With ``init=search`` the starting loss is the clip-searched grid's.)"""
    _, _, record = _reconstructed(loss=loss, init=init)
    assert record["loss"] == loss and record["init"] == init
    assert set(record["block_loss"]) == {"w3g32-asym", "w2g16-asym"}
    for per_block in record["block_loss"].values():
        assert [b["block"] for b in per_block] == [0, 1]
        assert all(b["loss_learned"] < b["loss_start"] and b["kept"] == "learned" for b in per_block)


def test_fp_weights_and_logits_stay_bit_for_bit_and_only_the_profiles_quantizers_are_learned():
    model, tok = tiny_model("tiny-llama")
    model.eval()
    make_switchable(model, QuantOptions(weight_symmetric=False))
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    set_profile(model, "fp")
    with torch.no_grad():
        fp = model(ids).logits
    recon_round(model, SPECS, _batches(tok), epochs=1, lr=1e-3, scale_lr=1e-3, progress=False)
    assert all(torch.equal(p, weights[n]) and p.requires_grad == flags[n] for n, p in model.named_parameters())
    set_profile(model, "fp")
    with torch.no_grad():
        assert torch.equal(model(ids).logits, fp)
    for unit, _, mod in unit_modules(model):
        if unit == "head":
            assert not mod.roundings
            continue
        assert {(c.bits, c.group_size, c.symmetric) for c in mod.roundings} == {(3, 32, False), (2, 16, False)}
        for cfg, (codes, scale, zero) in mod.roundings.items():
            rtn = quantize_weight(mod.weight_out_in().detach(), cfg)
            assert not (torch.equal(scale, rtn[1]) and torch.equal(codes, rtn[0]))   # learned, not RTN


def test_a_block_that_training_makes_worse_keeps_its_starting_grid():
    """A learning rate far too large raises every block's calibration loss: each block then keeps the
    starting grid, which from ``init=rtn`` is round to nearest's codes and scales bit for bit."""
    model, tok = tiny_model("tiny-llama")
    model.eval()
    make_switchable(model, QuantOptions(weight_symmetric=False))
    record = recon_round(model, ["w3g32"], _batches(tok), epochs=1, lr=10.0, scale_lr=10.0, init="rtn",
                         progress=False)
    blocks = record["block_loss"]["w3g32-asym"]
    assert all(b["kept"] == "start" and b["loss_learned"] >= b["loss_start"] for b in blocks)
    for unit, _, mod in unit_modules(model):
        for cfg, (codes, scale, zero) in mod.roundings.items():
            rtn = quantize_weight(mod.weight_out_in().detach(), cfg)
            assert torch.equal(codes, rtn[0].to(torch.int32)) and torch.equal(scale, rtn[1]) and torch.equal(zero, rtn[2])


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gpt2"])
def test_prepare_then_fake_quant_runtime_and_export_agree(spec, tmp_path):
    out = tmp_path / "prep"
    assert main(["prepare", "--model", spec, "--device", "cpu", "--recon", *SPECS, "--weight-asym",
                 "--calib-data", TRAIN, "--recon-seqs", "4", "--recon-seq-len", "64", "--recon-batch-size", "2",
                 "--recon-epochs", "2", "--recon-lr", "1e-3", "--recon-scale-lr", "1e-3", "--out", str(out)]) == 0
    index = json.loads((out / INDEX).read_text())
    assert {e["weight"]["bits"] for e in index["entries"]} == {3, 2}
    assert all(len(e["weight_sha256"]) == 64 for e in index["entries"])
    model, tok = load_switchable(str(out), device="cpu", options=QuantOptions(weight_symmetric=False))
    assert all(len(m.roundings) == (0 if u == "head" else 2) for u, _, m in unit_modules(model))
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    for profile in SPECS:
        set_profile(model, profile)
        with torch.no_grad():
            want = model(ids).logits
        rt = Runtime.load(str(out), profiles=[profile], kernel="reference", device="cpu",
                          options=QuantOptions(weight_symmetric=False))
        assert (rt.logits(ids, torch.ones_like(ids)) - want).abs().max() < 1e-4
        export_model(model, tok, profile, tmp_path / f"exp-{profile}", unquantized_dtype="fp32")
        exported, _ = load_exported(tmp_path / f"exp-{profile}", int8_kernel=False)
        with torch.no_grad():
            assert (exported(ids).logits - want).abs().max() < 1e-4


def test_learned_grids_of_other_weights_are_refused(tmp_path):
    out = tmp_path / "prep"
    assert main(["prepare", "--model", "tiny-llama", "--device", "cpu", "--recon", "w3g32", "--calib-data", TRAIN,
                 "--recon-seqs", "2", "--recon-seq-len", "32", "--recon-batch-size", "2", "--recon-epochs", "1",
                 "--recon-lr", "1e-3", "--recon-scale-lr", "1e-3", "--out", str(out)]) == 0
    other, _ = tiny_model("tiny-llama", seed=1)
    make_switchable(other, QuantOptions())
    with pytest.raises(BitswitchError, match="other weights"):
        attach_roundings(other, out)


@pytest.mark.parametrize("argv, needle", [
    (["--recon", "w3g32"], "--calib-data"),
    (["--recon", "w3g32", "--calib-data", str(shared_data("squad-v1.1", "dev-part1-v1.1.json"))], "evaluation split"),
    (["--recon", "w3g32", "--calib-data", TRAIN, "--recon-seqs", "3", "--recon-batch-size", "2"], "multiple"),
    (["--recon", "w3g32", "--calib-data", TRAIN, "--recon-loss", "l1"], "--recon-loss"),
    (["--recon", "w3g32", "--calib-data", TRAIN, "--recon-init", "clip"], "--recon-init"),
    (["--recon", "w3g32", "--calib-data", TRAIN, "--recon-epochs", "0", "--recon-seqs", "2", "--recon-seq-len", "16",
      "--recon-batch-size", "2"], "--recon-epochs"),
])
def test_bad_reconstruction_input_is_a_one_line_cli_error(argv, needle, capsys, tmp_path):
    assert main(["prepare", "--model", "tiny-llama", "--device", "cpu", *argv, "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


@pytest.mark.parametrize("grid", ["nested", "gguf"])
def test_grids_with_fixed_codes_take_no_learned_grid(grid):
    from bitswitch.prepare.recon import recon_quantizers

    model, _ = tiny_model("tiny-llama")
    make_switchable(model, QuantOptions(weight_grid=grid))
    with pytest.raises(BitswitchError, match="independent grid"):
        recon_quantizers(model, ["w4g32"])


def test_channel_loss_weighs_each_channel_by_its_fp_mean_square():
    from bitswitch.prepare.recon import channel_weights

    g = torch.Generator().manual_seed(0)
    targets = [torch.randn(2, 5, 4, generator=g) for _ in range(3)]
    targets[1][..., 2] += 1e4                      # a channel of huge magnitude, as SmolLM2's residual stream has
    w = channel_weights(targets, "channel")
    flat = torch.cat([t.reshape(-1, 4) for t in targets])
    assert torch.allclose(w, 1 / flat.pow(2).mean(0), rtol=1e-5)
    assert channel_weights(targets, "mse") is None


def test_token_loss_is_each_tokens_error_relative_to_its_fp_mean_square():
    """A token whose fp output is 1e4 times larger (SmolLM2's attention sink) weighs no more than any
    other; the same error everywhere gives mse x mean(1 / ms_t)."""
    from bitswitch.prepare.recon import output_loss

    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 5, 4, generator=g)
    target[:, 0, 1] += 1e4
    err = torch.randn(2, 5, 4, generator=g)
    ms = target.pow(2).mean(-1, keepdim=True)
    assert torch.allclose(output_loss(target + err, target, "token"), (err.pow(2) / ms).mean(), rtol=1e-5)
    assert float(output_loss(target + err, target, "mse")) == pytest.approx(float(err.pow(2).mean()), rel=1e-5)
    scaled = target.clone()
    scaled[:, 0] *= 10          # one token 10x larger in the fp output and in its error: the same token loss
    assert torch.allclose(output_loss(scaled + torch.where(torch.arange(5)[None, :, None] == 0, err * 10, err), scaled,
                                      "token"), output_loss(target + err, target, "token"), rtol=1e-5)


def test_after_gptq_at_the_same_width_the_learned_grid_is_the_one_kept(tmp_path):
    """gptq runs first, recon second: where both round a module at w3g32, the later (learned) rounding
    is saved (GPTQ keeps round to nearest's scales; a learned grid moves them)."""
    out = tmp_path / "prep"
    assert main(["prepare", "--model", "tiny-llama", "--device", "cpu", "--gptq", "w3g32", "w4", "--recon", "w3g32",
                 "--calib-data", TRAIN, "--calib-questions", "2", "--calib-max-length", "256", "--recon-seqs", "2",
                 "--recon-seq-len", "32", "--recon-batch-size", "2", "--recon-epochs", "2", "--recon-lr", "1e-3",
                 "--recon-scale-lr", "1e-3", "--out", str(out)]) == 0
    model, _ = load_switchable(str(out), device="cpu")
    moved = {3: 0, 4: 0}
    for unit, _, mod in unit_modules(model):
        for cfg, (_, scale, _) in mod.roundings.items():
            moved[cfg.bits] += int(not torch.equal(scale, quantize_weight(mod.weight_out_in().detach(), cfg)[1]))
    assert moved[3] > 0 and moved[4] == 0
    steps = json.loads((out / INDEX).read_text())["record"]["steps"]
    assert [s["method"] for s in steps] == ["gptq", "recon"]
