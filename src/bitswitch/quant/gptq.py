"""GPTQ rounding (Frantar et al., 2022) on bitswitch's own weight grids, as pure functions.

Round-to-nearest picks each code on its own. GPTQ picks the codes of a weight ``W`` (out, in) one
input column at a time and, after each, moves the columns not yet rounded to cancel the error it
made, weighted by how the layer's inputs correlate: it minimizes ``||W X - Q X||^2`` over the
calibration inputs ``X`` (in, n), whose curvature is the Hessian ``H = 2/n X X^T`` (in, in).

What differs from the reference implementation: the grid is fixed beforehand. Scales and zero
points are :func:`~bitswitch.quant.functional.weight_qparams` of the *original* weight, exactly as
round-to-nearest computes them (same layout, same fp16 rounding), and only the integer codes
change. So a GPTQ rounding is a drop-in replacement for ``quantize_weight``'s codes:
``QuantLinear.set_rounding``, export and the runtime take it unchanged. (The reference re-fits a
group's scale on the already-updated weights; that would make the scales depend on the Hessian.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import WeightQuant
from .functional import _grouped, qrange, weight_qparams


def check_gptq_config(cfg: WeightQuant) -> None:
    """ValueError when GPTQ cannot round on ``cfg``'s grid, saying why."""
    if cfg.grid != "independent":
        why = ("every width is the top bits of one int8 master, so a width has no codes of its own"
               if cfg.grid == "nested" else "llama.cpp's blocks fix their codes from the weight alone")
        raise ValueError(f"GPTQ rounds on the independent grid only: on the {cfg.grid} grid {why}")
    if cfg.method != "uniform":
        raise ValueError("GPTQ rounds on the uniform quantizer only: the log quantizer's levels are not evenly "
                         "spaced, so its error compensation is not the linear one GPTQ assumes")


