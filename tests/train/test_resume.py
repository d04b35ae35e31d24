"""Exact resume after SIGINT / SIGTERM / SIGKILL, crashes mid-save and cut-short metrics; verified
checkpoints; a resumed run continues its saved configuration."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import bitswitch
import bitswitch.train.checkpoint as ckmod
from bitswitch.cli import main
from bitswitch.train.checkpoint import OLD, TMP_PREFIX
from tests.train.test_trainer import write_squad

STEPS = 6


def _argv(data, out, *extra):
    return ["train", "--model", "tiny-gpt2", "--data", data, "--steps", str(STEPS), "--batch-size", "4",
            "--lr", "0.01", "--device", "cpu", "--save-every", "2", "--out", str(out), "--set", "max_length=160",
            "--set", "warmup_steps=1", "--set", "dropout=0.1", *extra]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: its squad file and output directory."""
    root = tmp_path_factory.mktemp("reference")
    data = write_squad(root / "train.json")
    assert main(_argv(data, root / "full")) == 0
    return data, root / "full"


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(run: Path, full: Path) -> None:
    a, b = _records(run), _records(full)
    assert [r["step"] for r in a] == list(range(STEPS))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    mine, theirs = (load_file(str(d / "adapters" / "adapters.safetensors")) for d in (run, full))
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    sa, sb = (torch.load(d / "checkpoint" / "state.pt", weights_only=False)["optimizer"]["state"] for d in (run, full))
    assert all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)


def test_a_crash_between_the_checkpoint_renames_resumes_from_the_last_complete_one(tmp_path, reference,
                                                                                    monkeypatch):
    data, full = reference
    out = tmp_path / "part"
    real = os.replace
    saves = {"n": 0}

    def crashing_replace(src, dst):
        if Path(src).name.startswith(TMP_PREFIX):
            saves["n"] += 1
            if saves["n"] == 2:    # the save of step 4: checkpoint (step 2) is already .checkpoint-old
                raise OSError("simulated crash between the renames")
        return real(src, dst)
    monkeypatch.setattr(ckmod.os, "replace", crashing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        main(_argv(data, out))
    monkeypatch.setattr(ckmod.os, "replace", real)
    assert not (out / "checkpoint").exists() and (out / OLD / "step.json").is_file()
    assert main(["train", "--resume", str(out)]) == 0
    _assert_same_run(out, full)
    assert not list(out.glob(".checkpoint-*"))


def test_a_corrupt_checkpoint_is_a_one_line_error(tmp_path, reference, capsys):
    _, full = reference
    run = tmp_path / "run"
    shutil.copytree(full, run)
    path = run / "checkpoint" / "adapters.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is corrupt" in err and "sha256 mismatch" in err and "adapters.safetensors" in err


class _Killed(BaseException):
    """Stands for SIGKILL in-process: nothing catches it, nothing is saved."""


def _killed_at(data, out, step: int) -> None:
    """Run the reference configuration until ``step`` starts, then die without saving."""
    import bitswitch.train.trainer as tr

    real = tr.Trainer._train_step

    def train_step(self, s, world, rank):
        if s == step:
            raise _Killed
        return real(self, s, world, rank)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tr.Trainer, "_train_step", train_step)
        with pytest.raises(_Killed):
            main(_argv(data, out))


def test_a_cut_short_metrics_line_and_lines_after_the_checkpoint_are_dropped_on_resume(tmp_path, reference,
                                                                                      capsys):
    data, full = reference
    run = tmp_path / "run"
    _killed_at(data, run, 5)                  # checkpoint of step 4; steps 0..4 logged
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "profile": "w')  # killed while writing a line
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()[:-1]] == [0, 1, 2, 3, 4]
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    assert "dropped 1 unreadable line" in capsys.readouterr().err
    _assert_same_run(run, full)


