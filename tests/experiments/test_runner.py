import json
import shutil
from pathlib import Path

from bitswitch.cli import main

from .conftest import has_command
from .test_report import assert_full_report, fake_attack_run


def _run(path, tmp_path, *extra):
    return main(["run", str(path), "--size", "small", "--out", str(tmp_path / "run"), *extra])


def _mtimes(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")}


def _record(tmp_path):
    return json.loads((tmp_path / "run" / "run.json").read_text())


def _statuses(tmp_path):
    return {s["id"]: s["status"] for s in _record(tmp_path)["steps"]}


def test_run_every_step_then_skip_all_then_resume_one_then_report(tiny_experiment, tmp_path, capsys):
    assert _run(tiny_experiment, tmp_path) == 0
    ids = ["train", "ded.w4a8", "squad", "squad_ded.w4a8", "ppl", "export"] + (
        ["attack"] if has_command("attack") else []) + (
        ["sens", "sens_unit", "search", "squad_searched"] if has_command("search") else [])
    assert _statuses(tmp_path) == {i: "done" for i in ids}
    run = _record(tmp_path)
    outs = {s["id"]: s["out"] for s in run["steps"]}
    assert outs["squad"].startswith(str(tmp_path / "cache" / "eval-"))
    assert run["command"] == f"bitswitch run {tiny_experiment} --size small"
    assert (tmp_path / "run" / "squad" / "results.json").is_file()          # the step's link
    mtimes = _mtimes(tmp_path / "cache")

    assert _run(tiny_experiment, tmp_path) == 0                              # everything is done: skip
    assert _statuses(tmp_path) == {i: "cached" for i in ids}
    assert mtimes == _mtimes(tmp_path / "cache")                             # nothing was rewritten
    err = capsys.readouterr().err
    assert "cached" in err and "skipped" not in err

    # an interrupted step (no completion marker) runs again, alone
    Path(outs["ppl"] + ".json").unlink()
    assert _run(tiny_experiment, tmp_path) == 0
    st = _statuses(tmp_path)
    assert st.pop("ppl") == "done" and set(st.values()) == {"cached"}

    out = tmp_path / "docs" / "report.md"
    attack = fake_attack_run(tmp_path)
    assert main(["report", str(tmp_path / "run"), str(attack), "--out", str(out)]) == 0
    assert_full_report(out, tiny_experiment, real_attack=has_command("attack"), search=has_command("search"))

    # the archive keeps what the report reads, no weights, and renders the same report from elsewhere
    archive, again = tmp_path / "kept" / "medium", tmp_path / "docs2" / "report.md"
    assert main(["report", str(tmp_path / "run"), str(attack), "--out", str(again), "--archive", str(archive)]) == 0
    shutil.rmtree(tmp_path / "run"), shutil.rmtree(tmp_path / "cache")
    assert main(["report", str(archive / "run"), str(archive / "robust"), "--out", str(again)]) == 0
    kept = [p for p in archive.rglob("*") if p.is_file()]
    assert not [p for p in kept if p.suffix in (".safetensors", ".pt", ".bin", ".gguf")]
    assert not [p for p in kept if "adapters" in p.parts or "checkpoint" in p.parts]
    strip = lambda t: [x for x in t.splitlines() if not x.startswith(("Generated ", "**Reproduce:**"))]  # noqa: E731
    assert strip(again.read_text()) == strip(out.read_text())
    steps = json.loads((archive / "run" / "run.json").read_text())["steps"]
    assert all(s["out"].startswith("../cache/") and (archive / "cache" / (Path(s["out"]).name + ".json")).is_file()
               for s in steps)


def test_interrupted_training_resumes_from_its_checkpoint(tiny_experiment, tmp_path, capsys):
    assert main(["run", str(tiny_experiment), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    assert "would run" in capsys.readouterr().err
    assert _run(tiny_experiment, tmp_path, "--only", "train") == 0
    st = _statuses(tmp_path)
    assert st.pop("train") == "done" and set(st.values()) == {"pending"}
    # as if killed after its last checkpoint: checkpoint there, no summary, no completion marker
    train_out = next(s["out"] for s in _record(tmp_path)["steps"] if s["id"] == "train")
    Path(train_out + ".json").unlink()
    (Path(train_out) / "summary.json").unlink()
    assert _run(tiny_experiment, tmp_path, "--only", "train") == 0
    train = next(s for s in _record(tmp_path)["steps"] if s["id"] == "train")
    assert train["status"] == "done" and train["resumed"] is True
    assert (Path(train_out) / "summary.json").is_file()


def test_same_configuration_same_step_and_flag_order_does_not_matter(tiny_experiment, tmp_path, capsys):
    base = ["run", str(tiny_experiment), "--dry-run", "--out", str(tmp_path / "run")]
    main(base)
    small = capsys.readouterr().err
    main(base + ["--size", "full"])
    full = capsys.readouterr().err
    main(base + ["--set", "steps=4"])
    assert small != full and full == capsys.readouterr().err    # same configuration, same directories
    text = tiny_experiment.read_text()
    tiny_experiment.write_text(text.replace('steps: "${steps}", batch_size: 4, device: cpu, save_every: 1',
                                            'batch_size: 4, steps: "${steps}", save_every: 1, device: cpu'))
    main(base)
    assert capsys.readouterr().err.split("--out")[1] == small.split("--out")[1]
