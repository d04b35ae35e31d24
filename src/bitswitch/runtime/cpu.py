"""Whether this CPU multiplies bf16 natively (the runtime's compute dtype).

The runtime computes in bf16 because PyTorch's int4 / int8 CPU kernels are fast only with bf16
activations, which holds where the CPU has AVX-512 BF16 or AMX. Without them (AVX2-only CPUs, older
AVX-512 ones) bf16 matmuls are emulated: a bf16 GEMM measured 6.5x *slower* than float32 on a 2-core
AMD EPYC without AVX-512, and the runtime then runs slower than transformers in float32.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bf16(cpuinfo: str | None = None) -> bool | None:
    """True / False on x86 Linux (read from ``/proc/cpuinfo``'s flags, or ``cpuinfo``); None where
    it cannot tell (other systems and architectures)."""
    if cpuinfo is None:
        if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
            return None
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), None)
    if flags is None:
        return None
    return any(f in flags for f in BF16_FLAGS)


SLOW_BF16 = ("this CPU has no native bf16 (AVX-512 BF16 or AMX): the runtime's bf16 matmuls are emulated and "
             "run several times slower than float32 here; its speed figures need such a CPU")
