import pytest

from bitswitch.cli import main
from bitswitch.errors import BitswitchError
from bitswitch.models import load_model
from bitswitch.train.memory import GIB, activation_bytes, advice, parse_bytes
from bitswitch.train.trainer import Trainer, train

from .test_trainer import _cfg, squad_file  # noqa: F401 - the fixture


def test_parse_bytes():
    assert parse_bytes("16GiB") == 16 * GIB == parse_bytes("16g")
    assert parse_bytes("500MiB") == 500 * 2**20
    assert parse_bytes("1e9") == 10**9
    with pytest.raises(ValueError):
        parse_bytes("lots")


def test_activation_estimate_scales_with_tokens_and_shrinks_with_checkpointing():
    model, _ = load_model("tiny-llama", device="cpu")
    one = activation_bytes(model.config, 4, 128, 4, False)
    assert activation_bytes(model.config, 8, 128, 4, False) == 2 * one
    assert activation_bytes(model.config, 4, 128, 4, False, passes=3) == 3 * one
    assert activation_bytes(model.config, 4, 128, 4, True) < one


def test_estimate_sees_the_largest_batch_and_is_logged(tmp_path, squad_file):
    t = Trainer(_cfg(tmp_path, squad_file, profiles=["fp", "w8a8", "w4a8"], schedule="all"), log=lambda m: None)
    t.setup()
    est = t.memory
    worst = max(len(t.batches.batch(s)) * max(len(t.examples[i]) for i in t.batches.batch(s))
                for s in range(t.cfg.steps))
    assert est.batch_tokens == worst
    assert est.weight_caches == 2 * 4 * sum(m.in_features * m.out_features for m in t.inner.modules()
                                            if type(m).__name__ == "QuantLinear")  # two fp32 weight caches
    assert t._passes() == 3 and est.total > 0


def test_a_run_that_cannot_fit_is_refused_early_and_checkpoints_stay(tmp_path, squad_file, capsys):
    cfg = _cfg(tmp_path, squad_file)
    train(cfg)
    ckpt = (tmp_path / "run" / "checkpoint" / "state.pt").read_bytes()
    with pytest.raises(BitswitchError, match=r"needs about .* MiB .* use "):
        train(_cfg(tmp_path, squad_file, max_memory="1MiB", steps=9), resume=True)
    assert (tmp_path / "run" / "checkpoint" / "state.pt").read_bytes() == ckpt
    code = main(["train", "--model", "tiny-gpt2", "--data", squad_file, "--steps", "2", "--device", "cpu",
                 "--max-memory", "1MiB", "--out", str(tmp_path / "other")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith("bitswitch: error: this run needs about") and "max_memory 1MiB" in err
    assert not (tmp_path / "other" / "checkpoint").exists()


def test_bad_max_memory_is_a_config_error(tmp_path, squad_file):
    with pytest.raises(BitswitchError, match="not a size"):
        _cfg(tmp_path, squad_file, max_memory="lots")


def test_refusal_suggests_a_batch_that_fits(tmp_path, squad_file):
    t = Trainer(_cfg(tmp_path, squad_file, batch_size=8), log=lambda m: None)
    t.setup()
    est = t.memory
    budget = est.total - est.activations // 2   # room for about half the activations
    rows = est.batch_tokens // est.row_tokens
    text = advice(t.inner, t.cfg, est, budget, 1)
    suggested = int(text.split("--batch-size ")[1].split()[0])
    assert 1 <= suggested < rows
    per_row = activation_bytes(t.inner.config, 1, est.row_tokens, 4, False)
    assert est.total - est.activations + suggested * per_row <= budget     # the suggestion fits
