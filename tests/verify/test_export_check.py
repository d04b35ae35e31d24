"""verify-gguf refuses, in one line, an export that is not what it would be compared with."""

import json

import pytest

import bitswitch as bs
from bitswitch.errors import BitswitchError
from bitswitch.export.gguf_export import ADAPTER_FILE, MANIFEST, MODEL_FILE, export_gguf
from bitswitch.switching import unit_modules
from bitswitch.verify.export_check import check_adapter, check_export, read_manifest, unit_types
from tests.export.test_gguf_export import tiny

pytest.importorskip("gguf")
PROFILE = "w4a8;L1.mlp_*=w8a8"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """tiny-llama with adapters, exported at PROFILE: (model, directory, manifest)."""
    model, tok = tiny("tiny-llama", adapters=PROFILE)
    out = tmp_path_factory.mktemp("gguf") / "w4"
    export_gguf(model, tok, PROFILE, out)
    bs.set_profile(model, PROFILE)
    return model, str(out), read_manifest(str(out))


def one_line(exc) -> str:
    assert "\n" not in str(exc.value)
    return str(exc.value)


def test_a_matching_export_passes(exported):
    model, out, manifest = exported
    assert manifest["profile"] == PROFILE
    types = unit_types(model)
    assert types["L0.attn_in"] == "Q4_0" and types["L1.mlp_in"] == "Q8_0" and types["head"] is None
    check_export(manifest, PROFILE, types, True, out)
    check_adapter(model, out)


def test_profile_types_and_adapters_must_match(exported):
    model, out, manifest = exported
    with pytest.raises(BitswitchError, match=r"made at profile 'w4a8;L1.mlp_\*=w8a8', not 'w4a8'") as exc:
        check_export(manifest, "w4a8", unit_types(model), True, out)
    one_line(exc)
    asym = {**unit_types(model), "L0.attn_in": "Q4_1"}
    with pytest.raises(BitswitchError, match=r"stores L0.attn_in as Q4_0 .* gives Q4_1 \(--weight-asym makes w4 Q4_1\)"):
        check_export(manifest, PROFILE, asym, True, out)
    fp = {**unit_types(model), "L1.mlp_in": None}
    with pytest.raises(BitswitchError, match=r"stores L1.mlp_in as Q8_0 .* gives unquantized"):
        check_export(manifest, PROFILE, fp, True, out)
    with pytest.raises(BitswitchError, match=rf"has {ADAPTER_FILE} but bitswitch runs .* without adapters"):
        check_export(manifest, PROFILE, unit_types(model), False, out)


def test_another_adapter_is_refused(exported):
    model, out, _ = exported
    other, _ = tiny("tiny-llama", adapters=PROFILE)
    bs.set_profile(other, PROFILE)
    for _, _, mod in unit_modules(other):
        for ad in mod.adapters.values():
            ad.lora_A.data.mul_(1.5)
    with pytest.raises(BitswitchError, match=r"holds another adapter than --adapters \(blk\.0\.attn_q\.weight"):
        check_adapter(other, out)


def test_bad_export_directories(tmp_path):
    with pytest.raises(BitswitchError, match="is not a directory"):
        read_manifest(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BitswitchError, match=rf"has no {MODEL_FILE} and {MANIFEST}"):
        read_manifest(str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / MODEL_FILE).write_bytes(b"GGUF")
    (bad / MANIFEST).write_text("{not json")
    with pytest.raises(BitswitchError, match="cannot be read"):
        read_manifest(str(bad))
    (bad / MANIFEST).write_text(json.dumps({"format": "bitswitch-export"}))
    with pytest.raises(BitswitchError, match="is not a bitswitch-gguf manifest"):
        read_manifest(str(bad))
