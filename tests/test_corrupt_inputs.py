"""Corrupted input files, fed to every file reader the CLI reaches: one-line errors, never tracebacks.

Each file kind gets seeded random corruptions (flipped bytes, truncation, inserted garbage, an
empty file) and each run through ``bitswitch.cli.main`` must either succeed (a corruption that left
a valid file, e.g. a changed letter inside a JSON string) or exit 2 with exactly one line on stderr
starting with ``bitswitch: error:``, and then leave no new files in the ``--out`` directory. Files
that carry a sha256 (adapter and export tensors, the export's config and tokenizer files) must be
refused whatever changed in them.
"""

from __future__ import annotations

import json
import random
import shutil
import traceback
from pathlib import Path

import pytest
import torch

import bitswitch as bs
from bitswitch.adapters import adapter_parameters
from bitswitch.cli import main

SEED = 1234
TEXT = "The quick brown fox jumps over the lazy dog.\n" * 8
SQUAD = {"version": "1.1", "data": [
    {"title": "A", "paragraphs": [{"context": "Paris is the capital of France.", "qas": [
        {"id": "a1", "question": "Capital of France?", "answers": [{"answer_start": 0, "text": "Paris"}]}]}]},
    {"title": "B", "paragraphs": [{"context": "Berlin is in Germany.", "qas": [
        {"id": "b1", "question": "Where is Berlin?", "answers": [{"answer_start": 13, "text": "Germany"}]}]}]}]}


