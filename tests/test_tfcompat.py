"""charrnn.tfcompat's process settings."""
import subprocess
import sys

import pytest

# In a fresh process: how many bytes of mapped blocks glibc holds after malloc(8 MB), with or
# without steady_malloc() first (a long-lived test process has long since raised its threshold).
PROBE = """
import ctypes, sys
from charrnn.tfcompat import steady_malloc

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype, libc.malloc.restype = Info, ctypes.c_void_p
if sys.argv[1] == "steady":
    steady_malloc()
before = libc.mallinfo2().hblkhd
block = libc.malloc(8 << 20)
print(libc.mallinfo2().hblkhd - before)
libc.free(ctypes.c_void_p(block))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_steady_malloc_serves_a_steps_megabyte_tensors_from_the_heap():
    """Without it, glibc maps each block above 128 KB anew until freed blocks raise its threshold
    (the first ~45 training steps ran 26% slower at 2x384); with it, 8 MB comes from the heap."""
    def mapped(mode):
        return int(subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                                  check=True).stdout)

    assert mapped("default") >= 8 << 20
    assert mapped("steady") == 0
