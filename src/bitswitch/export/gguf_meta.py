"""GGUF metadata: copied from a source GGUF (SmolLM2), or built from a Hugging Face tokenizer.

Built vocabularies follow llama.cpp's ``convert_hf_to_gguf.py`` for byte-level BPE tokenizers
(``_set_vocab_gpt2``): ``tokenizer.ggml.model = gpt2``, the tokens by id (ids the tokenizer lacks
up to the embedding's rows as ``[PADi]``, type unused), special added tokens as control tokens,
other added tokens as user-defined, the merges as ``"a b"`` strings, the special token ids and
whether a BOS/EOS is added. ``tokenizer.ggml.pre`` (which pre-tokenizer regex llama.cpp runs)
is recognised from the tokenizer's own pre-tokenizer: GPT-2's byte-level regex alone is
``gpt-2``; per-digit splitting then GPT-2's regex is ``smollm``; anything else is a one-line error
rather than a guess that would tokenize differently.
"""

from __future__ import annotations

import json

from ..errors import BitswitchError

#: keys never copied from a source GGUF: the reader's own header fields, and what the export sets
NOT_COPIED = ("GGUF.", "general.architecture", "general.file_type", "general.quantization_version")
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5


def copy_metadata(writer, source_path: str, expect: dict[str, int]) -> int:
    """Copy every key of the GGUF at ``source_path`` but :data:`NOT_COPIED` into ``writer``; returns the
    count. ``expect``: ``{key: value}`` the source must hold for the model being exported (its
    architecture's block count, width, vocabulary), else a one-line error."""
    import gguf

    reader = gguf.GGUFReader(source_path)
    for key, want in expect.items():
        field = reader.fields.get(key)
        got = None if field is None else field.contents()
        if got != want:
            raise BitswitchError(f"the source GGUF {source_path} has {key} = {got!r}, the model {want!r}: "
                                 "it is not this model's source")
    copied = 0
    for key, field in reader.fields.items():
        if key.startswith(NOT_COPIED):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
        copied += 1
    return copied


def add_vocab(writer, tokenizer, n_vocab: int) -> None:
    """Write a byte-level BPE tokenizer as llama.cpp's ``gpt2`` vocabulary of ``n_vocab`` tokens."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str()) if hasattr(tokenizer, "backend_tokenizer") else {}
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise BitswitchError(f"export --format gguf builds byte-level BPE vocabularies, not {model.get('type')!r}: "
                             "convert this tokenizer with llama.cpp's convert_hf_to_gguf.py")
    vocab = tokenizer.get_vocab()
    if len(vocab) > n_vocab:
        raise BitswitchError(f"the tokenizer has {len(vocab)} tokens, the embedding {n_vocab} rows")
    by_id = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(TOKEN_UNUSED)
            continue
        tokens.append(by_id[i])
        types.append(TOKEN_NORMAL if i not in added else TOKEN_CONTROL if added[i].special else TOKEN_USER_DEFINED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(spec.get("pre_tokenizer")))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    if merges:  # gguf-py cannot write an empty array: a merge-less BPE has no merges key
        writer.add_token_merges(merges)
    for kind in ("bos", "eos", "unk", "pad"):
        tid = getattr(tokenizer, f"{kind}_token_id", None)
        if tid is not None:
            getattr(writer, f"add_{kind}_token_id")(tid)
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    writer.add_add_bos_token(bos is not None and len(with_special) > len(plain) and with_special[0] == bos)
    writer.add_add_eos_token(eos is not None and len(with_special) > len(plain) and with_special[-1] == eos)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def pre_tokenizer_name(pre: dict | None) -> str:
    """llama.cpp's name for a tokenizers pre-tokenizer spec (see the module docstring)."""
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre] if pre else []
    kinds = [(s.get("type"), s.get("use_regex", True), s.get("individual_digits")) for s in steps]
    if kinds == [("ByteLevel", True, None)]:
        return "gpt-2"
    if kinds == [("Digits", True, True), ("ByteLevel", True, None)]:
        return "smollm"
    raise BitswitchError(f"no llama.cpp pre-tokenizer is known for {json.dumps(pre)[:120]}: convert this "
                         "tokenizer with llama.cpp's convert_hf_to_gguf.py")
