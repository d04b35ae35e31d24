import json
import subprocess
import sys

import pytest
import torch

from bitswitch import BitswitchError
from bitswitch.models import resolve_device
from bitswitch.cli import main


def _one_line_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("bitswitch: error:") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("profile, needle", [
    ("w9a8", "'w9a8'"), ("w8a8;L9.*=fp", "'L9.*'"), ("w8q8", "'w8q8'"), ("w8a8;", "stray"),
])
def test_profile_errors_exit_2_with_one_line(capsys, profile, needle):
    assert needle in _one_line_error(capsys, ["profiles", "--model", "tiny-gpt2", "--profile", profile])


def test_unknown_model_and_task_and_args(capsys, tmp_path):
    assert "no/such/model" in _one_line_error(capsys, ["profiles", "--model", "no/such/model", "--profile", "w8a8"])
    assert "'nosuch'" in _one_line_error(capsys, ["eval", "--model", "tiny-gpt2", "--task", "nosuch",
                                                  "--out", str(tmp_path)])
    assert "--window" in _one_line_error(capsys, ["eval", "--model", "tiny-gpt2", "--task", "wikitext",
                                                  "--window", "0", "--out", str(tmp_path)])
    _one_line_error(capsys, ["profiles", "--profile", "w8a8"])          # missing --model
    _one_line_error(capsys, ["eval", "--model", "tiny-gpt2", "--task", "wikitext", "--data",
                             str(tmp_path / "missing.txt"), "--out", str(tmp_path)])


