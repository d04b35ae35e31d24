"""Full-weight switchable QAT (train_base full) and learned clips in training: every width's forward
stays the fake quantization of the new weights on its grid, the trained model is saved as a plain
model directory, resume is exact, clips stay in range, and the memory estimate counts the weights."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import bitswitch as bs
from bitswitch.adapters import load_adapters
from bitswitch.cli import main
from bitswitch.errors import BitswitchError
from bitswitch.models import load_model
from bitswitch.quant.clipping import CLIP_MIN, quantize_weight_clipped
from bitswitch.quant.functional import dequantize_weight, fake_quantize_weight
from bitswitch.switching import set_profile, unit_modules
from bitswitch.train.config import TrainConfig
from bitswitch.train.trainer import Trainer, train
from tests.train.test_trainer import write_squad

PROFILES = ["w8", "w4g32", "w2g32"]


@pytest.fixture(scope="module")
def squad(tmp_path_factory):
    return write_squad(tmp_path_factory.mktemp("data") / "train.json")


def _cfg(out, squad, **kw):
    base = dict(model="tiny-llama", data=squad, steps=4, batch_size=4, lr=1e-2, warmup_steps=1, device="cpu",
                max_length=160, out=str(out), save_every=2, profiles=PROFILES, schedule="all", keying="shared",
                train_base="full", base_lr=1e-2)
    base.update(kw)
    return TrainConfig(**base)


def _unit_check(model, want_weight):
    """Every unit module at every profile: the forward (with and without autograd) equals F.linear of
    ``want_weight(mod, cfg)`` plus the active adapter, bitwise."""
    g = torch.Generator().manual_seed(0)
    for p in PROFILES:
        set_profile(model, p)
        for unit, _, mod in unit_modules(model):
            cfg = mod.precision.weight if mod.precision is not None else None
            if cfg is None:
                continue
            x = torch.randn(3, mod.in_features, generator=g)
            want = F.linear(x, want_weight(mod, cfg), mod.base.bias)
            if mod.active_adapter is not None:
                want = want + mod.adapters[mod.active_adapter](x)
            with torch.no_grad():
                assert torch.equal(mod(x), want), (p, unit)
            assert torch.equal(mod(x).detach(), want), (p, unit)


@pytest.mark.parametrize("grid", ["nested", "independent"])
def test_full_qat_keeps_every_width_on_its_grid(tmp_path, squad, grid):
    trainer = Trainer(_cfg(tmp_path / "run", squad, weight_grid=grid))
    trainer.run()
    model = trainer.inner
    fresh, _ = load_model("tiny-llama", device="cpu")
    before = dict(fresh.named_parameters())
    changed = 0
    for _, name, mod in unit_modules(model):
        if name != "lm_head":
            changed += not torch.equal(mod.base.weight, before[f"{name}.weight"])
        else:
            assert torch.equal(mod.base.weight, before["lm_head.weight"])   # the head stays frozen
    assert changed == sum(1 for u, _, _ in unit_modules(model) if u != "head")
    assert torch.equal(model.model.embed_tokens.weight, before["model.embed_tokens.weight"])
    _unit_check(model, lambda mod, cfg: fake_quantize_weight(mod.weight_out_in().detach(), cfg))


def test_full_qat_with_learned_clips_runs_the_clipped_grid(tmp_path, squad):
    trainer = Trainer(_cfg(tmp_path / "run", squad, learn_clip=True, clip_lr=0.2, lora=False))
    trainer.run()
    model = trainer.inner
    clips = [c for _, _, m in unit_modules(model) for c in m.clips.values()]
    assert clips and all(float(c.detach().min()) >= CLIP_MIN and float(c.detach().max()) <= 1.0 for c in clips)
    assert any(float(c.detach().min()) < 1.0 for c in clips)
    _unit_check(model, lambda mod, cfg: dequantize_weight(
        *quantize_weight_clipped(mod.weight_out_in().detach(), cfg, mod.clip(cfg).detach()), cfg))


def test_the_trained_model_loads_from_its_directory(tmp_path, squad, ids):
    out = tmp_path / "run"
    trainer = Trainer(_cfg(out, squad, model="tiny-gpt2", weight_grid="nested"))
    summary = trainer.run()
    assert summary["model"] == str(out / "model")
    model = trainer.inner
    loaded, _ = load_model(str(out / "model"), device="cpu")
    bs.make_switchable(loaded, keying="shared")
    load_adapters(loaded, out / "adapters")
    for p in PROFILES:
        set_profile(model, p)
        set_profile(loaded, p)
        with torch.no_grad():
            assert torch.equal(loaded(ids).logits, model.eval()(ids).logits), p


def test_full_qat_resume_is_bitwise(tmp_path, squad):
    kw = dict(model="tiny-gpt2", steps=6, learn_clip=True, train_bias=True, schedule="random", dropout=0.1)
    full = tmp_path / "full"
    train(_cfg(full, squad, **kw))
    part = tmp_path / "part"
    trainer = Trainer(_cfg(part, squad, **kw))
    original = trainer._train_step

    def stop_at_4(step, world, rank):
        if step == 4:
            raise KeyboardInterrupt
        return original(step, world, rank)
    trainer._train_step = stop_at_4
    with pytest.raises(Exception, match="interrupted at step 4"):
        trainer.run()
    train(_cfg(part, squad, **kw), resume=True)
    losses = [[json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (part, full)]
    assert losses[0] == losses[1] and len(losses[0]) == 6
    for rel in ("model/model.safetensors", "adapters/adapters.safetensors", "checkpoint/weights.safetensors"):
        a, b = load_file(str(part / rel)), load_file(str(full / rel))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), rel
    assert any(k.endswith(".bias") for k in load_file(str(full / "checkpoint/weights.safetensors")))


def test_the_memory_estimate_counts_the_full_weights(tmp_path, squad):
    lora = Trainer(_cfg(tmp_path / "a", squad, train_base="lora"))
    lora.setup()
    full = Trainer(_cfg(tmp_path / "b", squad))
    full.setup()
    n = sum(p.numel() for _, p in full.base)
    assert lora.memory.full_weights == 0
    assert full.memory.full_weights == n * 12 + n * 4 * len(PROFILES)
    assert full.memory.total == lora.memory.total + full.memory.full_weights
    assert "full weights" in full.memory.describe()


@pytest.mark.parametrize("kw, needle", [
    (dict(learn_clip=True, weight_grid="nested"), "learn_clip needs weight_grid independent"),
    (dict(train_base="lora", lora=False), "trains nothing"),
    (dict(train_base="lora", train_bias=True), "train_bias"),
    (dict(train_base="all"), "train_base"),
    (dict(clip_lr=0.0), "clip_lr"),
])
def test_config_errors(tmp_path, squad, kw, needle):
    with pytest.raises(BitswitchError, match=needle):
        _cfg(tmp_path, squad, **kw)


def test_cli_flags(tmp_path, squad, capsys):
    out = tmp_path / "cli"
    assert main(["train", "--model", "tiny-llama", "--data", squad, "--steps", "2", "--batch-size", "4",
                 "--device", "cpu", "--profiles", "w4g32", "--schedule", "fixed", "--learn-clip",
                 "--train-base", "full", "--set", "lora=false", "--set", "max_length=160", "--out", str(out)]) == 0
    assert "model: " in capsys.readouterr().out
    saved = TrainConfig.load(str(out / "config.yaml"))
    assert saved.learn_clip and saved.train_base == "full" and not saved.lora
    tensors = load_file(str(out / "adapters" / "adapters.safetensors"))
    assert tensors and all("::clip::" in k for k in tensors)


@pytest.mark.integration
def test_a_model_loaded_from_gguf_saves_its_float_weights(tmp_path):
    """SmolLM2 arrives as a GGUF file: transformers keeps a GGUF quantizer on the model, which makes
    save_pretrained refuse, though the weights in memory are floats. save_model writes them."""
    from bitswitch.train.full import save_model

    pytest.importorskip("gguf")
    try:
        model, tok = load_model("smollm2-135m", device="cpu")
    except BitswitchError as exc:
        pytest.skip(str(exc))
    bs.make_switchable(model)
    out = save_model(model, tok, tmp_path / "model")
    saved = load_file(str(out / "model.safetensors"))
    assert torch.equal(saved["model.layers.0.self_attn.q_proj.weight"],
                       model.model.layers[0].self_attn.q_proj.base.weight.detach())
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert getattr(model, "hf_quantizer", None) is not None   # the model itself is left as it was
    reloaded, _ = load_model(str(out), device="cpu")
    assert torch.equal(reloaded.model.layers[0].mlp.down_proj.weight,
                       model.model.layers[0].mlp.down_proj.base.weight.detach())
