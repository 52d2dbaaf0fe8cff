"""cli: the host allocator set-up every command runs before JAX starts."""

import os
import platform
import subprocess
import sys

import pytest

# Mallocs, writes and frees a 64 MiB block twice; prints the page faults of the second time.
_REUSE = """
import ctypes, resource, sys
from charlm import cli
if sys.argv[1] == 'tuned':
    cli.host_allocator()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def touch():  # plain malloc: numpy asks for huge pages, XLA does not
    p = libc.malloc(64 << 20)
    ctypes.memset(p, 1, 64 << 20)  # written, so every page is faulted in
    libc.free(p)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _second_touch_faults(mode):
    env = {k: v for k, v in os.environ.items() if k != 'CHARLM_HOST_ALLOCATOR'}
    out = subprocess.run([sys.executable, '-c', _REUSE, mode], capture_output=True, text=True,
                         check=True, env=env)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='glibc malloc only')
def test_host_allocator_reuses_freed_blocks():
    # glibc's default: a 64 MiB block is a fresh mmap each time, 16k page faults.
    assert _second_touch_faults('default') > 10_000
    # Tuned: the freed block is reused, no new pages.
    assert _second_touch_faults('tuned') < 1_000
