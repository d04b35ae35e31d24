"""The lean decoder the runtime runs: a transformers causal LM's blocks rebuilt on
:class:`RuntimeLinear` units, with a static KV cache (gpt-fast's shape of a decode step).

    logits = forward(ids (B, T), cache, pos)          -> (B, T, V) float32 (or (B, 1, V), last_only)

Each profile unit is one RuntimeLinear: Llama's q/k/v (and gate/up) are fused into one weight of
stacked rows, which quantizes exactly as the separate modules do (every bitswitch grid is row-local:
scales per output channel or per group of input columns), so one kernel call replaces three. The
residual stream, norms, rotary positions and attention run in float32, the KV cache is float32 (or
bf16, ``kv_dtype``, to halve it: attention then runs in bf16 on it), and only the units' matmuls are
bf16 (the kernels are fast only there): with the float32 cache the logits differ from float32 fake quantization by bf16 rounding of
each unit's input and output, no more.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Arch
from .kv_cache import KVCache, attention_mask, positions
from .linear import RuntimeLinear

ROLES = ("attn_in", "attn_out", "mlp_in", "mlp_out")


def _attend_bf16(q: Tensor, keys: Tensor, values: Tensor, mask: Tensor, group: int) -> Tensor:
    """Attention on a bf16 cache: q (B, h, T, hd) float32, keys / values (B, h/group, S, hd) bf16, mask
    (B, 1, T, S) bool -> (B, h, T, hd) float32. bf16 products, softmax in float32. Written out because
    torch 2.13's CPU ``scaled_dot_product_attention`` runs 5-6x slower in bf16 than in float32 at decode
    shapes, and casting the cache to float32 copies every layer's keys and values at every step."""
    b, h, t, hd = q.shape
    qg = (q * hd ** -0.5).to(keys.dtype).reshape(b, h // group, group * t, hd)   # heads of a kv head together
    # keys @ q^T: each cache slice (S, hd) is read as it lies (q @ keys^T would copy it transposed)
    scores = (keys @ qg.transpose(-1, -2)).transpose(-1, -2).float()              # (B, kv, group*T, S)
    scores = scores.masked_fill(~(mask.repeat(1, 1, group, 1) if group > 1 else mask), float("-inf"))
    return (scores.softmax(-1).to(keys.dtype) @ values).float().reshape(b, h, t, hd)


class Layer(nn.Module):
    """One block: its four units (``ModuleDict`` by role) and its norm weights (float32)."""

    def __init__(self, units: dict[str, RuntimeLinear], norms: dict[str, Tensor]):
        super().__init__()
        self.units = nn.ModuleDict(units)
        self.norms = norms   # {"in_w", "post_w"} (+ "in_b", "post_b" for GPT-2's LayerNorm)


class RuntimeModel(nn.Module):
    """``layers``: :class:`Layer` list; ``head``: the head unit; ``embed`` (V, H) bf16 (and ``wpe``
    for GPT-2); ``final`` the last norm's weight (and bias)."""

    def __init__(self, arch: Arch, embed: Tensor, layers: list[Layer], final: dict[str, Tensor],
                 head: RuntimeLinear, wpe: Tensor | None = None):
        super().__init__()
        self.arch, self.embed, self.wpe, self.final = arch, embed, wpe, final
        self.layers = nn.ModuleList(layers)
        self.head = head
        self.kv_dtype = torch.float32   # the KV cache's dtype (see set_kv_dtype): module state, as precision is
        if arch.kind == "llama":
            dim = arch.head_dim
            self.inv_freq = 1.0 / (arch.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))

    def units(self):
        """Every (unit name, RuntimeLinear), in profile order."""
        for i, layer in enumerate(self.layers):
            for role in ROLES:
                yield f"L{i}.{role}", layer.units[role]
        yield "head", self.head

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        a = self.arch
        if max_len > a.max_positions:
            from ..errors import BitswitchError

            raise BitswitchError(f"{max_len} tokens exceed the model's context of {a.max_positions}: "
                                 "shorten the prompt or --max-new-tokens")
        return KVCache(a.n_layer, batch, a.n_kv_head, max_len, a.head_dim, self.embed.device, self.kv_dtype)

    # -- the decode step -------------------------------------------------------------------------
    def _norm(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        if self.arch.kind == "gpt2":
            return F.layer_norm(x, (x.shape[-1],), w, b, self.arch.norm_eps)
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.arch.norm_eps))

    def _rope(self, pos_ids: Tensor) -> tuple[Tensor, Tensor]:
        freqs = pos_ids[..., None].float() * self.inv_freq                    # (B, T, hd/2)
        emb = torch.cat((freqs, freqs), -1)[:, None]                           # (B, 1, T, hd)
        return emb.cos(), emb.sin()

    @staticmethod
    def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        half = x.shape[-1] // 2
        rot = torch.cat((-x[..., half:], x[..., :half]), -1)
        return x * cos + rot * sin

    def forward(self, ids: Tensor, cache: KVCache, pos: int, last_only: bool | int = False) -> Tensor:
        """ids (B, T) at cache columns pos..pos+T-1 (``cache.valid`` set for them by the caller)
        -> logits (B, T, V) float32, or (B, k, V) of the last k columns when ``last_only`` is k
        (True: 1); the head, a (V, H) matmul per column, runs only there."""
        a = self.arch
        b, t = ids.shape
        pos_ids = positions(cache.valid, pos, t)                              # (B, T)
        mask = attention_mask(cache.valid, pos, t)                            # (B, 1, T, pos+T)
        x = F.embedding(ids, self.embed).float()                              # (B, T, H)
        if a.kind == "gpt2":
            x = x + F.embedding(pos_ids, self.wpe).float()
            cos = sin = None
        else:
            cos, sin = self._rope(pos_ids)
        nq, nkv, hd = a.n_head * a.head_dim, a.n_kv_head * a.head_dim, a.head_dim
        for i, layer in enumerate(self.layers):
            u, n = layer.units, layer.norms
            qkv = u["attn_in"](self._norm(x, n["in_w"], n.get("in_b"))).float()
            q, k, v = qkv.split((nq, nkv, nkv), -1)
            q = q.view(b, t, a.n_head, hd).transpose(1, 2)                    # (B, h, T, hd)
            k = k.view(b, t, a.n_kv_head, hd).transpose(1, 2)
            v = v.view(b, t, a.n_kv_head, hd).transpose(1, 2)
            if cos is not None:
                q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            cache.k[i][:, :, pos:pos + t] = k
            cache.v[i][:, :, pos:pos + t] = v
            keys, values = cache.k[i][:, :, :pos + t], cache.v[i][:, :, :pos + t]
            if keys.dtype == torch.float32:
                o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=a.group > 1)
            else:
                o = _attend_bf16(q, keys, values, mask, a.group)
            x = x + u["attn_out"](o.transpose(1, 2).reshape(b, t, nq)).float()
            h = u["mlp_in"](self._norm(x, n["post_w"], n.get("post_b"))).float()
            if a.kind == "gpt2":
                h = F.gelu(h, approximate="none" if a.act == "gelu" else "tanh")
            else:
                g, up = h.chunk(2, -1)
                h = F.silu(g) * up
            x = x + u["mlp_out"](h).float()
        if last_only:
            x = x[:, -int(last_only):]
        x = self._norm(x, self.final["w"], self.final.get("b"))
        return self.head(x).float()
