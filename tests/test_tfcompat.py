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
    assert int(probe(PROBE, "default")) >= 8 << 20
    assert int(probe(PROBE, "steady")) == 0


def probe(script, *args):
    """What ``script`` prints, run in a fresh Python process (a fresh glibc heap)."""
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          check=True).stdout


# In a fresh process: resident MB after touching and freeing 200 MB of heap blocks, before and
# after release_free_memory() (steady_malloc's trim threshold keeps freed heap mapped until then).
TRIM_PROBE = """
import ctypes, resource
from charrnn.tfcompat import release_free_memory, steady_malloc

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() >> 20

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
steady_malloc()
blocks = [libc.malloc(1 << 20) for _ in range(200)]
for block in blocks:
    ctypes.memset(block, 1, 1 << 20)
for block in blocks:
    libc.free(ctypes.c_void_p(block))
kept = rss_mb()
release_free_memory()
print(kept, rss_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_release_free_memory_hands_freed_heap_back():
    kept, released = map(int, probe(TRIM_PROBE).split())
    assert kept - released >= 150, (kept, released)


def test_glibc_functions_that_do_not_exist_are_none():
    from charrnn.tfcompat import _glibc

    assert _glibc("no_such_function_in_any_libc") is None