def corruptions(data: bytes, seed: int, flips: int = 5) -> list[tuple[str, bytes]]:
    """Seeded corrupted copies of ``data``, each different from it: ``(label, bytes)``."""
    rng = random.Random(seed)
    n = len(data)
    out = [("empty", b""), ("half", data[: n // 2]), ("last byte cut", data[:-1]),
           ("random cut", data[: rng.randrange(1, n)]),
           ("garbage appended", data + bytes(rng.randrange(256) for _ in range(16))),
           ("garbage prepended", bytes(rng.randrange(256) for _ in range(8)) + data),
           ("all garbage", bytes(rng.randrange(256) for _ in range(n)))]
    for _ in range(2):
        at = rng.randrange(n)
        out.append((f"garbage inserted at {at}", data[:at] + bytes(rng.randrange(256) for _ in range(5)) + data[at:]))
    for _ in range(flips):
        at = rng.randrange(n)
        flipped = bytearray(data)
        flipped[at] ^= rng.randrange(1, 256)
        out.append((f"byte {at} replaced", bytes(flipped)))
    for _ in range(flips):             # bit rot: one bit, which in text mostly keeps the file readable
        at, bit = rng.randrange(n), rng.randrange(7)
        flipped = bytearray(data)
        flipped[at] ^= 1 << bit
        out.append((f"bit {bit} of byte {at} flipped", bytes(flipped)))
    at = rng.randrange(n - 3)
    flipped = bytearray(data)
    for i in range(at, at + 3):
        flipped[i] ^= 0xFF
    out.append((f"bytes {at}-{at + 2} inverted", bytes(flipped)))
    return [(label, d) for label, d in out if d != data]


def _files(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its bytes (nothing for a directory that does not exist)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def run_cases(capfd, target: Path, argv: list[str], out: Path, seed: int, must_fail: bool,
              reset=None, flips: int = 5) -> dict[str, int]:
    """Corrupt ``target`` every way :func:`corruptions` knows and run ``argv`` each time; returns
    ``{label: exit code}``. ``reset()`` restores the inputs (and ``out``) before each case."""
    pristine = target.read_bytes()
    problems, codes = [], {}
    for label, data in corruptions(pristine, seed, flips):
        if reset is not None:
            reset()
        target.write_bytes(data)
        before = _files(out)
        capfd.readouterr()
        try:
            code = main(argv)
        except Exception:  # noqa: BLE001 - a traceback is what this test looks for
            problems.append(f"{target.name} {label}: traceback\n{traceback.format_exc()}")
            target.write_bytes(pristine)
            continue
        after = _files(out)
        target.write_bytes(pristine)
        err = capfd.readouterr().err.strip()
        codes[label] = code
        if code == 0 and not must_fail:
            continue
        if code != 2:
            problems.append(f"{target.name} {label}: exit {code} (expected {'2' if must_fail else '0 or 2'}); "
                            f"stderr: {err[-300:]!r}")
        elif not err.startswith("bitswitch: error:") or "\n" in err or "Traceback" in err:
            problems.append(f"{target.name} {label}: stderr is not one error line: {err[-500:]!r}")
        elif after != before:
            problems.append(f"{target.name} {label}: --out changed on a failed run")
        elif must_fail and target.name not in err:
            problems.append(f"{target.name} {label}: the error does not name the file: {err!r}")
    assert not problems, "\n".join(problems)
    return codes


def _restore(src: Path, dst: Path):
    def reset():
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
    return reset


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "t.txt"
    path.write_text(TEXT)
    return path


def _eval(model: str, text: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--model", model, "--device", "cpu", "--task", "wikitext", "--data", str(text), "--window", "32",
            "--max-tokens", "64", *extra, "--out", str(out)]


# -- data files ---------------------------------------------------------------------------------------

def test_squad_file(tmp_path, capfd):
    data = tmp_path / "squad.json"
    data.write_text(json.dumps(SQUAD))
    out = tmp_path / "out"
    argv = ["eval", "--model", "tiny-gpt2", "--device", "cpu", "--task", "squad", "--data", str(data), "--limit", "2",
            "--max-new-tokens", "2", "--out", str(out)]
    codes = run_cases(capfd, data, argv, out, SEED, must_fail=False, reset=lambda: shutil.rmtree(out, True))
    assert codes["empty"] == codes["half"] == 2


def test_text_file(tmp_path, capfd, text):
    data = tmp_path / "t.txt"
    data.write_bytes(text.read_bytes())
    out = tmp_path / "out"
    codes = run_cases(capfd, data, _eval("tiny-gpt2", data, out), out, SEED + 1, must_fail=False, flips=2,
                      reset=lambda: shutil.rmtree(out, True))
    assert codes["empty"] == 2


@pytest.mark.parametrize("suffix, body", [
    (".json", json.dumps({"default": "w8a8", "L0.*": "w4a8", "head": "fp"})),
    (".yaml", "default: w8a8\nL0.*: w4a8\nhead: fp\n"),
])
def test_profile_file(tmp_path, capfd, text, suffix, body):
    prof = tmp_path / f"mix{suffix}"
    prof.write_text(body)
    out = tmp_path / "out"
    codes = run_cases(capfd, prof, _eval("tiny-gpt2", text, out, "--profiles", str(prof)), out, SEED + 2,
                      must_fail=False, reset=lambda: shutil.rmtree(out, True))
    assert codes["empty"] == 2


# -- adapters -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> Path:
    model, _ = bs.load_model("tiny-gpt2", device="cpu")
    bs.make_switchable(model)
    bs.add_adapters(model, ["w8a8"])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    path = tmp_path_factory.mktemp("adapters") / "adapters"
    bs.save_adapters(model, path, ["w8a8"])
    return path


@pytest.mark.parametrize("name, must_fail", [("adapters.safetensors", True), ("adapter_config.json", False)])
def test_adapter_files(tmp_path, capfd, text, adapters, name, must_fail):
    directory, out = tmp_path / "adapters", tmp_path / "out"
    argv = _eval("tiny-gpt2", text, out, "--adapters", str(directory), "--profiles", "w8a8")
    reset = _restore(adapters, directory)
    reset()
    run_cases(capfd, directory / name, argv, out, SEED + 3, must_fail,
              reset=lambda: (reset(), shutil.rmtree(out, True)))


# -- exports --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("export") / "exp"
    assert main(["export", "--model", "tiny-gpt2", "--device", "cpu", "--profile", "w4a8;L0.*=w8a8",
                 "--out", str(path)]) == 0
    return path


@pytest.mark.parametrize("name, must_fail", [
    ("model.safetensors", True), ("quant_map.json", False), ("config.json", True), ("tokenizer_config.json", True),
])
def test_export_files(tmp_path, capfd, text, export, name, must_fail):
    directory, out = tmp_path / "exp", tmp_path / "out"
    reset = _restore(export, directory)
    reset()
    run_cases(capfd, directory / name, _eval(str(directory), text, out), out, SEED + 4, must_fail,
              reset=lambda: (reset(), shutil.rmtree(out, True)))


# -- results files --------------------------------------------------------------------------------------

def test_results_file(tmp_path, capfd, text):
    out = tmp_path / "out"
    argv = _eval("tiny-gpt2", text, out, "--profiles", "fp", "w8a8")
    assert main(argv) == 0
    kept = tmp_path / "kept"
    shutil.copytree(out, kept)
    codes = run_cases(capfd, out / "results.json", argv, out, SEED + 5, must_fail=False, flips=10,
                      reset=_restore(kept, out))
    assert codes["empty"] == codes["half"] == 2


@pytest.mark.parametrize("edit, code", [
    (lambda d: d.update(records={"fp": {}}), 2),
    (lambda d: d["records"][0].pop("profile"), 2),
    (lambda d: d["records"].append([1]), 2),
    (lambda d: d["records"][0].update(profile=["fp"]), 2),
    (lambda d: d.update(settings="../../x", config=[1]), 0),   # other settings: kept aside as results-old.json
])
def test_results_file_that_is_valid_json(tmp_path, capfd, text, edit, code):
    out = tmp_path / "out"
    argv = _eval("tiny-gpt2", text, out, "--profiles", "fp")
    assert main(argv) == 0
    doc = json.loads((out / "results.json").read_text())
    edit(doc)
    (out / "results.json").write_text(json.dumps(doc))
    before = _files(out)
    capfd.readouterr()
    assert main(argv) == code
    err = capfd.readouterr().err.strip()
    if code == 2:
        assert err.startswith("bitswitch: error:") and "\n" not in err and "malformed records" in err
        assert _files(out) == before
    else:
        assert json.loads((out / "results-old.json").read_text()) == doc


# -- training checkpoints -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory, text) -> Path:
    """A finished one-step run with its checkpoint: ``train --resume DIR --steps 2`` continues it."""
    run = tmp_path_factory.mktemp("ckpt") / "run"
    assert main(["train", "--model", "tiny-gpt2", "--device", "cpu", "--task", "text", "--data", str(text),
                 "--steps", "1", "--save-every", "1", "--batch-size", "2", "--profiles", "fp", "w8a8",
                 "--out", str(run)]) == 0
    return run


@pytest.mark.parametrize("name, must_fail", [("checkpoint/adapters.safetensors", True),
                                             ("checkpoint/state.pt", True), ("checkpoint/step.json", False),
                                             ("config.yaml", False)])
def test_checkpoint_files(tmp_path, capfd, checkpointed, name, must_fail):
    run = tmp_path / "run"
    reset = _restore(checkpointed, run)
    reset()
    run_cases(capfd, run / name, ["train", "--resume", str(run), "--steps", "2"], run, SEED + 6, must_fail,
              reset=reset, flips=3)


def test_resume_with_missing_data_is_one_error_line(tmp_path, capfd, checkpointed):
    """A config whose data path no longer exists fails before any note is printed (the model's short
    context would otherwise say so first, and the error would not be the only line)."""
    run = tmp_path / "run"
    _restore(checkpointed, run)()
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("\ndata: /", "\ndata: /missing/", 1))
    before = _files(run)
    capfd.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "2"]) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("bitswitch: error: text data") and "\n" not in err
    assert _files(run) == before
