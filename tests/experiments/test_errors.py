import pytest

from bitswitch.cli import main


def _one_line(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("bitswitch: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_missing_file(capsys, tmp_path):
    assert "nope.yaml" in _one_line(capsys, ["run", str(tmp_path / "nope.yaml")])


@pytest.mark.parametrize("edit, needle", [
    (("command: export", "command: exprot"), "'exprot'"),
    (('"${steps}"', '"${stepz}"'), "stepz"),
    (("max_new_tokens: 3", "max_newtokens: 3"), "--max-newtokens"),
    (("${steps.train.out}/adapters", "${steps.later.out}/adapters"), "'later'"),
    (("device: cpu, save_every", "out: x, save_every"), "'out'"),
])
def test_bad_experiment_is_one_line(capsys, tmp_path, tiny_experiment, edit, needle):
    text = tiny_experiment.read_text()
    assert edit[0] in text
    tiny_experiment.write_text(text.replace(edit[0], edit[1], 1))
    assert needle in _one_line(capsys, ["run", str(tiny_experiment), "--dry-run"])


def test_bad_size_and_set(capsys, tiny_experiment):
    assert "'huge'" in _one_line(capsys, ["run", str(tiny_experiment), "--size", "huge"])
    assert "nosuch" in _one_line(capsys, ["run", str(tiny_experiment), "--set", "nosuch=1"])
    assert "var=value" in _one_line(capsys, ["run", str(tiny_experiment), "--set", "steps"])


def test_report_of_a_non_run_dir(capsys, tmp_path):
    assert "run.json" in _one_line(capsys, ["report", str(tmp_path), "--out", str(tmp_path / "r.md")])


def test_failing_step_stops_the_run_with_one_line(capsys, tmp_path, tiny_experiment):
    text = tiny_experiment.read_text().replace("data: \"${squad}\", profiles: \"${profiles}\", schedule",
                                               "data: \"/no/such.json\", profiles: \"${profiles}\", schedule")
    tiny_experiment.write_text(text)
    code = main(["run", str(tiny_experiment), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("bitswitch: error: step 'train' (train)") and "rerun" in err[-1]
