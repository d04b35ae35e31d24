"""Rotate a plain transformers causal LM in place (QuaRot / SpinQuant style): same function in
floating point, weights without outlier channels, so low-bit weights lose less.

The residual stream x (row vectors, (..., d)) becomes ``x Q`` for one random orthogonal Q (d, d):
embedding rows ``E <- E Q``; every reader of the stream (through its norm) ``W <- W Q`` on its input
features; every writer (attention out, MLP down) ``W <- Q^T W``, ``b <- b Q`` on its output features.
Norms must commute with Q, so their scales are folded into the readers first (:mod:`.norms`).
Inside attention a per-head Hadamard H (head_dim) rotates the values and is undone by the output
projection (``v_proj`` / ``c_attn``'s value columns out, ``o_proj`` / ``c_proj`` in): attention mixes
positions, not features, so ``softmax(..) (V H) = (softmax(..) V) H``; with grouped-query attention
every head uses the same H. Queries and keys are not rotated (RoPE does not commute with H).

Llama family (llama, mistral, qwen2): ``RMSNorm(x Q) = RMSNorm(x) Q`` once its weight is 1, since
Q keeps norms. The final norm's weight is folded into the head, so a head tied to the embedding
is untied first (``tie_word_embeddings=False``): the model grows by one (vocab, d) matrix.

GPT-2: LayerNorm subtracts the mean, which a general Q does not commute with. Three exact steps:
(a) every residual writer is centered (:func:`.norms.center_writers`): the stream is the original
minus its mean, which LayerNorm removes anyway, so the all-ones direction carries nothing;
(b) each LayerNorm's gamma / beta go into the readers' weights / biases, the final one into the
untied head through the ones direction (:func:`.norms.fold_layernorm_into_head`);
(c) Q fixes the ones vector (``Q 1 = 1``, :func:`.hadamard.mean_fixing`), so
``mean(x Q) = mean(x)`` and ``LayerNorm(x Q) = LayerNorm(x) Q`` at gamma = 1, beta = 0.
LayerNorm stays LayerNorm (SliceGPT swaps it for RMSNorm; that would not be a standard GPT-2).

Not done: the online Hadamard before ``down_proj`` / ``mlp.c_proj`` (QuaRot's, for 4-bit
activations; the nonlinearity between up and down stops it from fusing) needs a module transformers
does not have, so the model would no longer be a standard one. Weight-only quantization does not
need it. Fusion runs in float64; parameters are cast back to their dtypes at the end.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import BitswitchError
from .hadamard import has_hadamard, mean_fixing, random_hadamard, random_orthogonal
from .linear_ops import rotate_input, rotate_output
from .norms import center_writers, fold_layernorm, fold_layernorm_into_head, fold_rmsnorm

KINDS = ("hadamard", "orthogonal")
LLAMA_TYPES = ("llama", "mistral", "qwen2")


def rotate_model(model: nn.Module, seed: int = 0, kind: str = "hadamard", heads: bool = True) -> dict:
    """Rotate ``model`` (a plain transformers GPT-2 or Llama-family causal LM, not yet switchable) in
    place; return a record of what was done (JSON-ready).

    ``kind``: ``hadamard`` (random Hadamard: ``H diag(s)`` for Llama, the mean-fixing
    ``H diag(1, s) H^T`` for GPT-2) or ``orthogonal`` (Haar-random, for sizes with no Hadamard
    construction). ``heads``: also fuse the per-head Hadamard into values / output projection."""
    if kind not in KINDS:
        raise BitswitchError(f"unknown rotation {kind!r}: use {' or '.join(KINDS)}")
    if hasattr(model, "bitswitch"):
        raise BitswitchError("rotate the plain model, before make_switchable (its units cache weights)")
    family = _family(model)
    cfg = model.config
    d = cfg.hidden_size
    n_heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or d // n_heads
    for what, n in (("hidden size", d), ("head dim", head_dim)):
        if kind == "hadamard" and not has_hadamard(n):
            raise BitswitchError(f"no Hadamard matrix of size {n} (the model's {what}): use the orthogonal rotation")
    gen = torch.Generator().manual_seed(seed)
    untied = untie_head(model)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    device = next(model.parameters()).device
    for p in model.parameters():
        p.data = p.data.double()
    with torch.no_grad():
        if family == "gpt2":
            q = mean_fixing(d, gen, kind).to(device)
            _rotate_gpt2(model, q, lambda: _head_rotation(head_dim, gen, kind).to(device), heads)
        else:
            q = (random_hadamard(d, gen) if kind == "hadamard" else random_orthogonal(d, gen)).to(device)
            _rotate_llama(model, q, lambda: _head_rotation(head_dim, gen, kind).to(device), heads)
    for name, p in model.named_parameters():
        p.data = p.data.to(dtypes[name])
    return {"rotation": kind, "seed": seed, "family": family, "hidden_size": d, "head_dim": head_dim,
            "per_head_values": heads, "untied_head": untied, "online_hadamard": False}


def _family(model: nn.Module) -> str:
    kind = getattr(model.config, "model_type", type(model).__name__)
    if kind == "gpt2" and hasattr(model, "transformer") and hasattr(model, "lm_head"):
        return "gpt2"
    if kind in LLAMA_TYPES and hasattr(model, "model") and hasattr(model, "lm_head"):
        return "llama"
    raise BitswitchError(f"cannot rotate model type {kind!r}: rotations support gpt2 and {', '.join(LLAMA_TYPES)}")


def _head_rotation(n: int, gen: torch.Generator, kind: str) -> Tensor:
    return random_hadamard(n, gen) if kind == "hadamard" else random_orthogonal(n, gen)


def untie_head(model: nn.Module) -> bool:
    """Give the LM head its own copy of a tied embedding; True if it was tied."""
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head.weight is not emb.weight:
        return False
    head.weight = nn.Parameter(emb.weight.detach().clone())
    model.config.tie_word_embeddings = False
    if hasattr(model, "all_tied_weights_keys"):   # transformers 5 caches the tying; save_pretrained reads it
        model.all_tied_weights_keys = {}
    return True


def _rotate_llama(model: nn.Module, q: Tensor, head_rotation, heads: bool) -> None:
    """Q (d, d) orthogonal; ``head_rotation()`` draws one (head_dim, head_dim) per layer."""
    m = model.model
    emb = m.embed_tokens.weight
    emb.data = emb.data @ q
    cfg = model.config
    n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    for layer in m.layers:
        attn, mlp = layer.self_attn, layer.mlp
        fold_rmsnorm(layer.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj])
        fold_rmsnorm(layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj])
        for reader in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            rotate_input(reader, q)
        for writer in (attn.o_proj, mlp.down_proj):
            rotate_output(writer, q)
        if heads:
            h = head_rotation()
            rotate_output(attn.v_proj, torch.block_diag(*[h] * n_kv))
            rotate_input(attn.o_proj, torch.block_diag(*[h] * cfg.num_attention_heads))
    fold_rmsnorm(m.norm, [model.lm_head])
    rotate_input(model.lm_head, q)


def _rotate_gpt2(model: nn.Module, q: Tensor, head_rotation, heads: bool) -> None:
    """Q (d, d) orthogonal with ``Q 1 = 1``; see the module docstring for the three steps."""
    tr = model.transformer
    center_writers(model)
    for block in tr.h:
        fold_layernorm(block.ln_1, [block.attn.c_attn])
        fold_layernorm(block.ln_2, [block.mlp.c_fc])
    fold_layernorm_into_head(tr.ln_f, model.lm_head)
    for table in (tr.wte.weight, tr.wpe.weight):
        table.data = table.data @ q
    d, n_heads = q.shape[0], model.config.num_attention_heads
    eye = torch.eye(d, dtype=q.dtype, device=q.device)
    for block in tr.h:
        rotate_input(block.attn.c_attn, q)
        rotate_input(block.mlp.c_fc, q)
        rotate_output(block.attn.c_proj, q)
        rotate_output(block.mlp.c_proj, q)
        if heads:   # c_attn's output is [q | k | v]: only the value columns turn
            per_head = torch.block_diag(*[head_rotation()] * n_heads)
            rotate_output(block.attn.c_attn, torch.block_diag(eye, eye, per_head))
            rotate_input(block.attn.c_proj, per_head)
    rotate_input(model.lm_head, q)
