import json

import pytest

import bitswitch as bs
from bitswitch.cli import main
from bitswitch.data.squad import PromptConfig, load_squad
from bitswitch.robust.examples import read_adv_jsonl
from bitswitch.robust.hotflip import hotflip
from bitswitch.robust.loss import frozen
from bitswitch.robust.replay import replay
from bitswitch.robust.rpi import DrawSampler, RPIConfig


def _argv(data, out, *extra):
    return ["attack", "--model", "tiny-llama", "--attack", "hotflip", "--craft-profile", "fp", "w4a8",
            "--eval-profiles", "fp", "w4a8", "--data", str(data), "--limit", "3", "--budget", "2",
            "--candidates", "3", "--max-new-tokens", "3", "--batch-size", "2", "--out", str(out), *extra]


def test_attack_writes_matrix_whose_diagonal_is_the_direct_attack(squad_file, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(_argv(squad_file, out, "--rpi", "w8a8", "w4a8", "--eot", "2", "--rpi-matrix", "diagonal")) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["kind"] == "attack" and res["command"].startswith("bitswitch attack") and res["n"] == 3
    assert res["craft"] == ["fp", "w4a8", "rpi"] and res["eval"] == ["fp", "w4a8", "rpi"]
    r = res["results"]["hotflip"]
    assert set(r["matrix"]["fp"]) == {"fp", "w4a8"} and set(r["matrix"]["rpi"]) == {"rpi"}
    for row in ("fp", "w4a8", "rpi"):
        assert r["direct"][row] == r["matrix"][row][row]
    assert r["rpi_summary"]["profiles"] == ["w4a8"]
    assert (out / "transfer-hotflip.png").stat().st_size > 1000 and "| craft |" in (out / "results.md").read_text()

    # the diagonal equals an independent direct attack: craft at w4a8 with the library, replay at w4a8
    model, tok = bs.load_model("tiny-llama", device="cpu")
    bs.make_switchable(model)
    examples = load_squad(str(squad_file), limit=3)
    cfg = PromptConfig()
    with frozen(model), bs.use_profile(model, "w4a8"):
        advs = [hotflip(model, tok, ex, cfg, DrawSampler(model, "w4a8"), budget=2, candidates=3) for ex in examples]
    _, written = read_adv_jsonl(out / "adv-hotflip-w4a8.jsonl")
    assert [a.adv_question for a in advs] == [a.adv_question for a in written]
    direct = replay(model, tok, [a.adversarial(ex) for a, ex in zip(advs, examples)], cfg, "w4a8", 3, 2)
    cell = r["matrix"]["w4a8"]["w4a8"]
    assert (direct["em"], direct["f1"]) == (cell["em"], cell["f1"])
    assert direct["answer_ppl"] == pytest.approx(cell["answer_ppl"], rel=1e-9)
    # ... and the RPI cell replays with a seeded draw: the same numbers again
    rpi_cell = replay(model, tok, [a.adversarial(ex) for a, ex in zip(
        read_adv_jsonl(out / "adv-hotflip-rpi.jsonl")[1], examples)], cfg, RPIConfig(("w8a8", "w4a8"), 0.5), 3, 2)
    assert rpi_cell["f1"] == r["matrix"]["rpi"]["rpi"]["f1"]
    assert rpi_cell["answer_ppl"] == pytest.approx(r["matrix"]["rpi"]["rpi"]["answer_ppl"], rel=1e-9)

    # budgets hold in the written files
    for row in ("fp", "w4a8", "rpi"):
        header, advs = read_adv_jsonl(out / f"adv-hotflip-{row}.jsonl")
        assert header["params"]["budget"] == 2 and all(a.n_edits <= 2 for a in advs)

    # a rerun with the same settings reuses the adversarial files and every replay
    capsys.readouterr()
    assert main(_argv(squad_file, out, "--rpi", "w8a8", "w4a8", "--eot", "2", "--rpi-matrix", "diagonal")) == 0
    err = capsys.readouterr().err
    assert err.count("reusing") == 3 and "evaluated at" not in err
    assert json.loads((out / "results.json").read_text())["results"] == res["results"]


def test_embed_attack_replays_its_deltas(squad_file, tmp_path):
    out = tmp_path / "e"
    argv = ["attack", "--model", "tiny-gpt2", "--attack", "embed-fgsm", "--craft-profile", "w8a8", "--data",
            str(squad_file), "--limit", "2", "--max-new-tokens", "2", "--out", str(out)]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    r = res["results"]["embed-fgsm"]
    assert (out / "adv-embed-fgsm-w8a8.safetensors").is_file()
    assert r["matrix"]["w8a8"]["w8a8"]["answer_ppl"] > res["clean"]["w8a8"]["answer_ppl"]


@pytest.mark.parametrize("extra, needle", [
    (["--attack", "textfooler"], "'textfooler'"),
    (["--craft-profile", "w9a8"], "'w9a8'"),
    (["--rpi", "w8a8", "--rpi-p", "1.5"], "--rpi-p"),
    (["--eval-profiles", "rpi"], "--rpi"),
    (["--budget", "0"], "--budget"),
    (["--data", "/no/such.json"], "/no/such.json"),
])
def test_bad_input_is_one_line_exit_2(squad_file, tmp_path, capsys, extra, needle):
    code = main(_argv(squad_file, tmp_path / "x") + extra)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("bitswitch: error:") and "\n" not in err and needle in err


def test_prompts_longer_than_the_context_are_cut_as_eval_cuts_them(tmp_path, capsys):
    """tiny-gpt2 has 256 positions: a long context and a long answer used to index past them."""
    context = " ".join(f"word{i}" for i in range(400)) + " The answer is a rather long gold answer here."
    qas = [{"id": f"q{i}", "question": f"Which answer number {i}?",
            "answers": [{"text": "a rather long gold answer here", "answer_start": context.index("a rather")}]}
           for i in range(2)]
    data = tmp_path / "long.json"
    data.write_text(json.dumps({"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": context, "qas": qas}]}]}))
    out = tmp_path / "o"
    argv = ["attack", "--model", "tiny-gpt2", "--attack", "hotflip", "typo", "--craft-profile", "fp",
            "--data", str(data), "--budget", "1", "--candidates", "2", "--max-new-tokens", "3", "--out", str(out)]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["n"] == 2 and res["truncated"] == 2
    assert "had their context cut" in capsys.readouterr().err
    # eval on the same questions: the gold answer scored after a prompt cut to the last positions
    ev = ["eval", "--model", "tiny-gpt2", "--task", "squad", "--data", str(data), "--max-new-tokens", "3",
          "--out", str(tmp_path / "ev")]
    assert main(ev) == 0
    rec = json.loads((tmp_path / "ev" / "results.json").read_text())["records"][0]
    assert rec["truncated"] == 2 and rec["answer_ppl"] > 1
