"""``Job``: a second results file of one directory (``name``), kept apart from ``results.json``."""

import json

from bitswitch.jobs import Job, RunConfig


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
