"""Every experiment file validates and expands at every size; the medium size evaluates at least 400
questions and shares its trained models between experiments."""

from pathlib import Path

import pytest

from bitswitch.cli import build_parser
from bitswitch.experiments.spec import load_experiment, resolve_steps

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted((ROOT / "experiments").glob("*.yaml"))
NEW = {"real_bits", "low_precision_norms", "cpt_rpi", "precision_lr", "rpi_calibration"}


def _steps(path, size):
    exp = load_experiment(path, size, parser=build_parser())
    return exp, resolve_steps(exp, Path("runs/cache"))


def test_the_new_questions_exist():
    assert NEW <= {p.stem for p in FILES}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("size", ["small", "medium", "full"])
def test_every_file_expands_at_every_size(path, size):
    exp, steps = _steps(path, size)
    assert exp.sizes[:3] == ["small", "medium", "full"] or set(exp.sizes) >= {"small", "medium", "full"}
    assert steps and exp.question and exp.short and len(exp.short) <= 120
    if exp.answers:   # the first rule is the one-line answer: it names two runs or a drop
        (name, args), = exp.answers[0].items()
        assert name in ("compare", "drop", "top") and (name != "compare" or len(args["labels"]) >= 2)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_medium_evaluates_at_least_400_questions_sampled_across_articles(path):
    exp, steps = _steps(path, "medium")
    for s in steps:
        if s.command == "eval" and "squad" in s.argv:
            argv = s.argv
            assert int(argv[argv.index("--limit") + 1]) >= 400, s.id
            assert "--order" not in argv or argv[argv.index("--order") + 1] == "stratified"
        if s.command == "train":
            assert int(s.argv[s.argv.index("--steps") + 1]) == 60, s.id


def test_medium_steps_are_shared_between_experiments():
    owners = {}
    for path in FILES:
        exp, steps = _steps(path, "medium")
        for s in steps:
            owners.setdefault(s.hash, set()).add(exp.name)
    shared = [names for names in owners.values() if len(names) > 1]
    assert {"accuracy", "objectives", "low_precision_norms", "rpi_calibration", "robustness",
            "sensitivity_search"} in shared                                       # the random-schedule model
    assert {"cpt", "cpt_rpi", "precision_lr", "real_bits"} in shared            # the cyclic model
