"""The job helper: resume, changed settings, interrupted writes, merging, output checks."""

import argparse
import json
import os
from dataclasses import dataclass

import pytest

from bitswitch.commands.args import add_run_args, config_from_args
from bitswitch.errors import BitswitchError
from bitswitch.jobs import Job, RunConfig


@dataclass(kw_only=True)
class Cfg(RunConfig):
    width: int = 1


def _job(tmp_path, **kw):
    return Job(Cfg(model="tiny-llama", out=str(tmp_path / "o"), **kw), "toy", ["toy"], key="profile",
               log=lambda m: None)


def _records(tmp_path, name="results.json"):
    return json.loads((tmp_path / "o" / name).read_text())["records"]


def test_resume_skips_finished_records(tmp_path):
    job = _job(tmp_path)
    job.add({"profile": "fp", "v": 1.0})
    job.add({"profile": "w8a8", "v": 2.0})
    again = _job(tmp_path)
    assert set(again.previous) == {"fp", "w8a8"} and again.previous["w8a8"]["v"] == 2.0


def test_a_rerun_with_another_profile_list_keeps_the_earlier_records(tmp_path):
    _job(tmp_path).add({"profile": "fp", "v": 1.0})
    job = _job(tmp_path)
    job.add({"profile": "w4a8", "v": 3.0})
    assert [r["profile"] for r in _records(tmp_path)] == ["w4a8", "fp"]


def test_a_changed_setting_starts_a_new_file_and_keeps_the_old(tmp_path):
    old = _job(tmp_path)
    old.add({"profile": "fp", "v": 1.0})
    notes = []
    new = Job(Cfg(model="tiny-llama", out=str(tmp_path / "o"), width=2), "toy", None, log=notes.append)
    assert new.previous == {} and new.settings != old.settings
    assert "width: 1 -> 2" in notes[0]
    assert _records(tmp_path, f"results-{old.settings}.json") == [{"profile": "fp", "v": 1.0}]
    new.add({"profile": "fp", "v": 5.0})
    assert _records(tmp_path) == [{"profile": "fp", "v": 5.0}]
    # settings that never change results (the output, the device) do not start a new file
    same = Job(Cfg(model="tiny-llama", out=str(tmp_path / "o"), width=2, device="cpu"), "toy", None)
    assert same.previous["fp"]["v"] == 5.0


def test_an_interrupted_write_leaves_the_old_file_intact(tmp_path, monkeypatch):
    job = _job(tmp_path)
    job.add({"profile": "fp", "v": 1.0})
    before = (tmp_path / "o" / "results.json").read_bytes()

    def crash(*a, **k):
        raise KeyboardInterrupt   # killed between writing the temporary file and renaming it

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        job.add({"profile": "w8a8", "v": 2.0})
    monkeypatch.undo()
    assert (tmp_path / "o" / "results.json").read_bytes() == before
    assert [p.name for p in (tmp_path / "o").iterdir() if p.name.endswith(".tmp")] == []


def test_two_runs_in_one_directory_merge_their_records(tmp_path):
    a, b = _job(tmp_path), _job(tmp_path)
    a.add({"profile": "fp", "v": 1.0})
    b.add({"profile": "w4a8", "v": 3.0})
    a.add({"profile": "w8a8", "v": 2.0})
    assert sorted(r["profile"] for r in _records(tmp_path)) == ["fp", "w4a8", "w8a8"]


def test_bad_output_and_results_files_are_one_line_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(BitswitchError, match="is a file"):
        Job(Cfg(model="m", out=str(tmp_path / "file")), "toy")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "results.json").write_bytes(b'{"kind": "toy", "rec')
    with pytest.raises(BitswitchError, match="not a readable results file"):
        _job(tmp_path)
    (tmp_path / "o" / "results.json").write_text(json.dumps({"kind": "search", "records": []}))
    with pytest.raises(BitswitchError, match="another command"):
        _job(tmp_path)


def test_configs_are_filled_from_their_fields(tmp_path):
    p = argparse.ArgumentParser()
    add_run_args(p, "data")
    p.add_argument("--width", type=int, default=None)
    a = p.parse_args(["--model", "tiny-llama", "--limit", "5", "--order", "file", "--group-size", "32"])
    cfg = config_from_args(Cfg, a, out=str(tmp_path))
    assert (cfg.model, cfg.limit, cfg.order, cfg.width, cfg.options.group_size) == ("tiny-llama", 5, "file", 1, 32)
    with pytest.raises(BitswitchError, match="--order"):
        Cfg(model="m", out="o", order="first")
def test_a_named_job_keeps_its_own_file_and_resumes(tmp_path):
    cfg = RunConfig(model="m", out=str(tmp_path))
    main = Job(cfg, "search", key="label", log=lambda m: None)
    main.add({"label": "base", "f1": 1.0})
    side = Job(cfg, "sensitivity", key="name", log=lambda m: None, name="sensitivity.json")
    side.add({"name": "L0.attn_in", "damage": 0.5})
    assert side.path == tmp_path / "sensitivity.json"
    assert json.loads(side.path.read_text())["kind"] == "sensitivity"
    assert [r["label"] for r in json.loads((tmp_path / "results.json").read_text())["records"]] == ["base"]
    again = Job(cfg, "sensitivity", key="name", log=lambda m: None, name="sensitivity.json")
    assert again.previous == {"L0.attn_in": {"name": "L0.attn_in", "damage": 0.5}}
    # other settings: the old file stays beside the new one under the file's own stem
    notes = []
    Job(RunConfig(model="m", out=str(tmp_path), seed=1), "sensitivity", key="name", log=notes.append,
        name="sensitivity.json")
    kept = tmp_path / f"sensitivity-{cfg.settings_hash()}.json"
    assert kept.is_file() and not side.path.exists() and "starting a new sensitivity.json" in notes[0]
    assert (tmp_path / "results.json").is_file()