class HessianAccumulator:
    """``H = 2/n sum_t x_t x_t^T`` over the calibration tokens ``x_t`` (in,) a layer sees.

    Sums in float64 (the sum over tens of thousands of tokens of products of activations with
    outliers loses digits in float32, and the Cholesky factorizations downstream amplify them);
    each batch's ``X^T X`` is formed in float64 too. ``add`` takes any (..., in) tensor, the rows
    of a padded batch already removed by the caller where they matter.
    """

    def __init__(self, n_in: int, device="cpu"):
        self.sum = torch.zeros(n_in, n_in, dtype=torch.float64, device=device)
        self.n = 0

    def add(self, x: Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(self.sum.device, torch.float64)
        self.sum.addmm_(x.T, x)
        self.n += x.shape[0]

    def hessian(self) -> Tensor:
        """(in, in) float64; zeros when nothing was added."""
        return self.sum * (2.0 / self.n) if self.n else self.sum.clone()


def _inverse_cholesky(h: Tensor, damp: float) -> Tensor:
    """Upper Cholesky factor ``U`` of ``(H + damp * mean(diag H) I)^-1`` (in, in), float64.

    Row ``i`` of ``U`` (from ``i`` on) is what GPTQ's update needs after rounding column ``i``:
    with ``H^-1 = U^T U``, the inverse Hessian of the columns left after eliminating the first
    ``i`` is read off ``U`` without recomputing it (the Cholesky trick of the paper)."""
    h = h.clone()
    idx = torch.arange(h.shape[0], device=h.device)
    mean_diag = h.diagonal().mean()
    h[idx, idx] += damp * (mean_diag if mean_diag > 0 else 1.0)
    l = torch.linalg.cholesky(h)
    # H^-1 = L^-T L^-1 from one triangular solve (torch.cholesky_inverse is far slower on CPU here)
    linv = torch.linalg.solve_triangular(l, torch.eye(h.shape[0], dtype=h.dtype, device=h.device), upper=False)
    hinv = linv.T @ linv
    return torch.linalg.cholesky(hinv, upper=True)


def gptq_codes(w: Tensor, hessian: Tensor, cfg: WeightQuant, block: int = 128, damp: float = 0.01,
               act_order: bool = False, refit_groups: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """GPTQ codes of ``w`` (out, in) on ``cfg``'s grid, given the layer's input Hessian (in, in).

    Returns ``(codes int32 (out, in), scale, zero)`` with ``scale`` / ``zero`` (out, groups) bitwise
    those of :func:`~bitswitch.quant.functional.quantize_weight` (``zero`` None when symmetric);
    codes lie in the grid's range. Dequantized they give ``(codes - zero) * scale`` as usual.

    ``block``: columns per lazy batch (the result does not depend on it beyond float rounding).
    ``damp``: fraction of the mean Hessian diagonal added to it (keeps the Cholesky stable).
    ``act_order``: round columns in order of decreasing ``H`` diagonal (largest inputs first); the
    grid is fixed beforehand, so groups stay the contiguous column ranges of the original order.
    Dead inputs (``H[i, i] == 0``: never non-zero in calibration) are rounded to nearest and pass
    no error on; with a diagonal Hessian every column is independent and the result is exactly
    round-to-nearest.
    ``refit_groups`` (grouped grids, not with ``act_order``): fit each group's scale / zero when
    rounding reaches the group, from the weights as earlier columns' errors have moved them (as
    reference GPTQ does), instead of from the original weights; the grid then covers what is rounded.
    """
    check_gptq_config(cfg)
    if refit_groups and (cfg.group_size is None or act_order or block % cfg.group_size):
        raise ValueError("refit_groups needs a grouped grid, no act_order and a block that is a multiple of the group")
    if w.dim() != 2 or tuple(hessian.shape) != (w.shape[1], w.shape[1]):
        raise ValueError(f"weight (out, in) and Hessian (in, in) expected, got {tuple(w.shape)} and "
                         f"{tuple(hessian.shape)}")
    n_out, n_in = w.shape
    w = w.detach().float()
    scale, zero = weight_qparams(w, cfg)            # the round-to-nearest grid, fixed
    lo, hi = qrange(cfg.bits, cfg.symmetric)
    # per column: its group's scale / zero, (out, in); the same float32 values quantize() divides by
    s_col = _grouped(torch.ones_like(w), cfg.group_size).mul(scale.unsqueeze(-1)).reshape(n_out, n_in)
    z_col = None if zero is None else \
        _grouped(torch.ones_like(w), cfg.group_size).mul(zero.unsqueeze(-1)).reshape(n_out, n_in)

    h = hessian.detach().to(w.device, torch.float64).clone()
    dead = h.diagonal() == 0
    # A dead column's row and column of H are zero: a unit diagonal there decouples it (its inverse
    # factor has no off-diagonal entries), so it is rounded to nearest and moves no other column.
    h[dead, dead] = 1.0
    perm = torch.argsort(h.diagonal(), descending=True, stable=True) if act_order else None
    if perm is not None:
        w, s_col, h = w[:, perm], s_col[:, perm], h[perm][:, perm]
        z_col = None if z_col is None else z_col[:, perm]
    u = _inverse_cholesky(h, damp).to(torch.float32)

    # Work on the transpose (in, out): a column of W is then a contiguous row, which keeps the
    # per-column steps (the inner loop, in times) cheap.
    wt = w.T.contiguous()
    st = s_col.T.contiguous()
    zt = None if z_col is None else z_col.T.contiguous()
    codes = torch.empty(n_in, n_out, dtype=torch.float32, device=w.device)
    for i1 in range(0, n_in, block):
        i2 = min(i1 + block, n_in)
        w1 = wt[i1:i2].clone()                 # this block's columns (rows here), updated as it goes
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for j in range(i2 - i1):
            if refit_groups and (i1 + j) % cfg.group_size == 0:
                _refit(w1[j:j + cfg.group_size], cfg, (i1 + j) // cfg.group_size, scale, zero,
                       st[i1 + j:i1 + j + cfg.group_size], None if zt is None else zt[i1 + j:i1 + j + cfg.group_size])
            col = w1[j]
            s = st[i1 + j]
            # quantize() of functional.py, column-wise: same ops in float32, so bitwise RTN when
            # nothing has moved this column
            q = torch.round(col / s)
            if zt is not None:
                q = q + zt[i1 + j]
            q = q.clamp(lo, hi)
            codes[i1 + j] = q
            deq = (q - zt[i1 + j]) * s if zt is not None else q * s
            e = (col - deq) / u1[j, j]
            # spread the error over the block's later columns now...
            w1[j + 1:] -= u1[j, j + 1:].unsqueeze(1) * e.unsqueeze(0)
            err1[j] = e
        # ...and over the columns after the block once, as one matmul (the lazy batch update)
        if i2 < n_in:
            wt[i2:] -= u[i1:i2, i2:].T @ err1
    codes = codes.T
    if perm is not None:
        codes = codes[:, torch.argsort(perm)]
    return codes.to(torch.int32), scale, zero


def _refit(cols: Tensor, cfg: WeightQuant, g: int, scale: Tensor, zero: Tensor | None, st: Tensor,
           zt: Tensor | None) -> None:
    """Group ``g``'s grid from its current columns ``cols`` (group, out), written in place into
    ``scale`` / ``zero`` (out, groups) and the per-column copies ``st`` / ``zt`` (group, out)."""
    sc, zr = weight_qparams(cols.T, WeightQuant(cfg.bits, None, cfg.symmetric, cfg.method))
    scale[:, g] = sc[:, 0]
    st.copy_(sc[:, 0].expand_as(st))
    if zero is not None:
        zero[:, g] = zr[:, 0]
        zt.copy_(zr[:, 0].expand_as(zt))


def layer_error(w: Tensor, w_hat: Tensor, x: Tensor) -> float:
    """Mean squared output error ``||x (W - W_hat)^T||^2 / numel`` of a linear layer on inputs
    ``x`` (n, in): what GPTQ minimizes on calibration inputs, measured on any inputs."""
    d = x.double() @ (w.double() - w_hat.double()).T
    return float(d.pow(2).mean())
