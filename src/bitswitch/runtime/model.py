"""The lean decoder the runtime runs: a transformers causal LM's blocks rebuilt on
:class:`RuntimeLinear` units, with a static KV cache (gpt-fast's shape of a decode step).

    logits = forward(ids (B, T), cache, pos)          -> (B, T, V) float32 (or (B, 1, V), last_only)

Each profile unit is one RuntimeLinear: Llama's q/k/v (and gate/up) are fused into one weight of
stacked rows, which quantizes exactly as the separate modules do (every bitswitch grid is row-local:
scales per output channel or per group of input columns), so one kernel call replaces three. The
residual stream, norms, rotary positions and attention run in float32, the KV cache is float32 (or
bf16, ``kv_dtype``, to halve it), and only the units' matmuls are bf16 (the kernels are fast only
there): with the float32 cache the logits differ from float32 fake quantization by bf16 rounding of
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


# with ``row_exact`` set, forwards of at most this many columns attend row by row
ROW_EXACT = 16


def _attend(q: Tensor, keys: Tensor, values: Tensor, mask: Tensor, group: int, pos: int,
            row_exact: bool = False) -> Tensor:
    """Attention of q (B, h, T, hd) float32 at columns pos..pos+T-1 over keys / values (B, h/group,
    pos+T, hd) with mask (B, 1, T, pos+T) -> (B, h, T, hd) float32.

    ``row_exact`` (up to :data:`ROW_EXACT` columns): each query row is computed as a one-column step
    computes it (its own call over keys 0..pos+i). Attention over a block of queries accumulates in
    another order than over one, so otherwise a k+1-column speculative verification differs in the
    last bits from the k+1 steps it stands for, and greedy near-ties can break the other way. The
    units' int4 / int8 / bf16 matmuls give each row the same bits whatever the row count (below the
    32 rows where int8 switches kernels), so with this a verification equals the steps bit for bit.
    Off by default: a prompt's forward then attends as fake quantization's does (in one call), which
    a8 profiles need for logit parity (a last-bit difference can move an activation across an 8-bit
    rounding boundary)."""
    t = q.shape[2]
    if row_exact and 1 < t <= ROW_EXACT:
        return torch.cat([_attend(q[:, :, i:i + 1], keys[:, :, :pos + i + 1], values[:, :, :pos + i + 1],
                                  mask[:, :, i:i + 1, :pos + i + 1], group, pos + i) for i in range(t)], 2)
    if keys.dtype != q.dtype:   # a bf16 cache: attention still in float32, on the rounded keys
        keys, values = keys.to(q.dtype), values.to(q.dtype)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=group > 1)


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
        self.row_exact = False          # short forwards attend row by row (see _attend): speculative verification
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
            o = _attend(q, keys, values, mask, a.group, pos, self.row_exact)
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
