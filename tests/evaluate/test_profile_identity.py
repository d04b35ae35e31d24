"""Profiles are identified by what they run, not by their names: two files of one name, or a file
named like a built-in profile, are measured at their own precision, recorded under distinct names
and never reuse each other's records."""

import json

import pytest

import bitswitch as bs
from bitswitch.cli import main
from bitswitch.profiles import distinct_names, table_id, table_to_string
from bitswitch.switching import profile_id, resolve_profile

from .test_squad_eval import _squad_file


def _profile_file(path, mapping):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(mapping))
    return str(path)


@pytest.fixture
def llama():
    model, _ = bs.load_model("tiny-llama", device="cpu")
    return bs.make_switchable(model)


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("The quick brown fox jumps over the lazy dog.\n" * 20)
    return str(path)


def _wikitext(text, out, *profiles, extra=()):
    return ["eval", "--model", "tiny-llama", "--device", "cpu", "--task", "wikitext", "--data", text,
            "--window", "64", "--max-tokens", "128", "--out", str(out), *extra, "--profiles", *profiles]


def _records(out):
    return json.loads((out / "results.json").read_text())["records"]


def test_same_named_files_and_a_file_named_like_a_builtin_resolve_to_what_they_hold(tmp_path, llama):
    a = _profile_file(tmp_path / "a" / "search-avg4.json", {"default": "w4a8"})
    b = _profile_file(tmp_path / "b" / "search-avg4.json", {"default": "w8a8"})
    fake = _profile_file(tmp_path / "w8a8.json", {"default": "w4a8"})
    assert resolve_profile(llama, "w8a8")[1]["L0.attn_in"].spec == "w8a8"
    assert resolve_profile(llama, fake)[1]["L0.attn_in"].spec == "w4a8"        # not the cached built-in
    assert resolve_profile(llama, a)[1]["L0.attn_in"].spec == "w4a8"
    assert resolve_profile(llama, b)[1]["L0.attn_in"].spec == "w8a8"           # not a's resolution
    assert bs.set_profile(llama, b).name == "search-avg4"
    assert {m.precision.spec for _, _, m in bs.switching.unit_modules(llama) if m.precision} == {"w8a8"}
    # a file whose stem spells another profile is named with its suffix; one that agrees keeps its stem
    assert bs.parse_profile(fake).name == "w8a8.json"
    assert bs.parse_profile(_profile_file(tmp_path / "same" / "w8a8.json", {"default": "w8a8"})).name == "w8a8"
    # one set of unit profiles naming two same-named files runs each unit at its own file's precision
    mix = {u: (a if u.startswith("L0.") else b) for u in llama.bitswitch.units}
    bs.switching.set_unit_profiles(llama, mix)
    assert llama.bitswitch.table["L0.mlp_in"].spec == "w4a8" and llama.bitswitch.table["L1.mlp_in"].spec == "w8a8"


def test_profile_ids_are_content_digests(tmp_path, llama):
    same = _profile_file(tmp_path / "mine.json", {"L*": "w8a8"})
    assert profile_id(llama, "w8a8") == profile_id(llama, same) == profile_id(llama, "L*=w8a8")
    assert profile_id(llama, "w8a8") != profile_id(llama, "w4a8") != profile_id(llama, "w4g32a8")
    assert profile_id(llama, "fp") == table_id({u: "fp" for u in llama.bitswitch.units})
    assert len(profile_id(llama, "w8a8")) == 12
    # quantizer options are part of what a unit runs at
    asym = bs.make_switchable(bs.load_model("tiny-llama", device="cpu")[0], bs.QuantOptions(weight_symmetric=False))
    assert profile_id(asym, "w8a8") != profile_id(llama, "w8a8")
    # with profile keying an adapter follows the name, so the same precision under another name differs
    bs.add_adapters(llama, ["w8a8"])
    assert profile_id(llama, "w8a8") != profile_id(llama, same)
    assert profile_id(llama, "w8a8", adapters=False) == profile_id(llama, same)


def test_distinct_names_and_a_deterministic_table_string():
    pairs = [("search-avg4", "1a2b3c4d5e6f"), ("search-avg4", "abcdef012345"), ("w8a8", "999999999999")]
    assert distinct_names(pairs) == ["search-avg4-1a2b3c", "search-avg4-abcdef", "w8a8"]
    # a kept record of another id under the name: the new one is told apart, the kept one keeps it
    assert distinct_names([("x", "222222222222")], [("x", "111111111111")]) == ["x-222222"]
    assert distinct_names([("x", "111111111111")], [("x", "111111111111")]) == ["x"]
    # a tie for the most common spec goes to the first seen, whatever the string hash seed
    t = bs.resolve("w8a8;L1.*=w4a8", [f"L{i}.{r}" for i in range(2) for r in ("attn_in", "mlp_in")])
    assert table_to_string(t) == "w8a8;L1.attn_in=w4a8;L1.mlp_in=w4a8"


