import platform

import pytest

from bitswitch.runtime.memory import fix_mmap_threshold


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_threshold_is_set_on_glibc():
    assert fix_mmap_threshold() is True
