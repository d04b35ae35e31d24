"""Keep the loader's freed memory from staying resident (glibc's malloc, Linux).

glibc serves large blocks from their own memory maps, but after such a block is freed it raises
its threshold to that block's size (its *dynamic* mmap threshold), and from then on blocks of that
size come from the heap. A loader that reads, dequantizes, packs and frees one master at a time
then leaves the heap as large as the freed blocks in between the packed weights it kept: on
SmolLM2-135M that is about 230 MiB resident for nothing. A fixed threshold keeps every block of at
least 256 KiB in a map of its own, given back to the system when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3   # glibc's mallopt parameter number
THRESHOLD = 256 * 1024


def fix_mmap_threshold(threshold: int = THRESHOLD) -> bool:
    """Set glibc's mmap threshold for the process (which also ends its dynamic adjustment); True
    when set. Elsewhere (macOS, musl, Windows) a no-op returning False."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError, TypeError):
        return False