# a training process whose steps are slowed down, so that a signal lands inside a step
_SLOW = """import sys, time
import bitswitch.train.trainer as t
step_losses = t.Trainer.step_losses
def slow(self, *a, **k):
    time.sleep(0.25)
    return step_losses(self, *a, **k)
t.Trainer.step_losses = slow
from bitswitch.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_resume_after_a_signal_at_a_random_step_is_bitwise(tmp_path, reference, sig):
    data, full = reference
    out = tmp_path / "part"
    rng = random.Random(1000 + int(sig))
    # stop inside step `logged` or so (a kill after the first checkpoint, of step 2: before it there is
    # nothing to resume, and a run started again is a new run)
    logged = rng.randint(3, STEPS - 2) if sig == signal.SIGKILL else rng.randint(1, STEPS - 3)
    delay = rng.uniform(0.0, 0.3)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(bitswitch.__file__).parents[1]),
                                                          os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW, *_argv(data, out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        metrics = out / "metrics.jsonl"
        deadline = time.time() + 180
        while not (metrics.is_file() and metrics.read_text().count("\n") >= logged):
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:] if proc.poll() else ""
            time.sleep(0.02)
        time.sleep(delay)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 128 + int(sig), err[-2000:]
        assert "checkpoint saved, continue with --resume" in err
    assert not (out / "summary.json").exists()                         # it did stop before the end
    assert main(["train", "--resume", str(out)]) == 0
    _assert_same_run(out, full)


def test_keyboard_interrupt_inside_the_update_keeps_the_last_checkpoint(tmp_path, reference):
    """A KeyboardInterrupt raised once the update has begun (no handler of ours, a second Ctrl-C)
    does not save the half-updated state: the run resumes from the checkpoint before it."""
    data, full = reference
    out = tmp_path / "part"
    real = torch.optim.AdamW.step
    calls = {"n": 0}

    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:    # the update of step 3: the checkpoint holds step 2
            raise KeyboardInterrupt
        return real(self, *a, **k)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.AdamW, "step", step)
        assert main(_argv(data, out)) == 130
    assert json.loads((out / "checkpoint" / "step.json").read_text())["step"] == 2
    assert main(["train", "--resume", str(out)]) == 0
    _assert_same_run(out, full)


# -- a resumed run continues its saved configuration ---------------------------------------------
@pytest.fixture
def stopped(tmp_path, reference):
    """A 4-step run of the reference configuration (its checkpoint holds step 4)."""
    data, _ = reference
    run = tmp_path / "run"
    assert main(_argv(data, run, "--steps", "4")) == 0
    return data, run


@pytest.mark.parametrize("flags, needle", [
    (["--lr", "0.5"], "lr: 0.01 -> 0.5"),
    (["--batch-size", "2"], "batch_size: 4 -> 2"),
    (["--set", "dropout=0.0"], "dropout: 0.1 -> 0.0"),
    (["--profiles", "fp"], "profiles:"),
    (["--steps", "3"], "steps=3 is below the 4 steps"),
])
def test_resume_refuses_flags_that_contradict_the_saved_run(stopped, capsys, flags, needle):
    _, run = stopped
    before = (run / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["train", "--resume", str(run), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and needle in err
    assert (run / "config.yaml").read_text() == before


def test_resume_refuses_another_out(stopped, tmp_path, capsys):
    _, run = stopped
    assert main(["train", "--resume", str(run), "--out", str(tmp_path / "elsewhere")]) == 2
    assert "name different runs" in capsys.readouterr().err


def test_resume_accepts_more_steps_and_operational_keys(stopped, tmp_path):
    data, run = stopped
    cfg = tmp_path / "same.yaml"
    cfg.write_text("lr: 0.01\nbatch_size: 4\n")   # the keys a config file sets must agree too
    assert main(["train", "--resume", str(run), "--config", str(cfg), "--lr", "0.01", "--steps", "5",
                 "--save-every", "5", "--device", "cpu", "--max-memory", "64GiB",
                 "--set", "check_memory=false", "--set", "log_every=1"]) == 0
    assert [r["step"] for r in _records(run)] == [0, 1, 2, 3, 4]
    assert json.loads((run / "summary.json").read_text())["steps"] == 5
    assert "steps: 5" in (run / "config.yaml").read_text()


def test_a_new_run_in_an_old_directory_cannot_resume_the_old_checkpoint(tmp_path, reference, capsys):
    data, full = reference
    run = tmp_path / "run"
    shutil.copytree(full, run)
    _killed_at(data, run, 1)                  # a new run there, killed before its first checkpoint
    assert not (run / "checkpoint").exists() and not (run / "summary.json").exists()
    assert main(["train", "--resume", str(run)]) == 2
    assert "has no complete checkpoint" in capsys.readouterr().err
