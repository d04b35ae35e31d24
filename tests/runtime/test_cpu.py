from bitswitch.runtime.cpu import native_bf16

HEAD = "processor\t: 0\nvendor_id\t: AuthenticAMD\n"


def test_native_bf16_reads_the_flags():
    assert native_bf16(HEAD + "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n") is True
    assert native_bf16(HEAD + "flags\t\t: fpu sse2 avx2 amx_bf16 amx_tile\n") is True
    assert native_bf16(HEAD + "flags\t\t: fpu sse2 avx2 fma\n") is False
    assert native_bf16(HEAD + "flags\t\t: avx512f avx512_vnni\n") is False   # AVX-512 without BF16


def test_native_bf16_unknown_without_flags():
    assert native_bf16(HEAD) is None
    assert native_bf16("") is None
