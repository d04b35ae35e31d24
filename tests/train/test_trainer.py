import json

import pytest
import torch
from safetensors.torch import load_file

import bitswitch as bs
from bitswitch.cli import main
from bitswitch.train.config import TrainConfig
from bitswitch.train.data import LengthGroupedBatches
from bitswitch.train.trainer import Trainer, train


def write_squad(path, context="Items: " + ", ".join(f"item {j}" for j in range(6)) + "."):
    paras = [{"context": context,
              "qas": [{"id": f"q{i}{j}", "question": f"Which is item {j}?",
                       "answers": [{"text": f"item {j}", "answer_start": 0}]} for j in range(6)]} for i in range(4)]
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "T", "paragraphs": paras}]}))
    return str(path)


@pytest.fixture
def squad_file(tmp_path):
    return write_squad(tmp_path / "train.json")


def _cfg(tmp_path, squad_file, **kw):
    base = dict(model="tiny-gpt2", data=squad_file, steps=6, batch_size=4, lr=1e-2, warmup_steps=1,
                device="cpu", max_length=160, out=str(tmp_path / "run"), save_every=3, dropout=0.1)
    base.update(kw)
    return TrainConfig(**base)


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_loss_falls(tmp_path, squad_file):
    train(_cfg(tmp_path, squad_file, steps=30, profiles=["w8a8"], schedule="fixed", lr=2e-2, dropout=0.0))
    losses = _losses(tmp_path / "run")
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert (tmp_path / "run" / "adapters" / "adapters.safetensors").is_file()
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_resume_is_bitwise(tmp_path, squad_file):
    full = tmp_path / "full"
    train(_cfg(tmp_path, squad_file, out=str(full)))
    part = tmp_path / "part"
    trainer = Trainer(_cfg(tmp_path, squad_file, out=str(part)))
    original = trainer._train_step

    def stop_after_3(step, world, rank):
        if step == 4:
            raise KeyboardInterrupt
        return original(step, world, rank)
    trainer._train_step = stop_after_3
    with pytest.raises(Exception, match="interrupted at step 4"):
        trainer.run()
    train(_cfg(tmp_path, squad_file, out=str(part)), resume=True)
    assert _losses(part) == _losses(full)
    a = torch.load(full / "checkpoint" / "state.pt", weights_only=False)["optimizer"]["state"]
    b = torch.load(part / "checkpoint" / "state.pt", weights_only=False)["optimizer"]["state"]
    assert all(torch.equal(a[k]["exp_avg"], b[k]["exp_avg"]) for k in a)


def test_random_step_changes_only_the_sampled_adapter(tmp_path, squad_file):
    t = Trainer(_cfg(tmp_path, squad_file, steps=1, profiles=["w8a8", "w4a8"]))
    t.setup()
    before = {n: p.detach().clone() for n, p in t.inner.named_parameters()}
    rec = t._train_step(0, 1, 0)
    changed = {n for n, p in t.inner.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all(f".adapters.{rec['profile']}." in n for n in changed)


def test_all_schedule_averages_exactly(tmp_path, squad_file):
    t = Trainer(_cfg(tmp_path, squad_file, schedule="all", profiles=["w8a8", "w4a8"], dropout=0.0))
    t.setup()
    t.inner.eval()   # no dropout: the three passes must see the same network
    idx = t.batches.batch(0)
    from bitswitch.train.data import collate

    batch = collate([t.examples[i] for i in idx], t.pad_id, "cpu")
    both = t.step_losses(batch, ["w8a8", "w4a8"], 0)["loss"]
    one = [t.step_losses(batch, [p], 0)["loss"] for p in ("w8a8", "w4a8")]
    assert torch.equal(both, (one[0] + one[1]) / 2)


def test_distillation_and_hidden_losses_are_logged(tmp_path, squad_file):
    train(_cfg(tmp_path, squad_file, steps=3, schedule="all", profiles=["fp", "w4a8"], distill=1.0,
               hidden_mse=0.1, consistency=0.0))
    rec = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"ce", "kl", "mse"} <= rec.keys() and rec["kl"] >= 0


def test_length_grouped_batches_respect_token_budget():
    lengths = [10, 200, 30, 180, 50, 60, 70, 80] * 4
    b = LengthGroupedBatches(lengths, batch_size=4, max_tokens=400, seed=0)
    for i in range(20):
        idx = b.batch(i)
        assert len(idx) <= 4 and max(lengths[j] for j in idx) * len(idx) <= 400
    assert LengthGroupedBatches(lengths, 4, 400, 0).batch(13) == b.batch(13)


