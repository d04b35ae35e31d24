"""The decoder shape the runtime runs, read from a transformers config.

Two block families, as :mod:`bitswitch.units` knows them: Llama-style (RMSNorm, rotary positions,
grouped-query attention, SwiGLU MLP) and GPT-2 (LayerNorm, learned positions, fused qkv, GELU MLP).
Anything the lean decode step does not reproduce exactly (rotary scaling, sliding windows, attention
biases on Llama-style blocks, other activations) is refused here in one line, rather than run wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BitswitchError


@dataclass(frozen=True)
class Arch:
    """kind: ``llama`` or ``gpt2``; sizes as transformers names them; ``act``: the MLP activation."""

    kind: str
    n_layer: int
    hidden: int
    n_head: int
    n_kv_head: int
    head_dim: int
    vocab: int
    max_positions: int
    norm_eps: float
    rope_theta: float = 10000.0
    act: str = "silu"

    @property
    def group(self) -> int:
        """Query heads per key/value head."""
        return self.n_head // self.n_kv_head


def arch_of(config) -> Arch:
    """:class:`Arch` of a transformers ``config`` (LlamaConfig-like or GPT2Config)."""
    kind = getattr(config, "model_type", "")
    if kind == "gpt2":
        act = config.activation_function
        if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu"):
            raise BitswitchError(f"the runtime runs GPT-2 MLPs with gelu_new or gelu, not {act!r}")
        if getattr(config, "scale_attn_by_inverse_layer_idx", False) or getattr(config, "reorder_and_upcast_attn", False):
            raise BitswitchError("the runtime does not run GPT-2's scale_attn_by_inverse_layer_idx / "
                                 "reorder_and_upcast_attn variants: use --engine fake")
        return Arch("gpt2", config.n_layer, config.n_embd, config.n_head, config.n_head,
                    config.n_embd // config.n_head, config.vocab_size, config.n_positions,
                    config.layer_norm_epsilon, act=act)
    hidden, heads = config.hidden_size, config.num_attention_heads
    rope = getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    params = getattr(config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", rope_type)
    if rope_type != "default":
        raise BitswitchError(f"the runtime runs plain rotary positions, not {rope_type!r} rope scaling: "
                             "use --engine fake")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise BitswitchError("the runtime runs Llama-style blocks without attention / MLP biases: use --engine fake")
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        raise BitswitchError("the runtime does not run sliding-window attention: use --engine fake")
    act = getattr(config, "hidden_act", "silu")
    if act != "silu":
        raise BitswitchError(f"the runtime runs SwiGLU MLPs with silu, not {act!r}: use --engine fake")
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return Arch("llama", config.num_hidden_layers, hidden, heads,
                getattr(config, "num_key_value_heads", None) or heads, head_dim, config.vocab_size,
                config.max_position_embeddings, config.rms_norm_eps, float(theta), act)