# every command that takes --device, with arguments that parse (the device must fail before anything else)
DEVICE_ARGV = {
    "eval": ["eval", "--model", "tiny-llama", "--task", "wikitext", "--out", "{out}"],
    "profiles": ["profiles", "--model", "tiny-llama", "--profile", "w8a8"],
    "prepare": ["prepare", "--model", "tiny-llama", "--out", "{out}"],
    "export": ["export", "--model", "tiny-llama", "--profile", "w8a8", "--out", "{out}"],
    "attack": ["attack", "--model", "tiny-llama", "--attack", "hotflip", "--out", "{out}"],
    "sensitivity": ["sensitivity", "--model", "tiny-llama", "--out", "{out}"],
    "search": ["search", "--model", "tiny-llama", "--out", "{out}"],
    "train": ["train", "--model", "tiny-llama", "--data", "{missing}", "--steps", "1", "--out", "{out}"],
    "demo": ["demo", "--model", "tiny-llama", "--steps", "1", "--eval-limit", "1", "--train-data", "{missing}",
             "--dev-data", "{missing}", "--out", "{out}"],
}
ABSENT_DEVICES = ["cuda:99", "gpu", "meta",
                  pytest.param("cuda", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here")),
                  pytest.param("mps", marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS is here"))]


@pytest.mark.parametrize("device", ABSENT_DEVICES)
@pytest.mark.parametrize("command", list(DEVICE_ARGV))
def test_a_device_this_machine_lacks_fails_alike_in_every_command_before_any_work(capsys, tmp_path, command,
                                                                                  device):
    with pytest.raises(BitswitchError) as expected:
        resolve_device(device)
    out = tmp_path / "out"
    argv = [a.format(out=out, missing=tmp_path / "missing.json") for a in DEVICE_ARGV[command]]
    err = _one_line_error(capsys, argv + ["--device", device])
    assert err == f"bitswitch: error: {expected.value}" and repr(device) in err
    assert not out.exists()   # nothing written, no results file moved aside: it failed before any work


def test_library_configs_and_loaders_refuse_an_absent_device(tmp_path):
    from bitswitch.evaluate.config import EvalConfig
    from bitswitch.loading import load_switchable

    with pytest.raises(BitswitchError, match="'cuda:99'"):
        EvalConfig(model="tiny-llama", task="wikitext", out=str(tmp_path / "o"), device="cuda:99")
    with pytest.raises(BitswitchError, match="'cuda:99'"):
        load_switchable("tiny-llama", device="cuda:99")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("model, argv, needles", [
    ("tiny-llama", ["--profile", "w4g7a8"],
     ["profile 'w4g7a8': group size 7 does not divide the input width 64 of L0.attn_in", "(6 units)",
      "128 of L0.mlp_out, L1.mlp_out (2 units)", "such as 32 or 64"]),
    ("tiny-gpt2", ["--profile", "w4g128a8"], ["group size 128", "width 64 of L0.attn_in", "(6 units)"]),
    ("tiny-gpt2", ["--profile", "w4a8", "--group-size", "48"], ["--group-size 48", "256 of L0.mlp_out"]),
])
def test_group_sizes_that_do_not_divide_a_unit_width_are_one_line_errors(capsys, model, argv, needles):
    err = _one_line_error(capsys, ["profiles", "--model", model, *argv])
    assert all(n in err for n in needles), err


def test_group_sizes_that_divide_the_widths_are_accepted(capsys):
    assert main(["profiles", "--model", "tiny-gpt2", "--profile", "w4g32a8;L*.mlp_out=w4g128a8", "--json"]) == 0
    units = {u["name"]: u["group_size"] for u in json.loads(capsys.readouterr().out)["units"]}
    assert units["L0.attn_in"] == 32 and units["L1.mlp_out"] == 128


def test_profiles_json(capsys):
    assert main(["profiles", "--model", "tiny-llama", "--profile", "w4a8;L0.*=fp", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert {"units", "avg_w_bits", "weight_bytes", "fp16_weight_bytes"} <= rep.keys()
    assert rep["units"][0] == {"name": "L0.attn_in", "module": "model.layers.0.self_attn.q_proj",
                               "w_bits": None, "group_size": None, "a_bits": None, "params": 64 * 64}
    assert rep["avg_w_bits"] == pytest.approx((16 * 4 + 4 * 4) / 8, rel=0.2)


def test_eval_wikitext_writes_results_and_resumes(capsys, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.\n" * 40)
    argv = ["eval", "--model", "tiny-gpt2", "--task", "wikitext", "--data", str(text), "--profiles", "fp",
            "w8a8", "w4a8", "--window", "128", "--max-tokens", "1000", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [r["profile"] for r in res["records"]] == ["fp", "w8a8", "w4a8"]
    r = res["records"][1]
    assert {"profile", "ppl", "tokens", "avg_w_bits", "weight_bytes", "seconds"} <= r.keys()
    assert r["tokens"] == 1000 - 8 and r["avg_w_bits"] == 8
    assert res["command"].startswith("bitswitch eval") and res["seed"] == 0 and "torch" in res["versions"]
    assert "| w4a8 |" in capsys.readouterr().out
    # a rerun with the same settings reuses the records
    assert main(argv + ["--profiles", "fp", "w6a8"]) == 0
    res2 = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res2["records"][0] == res["records"][0]
    assert "already measured" in capsys.readouterr().err


def test_console_script_error_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "bitswitch.cli", "profiles", "--model", "tiny-gpt2",
                           "--profile", "L0.*=w4a3"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "'w4a3'" in proc.stderr


def test_export_then_eval_the_export(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("Packed weights are real bytes.\n" * 30)
    out = tmp_path / "exp"
    assert main(["export", "--model", "tiny-gpt2", "--profile", "w4a8;L0.*=w8a8", "--unquantized-dtype", "fp32",
                 "--out", str(out)]) == 0
    assert "equal the accounting of bitswitch profiles: True" in capsys.readouterr().out
    common = ["--task", "wikitext", "--data", str(text), "--window", "64"]
    assert main(["eval", "--model", str(out), *common, "--out", str(tmp_path / "a")]) == 0
    assert main(["eval", "--model", "tiny-gpt2", "--profiles", "w4a8;L0.*=w8a8", *common,
                 "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "results.json").read_text())["records"][0] for d in "ab")
    assert a["profile"] == b["profile"] and a["weight_bytes"] < b["weight_bytes"] * 2
    assert abs(a["ppl"] - b["ppl"]) / b["ppl"] < 1e-5        # fp32 unquantized parts: same model
    assert main(["eval", "--model", str(out), "--profiles", "w8a8", *common, "--out", str(tmp_path / "c")]) == 2
    assert main(["export", "--model", "tiny-gpt2", "--profile", "w8a8", "--act-mode", "tensor",
                 "--out", str(tmp_path / "d")]) == 2


def test_the_heap_bound_is_left_off_for_commands_that_train(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr("bitswitch.results.bound_heap_retention", lambda *a: calls.append(a) or True)
    assert main(["profiles", "--model", "tiny-llama", "--profile", "w8a8"]) == 0
    assert len(calls) == 1
    missing = str(tmp_path / "missing.json")
    for argv in (["train", "--model", "tiny-llama", "--data", missing, "--steps", "1", "--out", str(tmp_path / "t")],
                 ["demo", "--model", "tiny-llama", "--train-data", missing, "--dev-data", missing, "--recipe", "lora",
                  "--out", str(tmp_path / "d")]):
        assert main(argv) == 2    # the missing data file: a one-line error, after the heap policy was applied
        assert len(calls) == 1
