"""Keep freed memory in the process on CPU, so a training step does not fault its buffers back in every time.

glibc's malloc serves large blocks (from 128 KiB, rising to 32 MiB) with fresh ``mmap`` pages and returns them to
the OS on free; the next step's logits, weight casts and gradients (tens to hundreds of MB each) then fault every
4 KiB page in again. On the 2-core VMs we measure on a page fault costs ~8 us, and a DPO step on SmolLM2-135M
took ~420k faults: 1.4x slower than with the heap kept (bench/ablation.py). ``mallopt`` turns that off for
the process: every block comes from the heap, freed blocks are reused, the heap is not trimmed. Peak memory is
unchanged (the same blocks are live at the peak); memory freed after the peak stays with the process until exit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc <malloc.h>
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_done = False


def keep_freed_memory() -> bool:
    """Tell glibc malloc to reuse freed memory instead of unmapping it (process-wide, once). True when applied;
    False where there is no glibc (macOS, Windows, musl) and nothing changes."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1  # no mmap'd blocks: everything from the reusable heap
    ok = ok and mallopt(_M_TRIM_THRESHOLD, 2**30) == 1  # give memory back only above 1 GiB of free top
    ok = ok and mallopt(_M_TOP_PAD, 64 << 20) == 1  # grow the heap 64 MiB at a time
    _done = ok
    return ok
