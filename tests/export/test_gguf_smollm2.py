"""``export --format gguf`` of the real model: SmolLM2-135M, whose source is itself a Q4_1 GGUF.

At ``w4`` (Q4_0) every block unit is Q4_0 and the source's metadata and tokenizer are carried over.
At ``w4 --weight-asym`` (Q4_1) the export re-quantizes weights that already lie on the source's Q4_1
grid: every block tensor comes out byte for byte as in the source file, which checks the grid, the
tensor names and the q/k row order against llama.cpp's own file at once.
"""

import json
import os

import numpy as np
import pytest

from bitswitch.cli import main
from bitswitch.export.gguf_export import MANIFEST, MODEL_FILE
from tests.conftest import require_smollm2

pytestmark = pytest.mark.integration

KEYS = ("general.architecture", "general.type", "general.file_type", "general.quantization_version",
        "llama.block_count", "llama.embedding_length", "llama.attention.head_count", "llama.attention.head_count_kv",
        "llama.rope.freq_base", "llama.context_length", "tokenizer.ggml.model", "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.eos_token_id", "tokenizer.chat_template")


def export(tmp_path, name: str, *extra: str):
    out = tmp_path / name
    assert main(["export", "--format", "gguf", "--model", "smollm2-135m", "--profile", "w4", "--device", "cpu",
                 "--out", str(out), *extra]) == 0
    return out


def test_smollm2_w4_exports_q4_0_with_the_source_metadata(tmp_path):
    require_smollm2()
    import gguf

    from bitswitch.models import smollm2_path

    out = export(tmp_path, "w4")
    reader = gguf.GGUFReader(str(out / MODEL_FILE))
    source = gguf.GGUFReader(os.path.join(*smollm2_path()))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    blocks = [n for n in types if n.startswith("blk.") and "norm" not in n]
    assert len(blocks) == 30 * 7 and {types[n] for n in blocks} == {"Q4_0"}
    assert {types[n] for n in types if "norm" in n} == {"F32"} and types["token_embd.weight"] == "F16"
    assert "output.weight" not in types                    # tied head at fp: llama.cpp reads token_embd
    assert set(types) == {t.name for t in source.tensors}
    fields = reader.fields
    for key in KEYS:
        assert key in fields, key
    assert fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q4_0)
    for key in ("llama.block_count", "tokenizer.ggml.pre", "tokenizer.ggml.merges", "tokenizer.chat_template"):
        assert fields[key].contents() == source.fields[key].contents()
    manifest = json.loads((out / MANIFEST).read_text())
    assert set(manifest["units"].values()) == {"Q4_0"} and manifest["source_gguf"] == smollm2_path()[1]


def test_smollm2_w4_asym_reproduces_the_source_q4_1_bytes(tmp_path):
    require_smollm2()
    import gguf

    from bitswitch.models import smollm2_path

    out = export(tmp_path, "w4asym", "--weight-asym")
    got = {t.name: t for t in gguf.GGUFReader(str(out / MODEL_FILE)).tensors}
    source = [t for t in gguf.GGUFReader(os.path.join(*smollm2_path())).tensors if t.tensor_type.name == "Q4_1"]
    assert len(source) == 210
    for t in source:
        assert got[t.name].tensor_type.name == "Q4_1"
        assert np.array_equal(np.asarray(got[t.name].data), np.asarray(t.data)), t.name