def test_eval_measures_same_named_profiles_each_at_its_own_precision(tmp_path, text, capsys):
    a = _profile_file(tmp_path / "a" / "search-avg4.json", {"default": "w6a8"})
    b = _profile_file(tmp_path / "b" / "search-avg4.json", {"default": "w4a16"})
    fake = _profile_file(tmp_path / "w8a8.json", {"default": "w4a8"})
    out = tmp_path / "o"
    assert main(_wikitext(text, out, "w8a8", fake, a, b)) == 0
    recs = {r["profile"]: r for r in _records(out)}
    assert len(recs) == 4 and len({r["profile_id"] for r in recs.values()}) == 4
    assert recs["w8a8"]["avg_w_bits"] == 8 and recs["w8a8.json"]["avg_w_bits"] == 4
    assert recs["w8a8.json"]["ppl"] != recs["w8a8"]["ppl"]
    (na, ra), (nb, rb) = [(n, r) for n, r in recs.items() if n.startswith("search-avg4")]
    assert (ra["avg_w_bits"], rb["avg_w_bits"]) == (6, 4) and ra["ppl"] != rb["ppl"]
    assert na == f"search-avg4-{ra['profile_id'][:6]}" and nb == f"search-avg4-{rb['profile_id'][:6]}"
    assert "recorded as 'search-avg4-" in capsys.readouterr().err


def test_eval_lists_one_content_twice_measures_it_once(tmp_path, text, capsys):
    same = _profile_file(tmp_path / "eight.json", {"default": "w8a8"})
    out = tmp_path / "o"
    assert main(_wikitext(text, out, "w8a8", same)) == 0
    (rec,) = _records(out)
    assert rec["profile"] == "w8a8" and rec["aliases"] == ["eight"]
    assert "'eight' runs exactly as 'w8a8'" in capsys.readouterr().err


def test_resume_never_reuses_a_record_of_another_precision_under_the_same_name(tmp_path, text, capsys):
    prof = tmp_path / "p" / "mine.json"
    out = tmp_path / "o"
    _profile_file(prof, {"default": "w8a8"})
    assert main(_wikitext(text, out, str(prof))) == 0
    _profile_file(prof, {"default": "w4a8"})            # same name, other content: measured, not skipped
    assert main(_wikitext(text, out, str(prof))) == 0
    assert "already measured" not in capsys.readouterr().err
    recs = _records(out)
    assert [r["avg_w_bits"] for r in recs] == [4, 8]
    assert recs[0]["profile"] == f"mine-{recs[0]['profile_id'][:6]}" and recs[1]["profile"] == "mine"
    # the same content under any name is reused
    assert main(_wikitext(text, out, "w4a8")) == 0
    assert "already measured" in capsys.readouterr().err and len(_records(out)) == 2


def test_records_from_before_profile_ids_are_measured_again(tmp_path, text, capsys):
    out = tmp_path / "o"
    assert main(_wikitext(text, out, "fp", "w8a8")) == 0
    doc = json.loads((out / "results.json").read_text())
    for r in doc["records"]:
        del r["profile_id"]
    (out / "results.json").write_text(json.dumps(doc))
    assert main(_wikitext(text, out, "w8a8")) == 0
    assert "predates profile ids" in capsys.readouterr().err
    recs = _records(out)
    assert [(r["profile"], "profile_id" in r) for r in recs] == [("w8a8", True), ("fp", False)]


def test_squad_predictions_of_same_named_profiles_do_not_collide(tmp_path):
    data = _squad_file(tmp_path / "dev.json", 3)
    a = _profile_file(tmp_path / "a" / "search-avg4.json", {"default": "w4a8"})
    b = _profile_file(tmp_path / "b" / "search-avg4.json", {"default": "w8a8"})
    out = tmp_path / "o"
    assert main(["eval", "--model", "tiny-llama", "--device", "cpu", "--task", "squad", "--data", str(data),
                 "--max-new-tokens", "2", "--out", str(out), "--profiles", a, b]) == 0
    names = [r["profile"] for r in _records(out)]
    assert len(set(names)) == 2 and all(n.startswith("search-avg4-") for n in names)
    assert sorted(p.name for p in out.glob("predictions-*.jsonl")) == sorted(f"predictions-{n}.jsonl" for n in names)


def test_every_profile_is_resolved_before_the_first_is_measured(tmp_path, text, capsys):
    out = tmp_path / "o"
    assert main(_wikitext(text, out, "w8a8", "w4g7a8")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "group size 7 does not divide" in err
    assert not (out / "results.json").exists()          # nothing measured, nothing written
    assert main(_wikitext(text, out, "w8a8", extra=["--group-size", "48"])) == 2
    assert "--group-size 48" in capsys.readouterr().err
