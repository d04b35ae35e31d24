"""Dense bit packing of integer codes into bytes (the ``dense-bitstream`` layout of an export).

Layout: the codes of a tensor, flattened in row-major order, form one little-endian bit stream.
Code ``i`` (``b`` bits, unsigned) occupies stream bits ``[i*b, (i+1)*b)``, least significant bit
first, and stream bit ``k`` is bit ``k % 8`` of byte ``k // 8``. So two 4-bit codes share a byte
(code 0 in the low nibble), four 2-bit codes share a byte, 3/5/6/7-bit codes straddle bytes, and
16-bit codes are two little-endian bytes. A tensor of ``n`` codes packs into exactly
``ceil(n * b / 8)`` bytes; the unused high bits of the last byte are zero.

Signed codes are stored unsigned: ``stored = code + offset`` with :func:`code_offset` (``2^(b-1)-1``
for symmetric and log quantizers, whose codes lie in ``[-(2^(b-1)-1), 2^(b-1)-1]``; ``0`` for
asymmetric codes, already in ``[0, 2^b-1]``). ``unpack`` subtracts the same offset.

Implementation: ``g = 8 / gcd(b, 8)`` codes fill exactly ``b * g / 8`` whole bytes (8 codes -> 3
bytes at 3 bits, 4 codes -> 3 bytes at 6 bits), so each such group is assembled into one integer
word (at most 56 bits) and cut into bytes with shifts: vectorised, no loop over elements.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

PACK_BITS = (2, 3, 4, 5, 6, 7, 8, 16)


def code_offset(bits: int, symmetric: bool) -> int:
    """What is added to a code before packing: ``2^(b-1)-1`` for signed (symmetric/log) codes, else 0."""
    return 2 ** (bits - 1) - 1 if symmetric else 0


def packed_numel(numel: int, bits: int) -> int:
    """Bytes that ``numel`` codes of ``bits`` pack into: ``ceil(numel * bits / 8)``."""
    return math.ceil(numel * bits / 8)


def _layout(bits: int) -> tuple[int, int, torch.dtype]:
    """(codes per word, bytes per word, word dtype) for ``bits``."""
    if bits not in PACK_BITS:
        raise ValueError(f"can pack codes of {', '.join(map(str, PACK_BITS))} bits, got {bits}")
    per_word = 8 // math.gcd(bits, 8)
    word_bits = bits * per_word
    # int32 holds words up to 24 bits (2/4/6/8/16-bit codes) at half the memory of int64
    return per_word, word_bits // 8, torch.int32 if word_bits < 32 else torch.int64


def pack(codes: Tensor, bits: int, offset: int = 0) -> Tensor:
    """Pack integer ``codes`` (any shape) into a 1-D uint8 tensor of ``ceil(numel * bits / 8)`` bytes.

    ``codes + offset`` must lie in ``[0, 2^bits - 1]`` (a ValueError otherwise: the code range is a
    property of the quantizer, so a violation is a bug, not bad user input).
    """
    per_word, word_bytes, wdt = _layout(bits)
    flat = codes.reshape(-1).to(wdt)
    if offset:
        flat = flat + offset
    n = flat.numel()
    if n and (int(flat.min()) < 0 or int(flat.max()) > 2**bits - 1):
        raise ValueError(f"codes + offset {offset} must lie in [0, {2**bits - 1}] to pack at {bits} bits, "
                         f"got [{int(flat.min())}, {int(flat.max())}]")
    pad = -n % per_word
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    shifts = torch.arange(per_word, device=flat.device, dtype=wdt) * bits
    words = (flat.view(-1, per_word) << shifts).sum(-1, dtype=wdt)               # (m,)
    byte_shifts = torch.arange(word_bytes, device=flat.device, dtype=wdt) * 8
    out = ((words.unsqueeze(-1) >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)  # (m * word_bytes,)
    return out[: packed_numel(n, bits)].contiguous()


def unpack(packed: Tensor, bits: int, shape: int | tuple[int, ...] | torch.Size, offset: int = 0) -> Tensor:
    """Inverse of :func:`pack`: a 1-D uint8 tensor -> int32 codes of ``shape`` (``stored - offset``).

    ``shape`` may be a plain element count. The byte count must be ``ceil(numel * bits / 8)``.
    """
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    n = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != packed_numel(n, bits):
        raise ValueError(f"expected {packed_numel(n, bits)} packed uint8 bytes for {n} codes of {bits} bits, "
                         f"got {packed.numel()} {packed.dtype} in {packed.dim()} dims")
    per_word, word_bytes, wdt = _layout(bits)
    m = math.ceil(n / per_word)
    b = packed.to(wdt)
    if word_bytes == 1:  # 2/4/8 bits: a byte is a word
        words = b
    else:
        pad = m * word_bytes - b.numel()
        if pad:
            b = torch.cat([b, b.new_zeros(pad)])
        byte_shifts = torch.arange(word_bytes, device=b.device, dtype=wdt) * 8
        words = (b.view(m, word_bytes) << byte_shifts).sum(-1, dtype=wdt)         # (m,)
    shifts = torch.arange(per_word, device=b.device, dtype=wdt) * bits
    codes = ((words.unsqueeze(-1) >> shifts) & (2**bits - 1)).reshape(-1)[:n].to(torch.int32)
    if offset:
        codes -= offset
    return codes.reshape(shape)
