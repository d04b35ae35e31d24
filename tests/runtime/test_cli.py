"""``bitswitch generate`` and ``bitswitch eval --engine runtime`` on tiny models."""

import json

import pytest

from bitswitch.cli import main
from bitswitch.runtime import Runtime

from ..evaluate.test_squad_eval import _squad_file


def test_generate_prints_and_writes_what_the_library_gives(tmp_path, capsys):
    out = tmp_path / "g.json"
    argv = ["generate", "--model", "tiny-llama", "--profile", "w4g32", "--prompt", "hello", "--prompt", "a b c",
            "--max-new-tokens", "6", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    rt = Runtime.load("tiny-llama", profiles=["w4g32"], device="cpu")
    want = rt.generate(["hello", "a b c"], max_new_tokens=6, stop=None)
    assert res["texts"] == want.texts and res["prompts"] == ["hello", "a b c"]
    assert res["pack_count"] == rt.pack_count and res["resident_bytes"] == rt.resident_bytes()
    assert "[w4g32] prefill" in capsys.readouterr().err


def test_generate_schedule_and_data_file(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("first prompt\n\nsecond prompt\nthird\n")
    out = tmp_path / "g.json"
    assert main(["generate", "--model", "tiny-gpt2", "--data", str(prompts), "--limit", "2", "--schedule", "w4g32,w8",
                 "--max-new-tokens", "5", "--device", "cpu", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["prompts"] == ["first prompt", "second prompt"] and res["schedule"] == ["w4g32", "w8"]
    rt = Runtime.load("tiny-gpt2", profiles=["fp", "w4g32", "w8"], device="cpu")
    assert res["texts"] == rt.generate(res["prompts"], max_new_tokens=5, stop=None, schedule=["w4g32", "w8"]).texts


def test_generate_with_a_bf16_kv_cache(tmp_path):
    out = tmp_path / "g.json"
    assert main(["generate", "--model", "tiny-llama", "--profile", "w4g32", "--prompt", "hello", "--max-new-tokens",
                 "5", "--kv-dtype", "bfloat16", "--compile", "off", "--device", "cpu", "--out", str(out)]) == 0
    rt = Runtime.load("tiny-llama", profiles=["w4g32"], device="cpu", compile="off", kv_dtype="bfloat16")
    assert rt.kv_dtype == "bfloat16"
    assert json.loads(out.read_text())["texts"] == rt.generate(["hello"], max_new_tokens=5, stop=None).texts


@pytest.mark.parametrize("argv, needle", [
    ([], "nothing to generate"),
    (["--prompt", "x", "--kv-dtype", "int8"], "--kv-dtype"),
    (["--prompt", "x", "--profile", "w9"], "w9"),
    (["--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["--data", "absent.txt"], "no such file"),
])
def test_generate_bad_input_is_one_line_exit_2(argv, needle, capsys):
    assert main(["generate", "--model", "tiny-llama", "--device", "cpu", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err


def test_eval_squad_on_the_runtime_matches_fake_quantization_closely(tmp_path):
    data = _squad_file(tmp_path / "dev.json", n=8)
    common = ["eval", "--model", "tiny-llama", "--task", "squad", "--data", str(data), "--profiles", "w8", "w4g32",
              "--max-new-tokens", "4", "--batch-size", "4", "--device", "cpu"]
    assert main([*common, "--engine", "runtime", "--out", str(tmp_path / "r")]) == 0
    assert main([*common, "--out", str(tmp_path / "f")]) == 0
    r, f = (json.loads((tmp_path / d / "results.json").read_text()) for d in "rf")
    assert r["engine"] == "runtime" and f.get("engine", "fake") == "fake"
    for a, b in zip(r["records"], f["records"]):
        assert a["profile"] == b["profile"] and a["n"] == b["n"] == 8
        assert a["avg_w_bits"] == b["avg_w_bits"] and a["weight_bytes"] == b["weight_bytes"]
        assert abs(a["answer_ppl"] / b["answer_ppl"] - 1) < 0.05   # bf16 matmuls on a tiny random model


def test_generate_from_a_nested_checkpoint_and_from_a_corrupt_one(tmp_path, capsys):
    ckpt = tmp_path / "n"
    assert main(["export", "--nested", "--model", "tiny-llama", "--group-size", "32", "--out", str(ckpt),
                 "--device", "cpu"]) == 0
    out = tmp_path / "g.json"
    assert main(["generate", "--model", str(ckpt), "--profile", "w4g32", "--prompt", "hello", "--max-new-tokens", "4",
                 "--device", "cpu", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["resident_bytes"]["by_width"].keys() == {"w4g32", "fp"}   # fp: the head
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["generate", "--model", str(ckpt), "--prompt", "hello", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "corrupt (sha256 mismatch)" in err and "\n" not in err
