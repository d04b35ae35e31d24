"""eval --rpi: one setting under random precision inference; static ranges per profile or shared."""

import json

import pytest
import torch

import bitswitch as bs
from bitswitch.cli import main
from bitswitch.robust.rpi import rpi
from bitswitch.switching import share_observers


def _eval(tmp_path, squad_file, out, *extra):
    argv = ["eval", "--model", "tiny-llama", "--task", "squad", "--data", str(squad_file), "--train-data",
            str(squad_file), "--limit", "4", "--max-new-tokens", "4", "--device", "cpu", "--out", str(out), *extra]
    assert main(argv) == 0
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("calib", ["per-profile", "shared"])
def test_eval_under_rpi_with_static_ranges(tmp_path, squad_file, calib):
    out = tmp_path / calib
    res = _eval(tmp_path, squad_file, out, "--rpi", "w8a8", "w4a8", "--rpi-calib", calib, "--calib-batches", "2")
    (rec,) = res["records"]
    assert rec["profile"] == "rpi" and rec["rpi_calib"] == calib and rec["n"] == 4
    assert rec["avg_w_bits"] == pytest.approx(6.0)
    lines = (out / "predictions-rpi.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all("f1" in json.loads(x) for x in lines)     # per question: pairs with other runs
    again = _eval(tmp_path, squad_file, out, "--rpi", "w8a8", "w4a8", "--rpi-calib", calib, "--calib-batches", "2")
    assert again["records"] == res["records"]                                 # measured once


def test_static_ranges_on_adapters_trained_per_token(tmp_path, squad_file):
    train = ["train", "--model", "tiny-llama", "--data", str(squad_file), "--profiles", "w8a8", "w4a8", "--schedule",
             "random", "--keying", "shared", "--steps", "1", "--batch-size", "2", "--device", "cpu",
             "--out", str(tmp_path / "train")]
    assert main(train) == 0
    (rec,) = _eval(tmp_path, squad_file, tmp_path / "ad", "--adapters", str(tmp_path / "train" / "adapters"), "--rpi",
                   "w8a8", "w4a8", "--rpi-calib", "shared", "--calib-batches", "2")["records"]
    assert rec["rpi_calib"] == "shared"


def test_dynamic_activations_need_no_calibration(tmp_path, squad_file):
    (rec,) = _eval(tmp_path, squad_file, tmp_path / "tok", "--rpi", "w8a8", "w4a8")["records"]
    assert rec["rpi_calib"] == "dynamic"


def test_rpi_with_profiles_is_a_one_line_error(tmp_path, squad_file, capsys):
    argv = ["eval", "--model", "tiny-llama", "--task", "squad", "--data", str(squad_file), "--profiles", "w8a8",
            "--rpi", "w8a8", "w4a8", "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--rpi" in err[0]


def test_shared_observers_are_filled_under_random_switching():
    model, _ = bs.load_model("tiny-llama")
    bs.make_switchable(model, bs.QuantOptions(act_mode="tensor"))
    share_observers(model, "shared")
    ids = [torch.randint(0, 200, (1, 8), generator=torch.Generator().manual_seed(i)) for i in range(6)]
    with rpi(model, ["w8a8", "w4a8"], p=1.0, seed=0) as h:
        bs.calibrate(model, ids)
        drawn = set(h.history)
    assert drawn == {0, 1}                                   # both profiles ran during calibration
    mods = [m for _, _, m in bs.switching.unit_modules(model)]
    assert all(set(m.observers) == {"shared"} and m.observer_key == "shared" for m in mods)
    bs.set_profile(model, "w4a8")
    assert all(m.observer_key == "shared" for m in mods)
    share_observers(model, None)
    assert all(m.observer_key == "w4a8" for m in mods)