@pytest.mark.parametrize("argv, needle", [
    (["--set", "stepz=3"], "stepz"), (["--set", "steps=abc"], "steps"), (["--schedule", "nope"], "schedule"),
    (["--set", "schedule=random-unit"], "unit-bits"), (["--config", "missing.yaml"], "missing.yaml"),
])
def test_config_errors_exit_2_with_one_line(capsys, argv, needle):
    assert main(["train", "--model", "tiny-gpt2", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and needle in err


def test_train_cli_end_to_end_and_eval_with_adapters(tmp_path, squad_file, capsys):
    out = tmp_path / "cli"
    assert main(["train", "--model", "tiny-llama", "--data", squad_file, "--profiles", "fp", "w4a8", "--steps", "4",
                 "--batch-size", "4", "--device", "cpu", "--out", str(out), "--set", "max_length=160"]) == 0
    assert main(["eval", "--model", "tiny-llama", "--adapters", str(out / "adapters"), "--task", "squad",
                 "--data", squad_file, "--limit", "4", "--profiles", "fp", "w4a8", "--max-new-tokens", "3",
                 "--out", str(tmp_path / "ev")]) == 0
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert [r["adapter"] for r in res["records"]] == ["fp", "w4a8"]


def test_text_task_with_random_unit_bits(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("Switchable precision keeps one model for many bit-widths.\n" * 20)
    train(TrainConfig(model="tiny-gpt2", task="text", data=str(text), steps=3, batch_size=2, max_length=64,
                      schedule="random-unit", keying="unit-bits", candidates=[4, 8], device="cpu",
                      out=str(tmp_path / "run")))
    rec = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rec) == 3 and all(r["profile"].startswith("L0.attn_in=w") for r in rec)
    meta = json.loads((tmp_path / "run" / "adapters" / "adapter_config.json").read_text())
    assert meta["keying"] == "unit-bits" and set(meta["profiles"]) == {"w4a8", "w8a8"}


def test_non_finite_loss_stops_before_the_update(tmp_path, squad_file, monkeypatch, capsys):
    import bitswitch.train.trainer as tr

    real = tr.cross_entropy
    calls = {"n": 0}

    def poisoned(logits, targets):
        calls["n"] += 1
        return real(logits, targets) * (float("nan") if calls["n"] == 3 else 1.0)
    monkeypatch.setattr(tr, "cross_entropy", poisoned)
    code = main(["train", "--model", "tiny-gpt2", "--data", squad_file, "--steps", "5", "--save-every", "2",
                 "--batch-size", "4", "--device", "cpu", "--out", str(tmp_path / "nan"), "--set", "max_length=160"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and "loss is nan at step 2" in err
    step = json.loads((tmp_path / "nan" / "checkpoint" / "step.json").read_text())["step"]
    assert step == 2                                        # the last good checkpoint is kept
    ck = load_file(str(tmp_path / "nan" / "checkpoint" / "adapters.safetensors"))
    assert all(torch.isfinite(t).all() for t in ck.values())   # and its weights are finite


def test_non_finite_weights_are_never_saved(tmp_path, squad_file, capsys):
    out = tmp_path / "inf"
    code = main(["train", "--model", "tiny-gpt2", "--data", squad_file, "--steps", "3", "--save-every", "1",
                 "--batch-size", "4", "--device", "cpu", "--lr", "inf", "--out", str(out), "--set", "max_length=160"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and "adapter weights are not finite after the update of step 0" in err
    assert not (out / "adapters").exists() and not (out / "summary.json").exists()
    assert not (out / "checkpoint").exists() and not (out / "metrics.jsonl").exists()


def test_weights_gone_non_finite_stop_at_the_next_save_and_keep_the_last_good_checkpoint(tmp_path, squad_file):
    from bitswitch.adapters import adapter_parameters
    from bitswitch.train.trainer import NonFiniteWeights

    trainer = Trainer(_cfg(tmp_path, squad_file, save_every=1))
    original = trainer._train_step

    def poison_after_2(step, world, rank):
        record = original(step, world, rank)
        if step == 2:   # as if an update had overflowed without the step noticing
            next(adapter_parameters(trainer.inner)).data[0, 0] = float("inf")
        return record
    trainer._train_step = poison_after_2
    with pytest.raises(NonFiniteWeights, match="not finite at the checkpoint of step 3"):
        trainer.run()
    run = tmp_path / "run"
    assert json.loads((run / "checkpoint" / "step.json").read_text())["step"] == 2
    ck = load_file(str(run / "checkpoint" / "adapters.safetensors"))
    assert all(torch.isfinite(t).all() for t in ck.values())


def test_inputs_longer_than_the_context_are_cut_in_the_prompt(tmp_path, capsys):
    """tiny-gpt2 has 256 positions; max_length (512 by default) and a long context must not overflow it."""
    data = write_squad(tmp_path / "long.json", context=" ".join(f"word{i}" for i in range(3000)) + " item 3.")
    code = main(["train", "--model", "tiny-gpt2", "--data", data, "--steps", "2", "--batch-size", "4",
                 "--device", "cpu", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["truncated_examples"] == 24
    assert "24 of 24 prompts lost context words to fit 256 tokens" in err
    assert "max_length 512 is longer than the model's context" in err


def test_squad_selection_reaches_the_training_data(tmp_path, squad_file, monkeypatch):
    import bitswitch.train.data as data

    seen = {}
    real = data.load_squad

    def spy(*a, **kw):
        seen.update(kw)
        return real(*a, **kw)
    monkeypatch.setattr(data, "load_squad", spy)
    t = Trainer(_cfg(tmp_path, squad_file, order="file", sample_seed=3, offset=2, limit=8))
    t.setup()
    assert seen == {"split": "train", "limit": 8, "offset": 2, "order": "file", "sample_seed": 3}
    assert len(t.examples) == 8


@pytest.mark.parametrize("out", ["file", "file/below"])
def test_an_unusable_out_is_a_one_line_error_before_any_work(tmp_path, squad_file, capsys, out):
    (tmp_path / "file").write_text("x")
    assert main(["train", "--model", "no-such-model", "--data", squad_file, "--out", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--out" in err and "no-such-model" not in err


def test_the_time_estimate_scales_timed_steps_by_the_padded_tokens_of_every_step(tmp_path, squad_file, monkeypatch):
    t = Trainer(_cfg(tmp_path, squad_file, steps=5, batch_size=3))
    calls = []

    def fake_step(self, step, world, rank):   # a step costs 1 ms per padded token (warm-up included)
        calls.append(step)
        return {"seconds": 1e-3 * self._padded_tokens(step)}

    monkeypatch.setattr(Trainer, "_train_step", fake_step)
    est = t.estimate_seconds(timed_steps=2)
    assert calls == [0, 1, 2]
    assert est == pytest.approx(1e-3 * sum(t._padded_tokens(s) for s in range(5)), rel=1e-12)
