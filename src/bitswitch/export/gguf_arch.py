"""What llama.cpp calls a Hugging Face model's parts: architecture, tensor names, q/k row order,
hyper-parameters (the part of llama.cpp's ``convert_hf_to_gguf.py`` that bitswitch's models need).

Tensor names come from gguf-py's own map (``gguf.get_tensor_name_map``): ``token_embd``,
``blk.N.attn_q``, ``blk.N.ffn_gate``, ``output_norm``, ``output``, ...

Llama's q/k rows: Hugging Face checkpoints order each head's rotary pairs as two halves
(``rotate_half``), llama.cpp interleaves them. ``convert_hf_to_gguf.py`` permutes the rows of q
(with the attention head count) and k (with the key/value head count); transformers' GGUF loader
undoes it. A row permutation moves whole rows, and the blocks run along the input dim, so the
quantized rows are the same bytes in another order.
"""

from __future__ import annotations

import numpy as np

from ..errors import BitswitchError

#: Hugging Face model_type -> llama.cpp architecture (mistral runs as llama there, as in its converter)
ARCHS = {"llama": "llama", "mistral": "llama", "gpt2": "gpt2"}


def gguf_arch(config) -> str:
    """``'llama'`` or ``'gpt2'`` for a model config; a one-line error for anything else."""
    kind = getattr(config, "model_type", None)
    if kind not in ARCHS:
        raise BitswitchError(f"export --format gguf writes Llama and GPT-2 models, not {kind!r}: "
                             "use --format bitswitch for this model")
    scaling = getattr(config, "rope_scaling", None) or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) if isinstance(scaling, dict) else "default"
    if rope_type not in ("default", None):
        raise BitswitchError(f"export --format gguf does not write rope scaling ({rope_type!r}) yet: "
                             "use --format bitswitch for this model")
    return ARCHS[kind]


def name_map(arch: str, n_blocks: int):
    import gguf

    kind = {"llama": gguf.MODEL_ARCH.LLAMA, "gpt2": gguf.MODEL_ARCH.GPT2}[arch]
    return gguf.get_tensor_name_map(kind, n_blocks)


def tensor_name(names, hf_name: str) -> str:
    """``model.layers.0.self_attn.q_proj.weight`` -> ``blk.0.attn_q.weight``."""
    name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise BitswitchError(f"tensor {hf_name!r} has no llama.cpp name: export --format gguf writes the "
                             "Llama and GPT-2 layouts of transformers")
    return name


def rotary_heads(arch: str, gguf_name: str, config) -> int | None:
    """The head count whose rows llama.cpp permutes for ``gguf_name`` (q: heads, k: kv heads), else None."""
    if arch != "llama":
        return None
    heads = config.num_attention_heads
    if ".attn_q." in gguf_name:
        return heads
    if ".attn_k." in gguf_name:
        return getattr(config, "num_key_value_heads", None) or heads
    return None


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``permute``: within each head, rows ``[0..d/2) + [d/2..d)`` -> interleaved pairs.
    ``w``: (rows, ...) with rows = n_head * head_dim; returns a new array of the same shape."""
    rows = w.shape[0]
    return np.ascontiguousarray(w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:])
                                .swapaxes(1, 2).reshape(w.shape))


def add_hparams(writer, arch: str, config, n_vocab: int) -> None:
    """The architecture keys llama.cpp reads (``llama.block_count``, ...), from a transformers config."""
    if arch == "gpt2":
        writer.add_context_length(config.n_positions)
        writer.add_embedding_length(config.n_embd)
        writer.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
        writer.add_block_count(config.n_layer)
        writer.add_head_count(config.n_head)
        writer.add_layer_norm_eps(config.layer_norm_epsilon)
        return
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None)) if isinstance(rope, dict) else None
    writer.add_vocab_size(n_vocab)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if theta is not None:
        writer.add_rope_freq_base(float(theta))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
