import math

import pytest
import torch

from bitswitch.quant import WeightQuant
from bitswitch.quant.functional import quantize_weight
from bitswitch.quant.pack import PACK_BITS, code_offset, pack, packed_numel, unpack

LENGTHS = (0, 1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 24, 31, 33, 1000, 4099)


@pytest.mark.parametrize("bits", PACK_BITS)
@pytest.mark.parametrize("n", LENGTHS)
def test_round_trip_random_codes_and_dense_size(bits, n):
    g = torch.Generator().manual_seed(bits * 10007 + n)
    codes = torch.randint(0, 2**bits, (n,), generator=g)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.numel() == math.ceil(n * bits / 8) == packed_numel(n, bits)
    out = unpack(packed, bits, n)
    assert out.dtype == torch.int32 and torch.equal(out, codes.to(torch.int32))


@pytest.mark.parametrize("bits", PACK_BITS)
def test_round_trip_extreme_values(bits):
    top = 2**bits - 1
    for codes in (torch.zeros(37, dtype=torch.long), torch.full((37,), top),
                  torch.tensor([0, top] * 20), torch.tensor([top, 0, 0, top, top, top, 0, 1, top - 1])):
        assert torch.equal(unpack(pack(codes, bits), bits, codes.numel()), codes.to(torch.int32))


@pytest.mark.parametrize("bits", PACK_BITS)
def test_signed_codes_round_trip_through_the_offset(bits):
    off = code_offset(bits, symmetric=True)
    assert off == 2 ** (bits - 1) - 1 and code_offset(bits, symmetric=False) == 0
    codes = torch.arange(-off, off + 1).reshape(1, -1).repeat(3, 1)   # every symmetric code, as (3, 2^b - 1)
    packed = pack(codes, bits, off)
    assert packed.numel() == math.ceil(codes.numel() * bits / 8)
    assert torch.equal(unpack(packed, bits, codes.shape, off), codes.to(torch.int32))


def test_the_layout_is_a_little_endian_bit_stream():
    assert pack(torch.tensor([1, 2, 3]), 4).tolist() == [0x21, 0x03]          # low nibble first
    assert pack(torch.tensor([1, 2, 3, 0, 1]), 2).tolist() == [0b00111001, 0b01]
    assert pack(torch.tensor([1, 2, 3]), 3).tolist() == [1 | 2 << 3 | (3 & 0b11) << 6, 3 >> 2]
    assert pack(torch.tensor([5, 6]), 5).tolist() == [5 | (6 & 0b111) << 5, 6 >> 3]
    assert pack(torch.tensor([0x1234]), 16).tolist() == [0x34, 0x12]


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8, 16])
@pytest.mark.parametrize("symmetric,method", [(True, "uniform"), (False, "uniform"), (True, "log")])
def test_quantizer_codes_pack_losslessly(bits, symmetric, method):
    w = torch.randn(12, 48, generator=torch.Generator().manual_seed(bits))
    w[0].zero_()                                          # an all-zero channel
    cfg = WeightQuant(bits, 16, symmetric, method)
    codes, _, _ = quantize_weight(w, cfg)
    off = code_offset(bits, symmetric)
    assert torch.equal(unpack(pack(codes, bits, off), bits, codes.shape, off), codes)


def test_out_of_range_codes_and_wrong_sizes_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack(torch.tensor([16]), 4)
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack(torch.tensor([-8]), 4, offset=7)
    with pytest.raises(ValueError, match="pack codes of"):
        pack(torch.tensor([1]), 9)
    with pytest.raises(ValueError, match="expected 2 packed uint8 bytes"):
        unpack(torch.zeros(3, dtype=torch.uint8), 4, 4)
