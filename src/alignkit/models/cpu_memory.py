"""Keep freed memory in the process on CPU while training, so a step does not fault its buffers back in each time.

glibc's malloc serves large blocks (from 128 KiB, rising to 32 MiB) with fresh ``mmap`` pages and returns them to
the OS on free; the next step's logits, weight casts and gradients (tens to hundreds of MB each) then fault every
4 KiB page in again. On the 2-core VMs we measure on a page fault costs ~8 us, and a DPO step on SmolLM2-135M
took ~420k faults: 1.4x slower than with the heap kept (bench/ablation.py). ``keep_freed_memory`` turns that off:
every block comes from the heap, freed blocks are reused, the heap is not trimmed.

It is a trade, not free: blocks of different sizes fragment the heap, so the peak rises too (the demo's DPO
training, 20 steps, AVX2 2-core machine: 2.70 GB kept vs 2.44 GB default, 72 s vs 81 s), and what was freed stays
with the process. ``train.reuse_cpu_memory`` (default true) chooses it; ``fit`` applies it for the training loop
only and calls ``give_back_freed_memory`` when the loop ends, so evaluation and generation afterwards run with
glibc's defaults and start from the memory training actually holds.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys

from alignkit.errors import UserError

# glibc <malloc.h>
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
# glibc's documented defaults (setting them explicitly turns off its dynamic mmap threshold, which is fine here)
_DEFAULTS = {_M_MMAP_MAX: 65536, _M_TRIM_THRESHOLD: 128 * 1024, _M_TOP_PAD: 128 * 1024}
_kept = False


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Tell glibc malloc to reuse freed memory instead of unmapping it (process-wide, until
    ``give_back_freed_memory``). True when applied; False where there is no glibc (macOS, Windows, musl)."""
    global _kept
    if _kept:
        return True
    libc = _libc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_MMAP_MAX, 0) == 1  # no mmap'd blocks: everything from the reusable heap
    ok = ok and libc.mallopt(_M_TRIM_THRESHOLD, 2**30) == 1  # give memory back only above 1 GiB of free top
    ok = ok and libc.mallopt(_M_TOP_PAD, 64 << 20) == 1  # grow the heap 64 MiB at a time
    _kept = ok
    return ok


def give_back_freed_memory() -> bool:
    """glibc's defaults again, and every free page of the heap returned to the OS now (``malloc_trim``). True when
    glibc did it."""
    global _kept
    libc = _libc()
    if libc is None:
        return False
    for option, value in _DEFAULTS.items():
        libc.mallopt(option, value)
    _kept = False
    libc.malloc_trim(0)
    return True


@contextlib.contextmanager
def freed_memory_given_back():
    """Inside, glibc's defaults (freed memory trimmed first); after, freed memory kept again if it was. Around the
    loop's evaluation: its batches differ in size from the training steps', and a heap that keeps every freed block
    would add them to the peak for the rest of the run (the demo's DPO: +1 GB at its mid-run evaluation)."""
    was_kept = _kept
    if was_kept:
        give_back_freed_memory()
    try:
        yield
    finally:
        if was_kept:
            keep_freed_memory()


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, MB (what ``/usr/bin/time -v`` reports as its maximum)."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


ONEDNN_CACHE_ENV = "ALIGNKIT_ONEDNN_CACHE"
ONEDNN_CACHE_DEFAULT = 64
_ONEDNN_VARS = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")  # oneDNN's own cache, and PyTorch's ideep's


def bound_onednn_caches(capacity: int | str | None = None) -> int | None:
    """Bound the caches of compiled matmul kernels that bf16 on CPU goes through (oneDNN keeps one entry per operand
    shape, 1024 by default; each holds ~1 MB). Training packs rows of varying length, so every step brings new shapes:
    the demo's DPO training on a CPU with native bf16 grew 2.1 -> 2.56 GB resident over 15 steps and on; with 64
    entries it stays flat at 2.28 GB from step 10 at the same step time (a step's kernels fit: the hits are the same;
    bench/results/demo_memory.json). fp32 matmuls do not use these caches.

    ``capacity``: entries per cache; None reads ``ALIGNKIT_ONEDNN_CACHE`` (a number, or ``default`` to keep oneDNN's
    1024), else 64. Takes effect only before the process's first oneDNN kernel (the CLI calls it at start); a variable
    already set in the environment wins. Returns the capacity set, or None when left to oneDNN."""
    if capacity is None:
        capacity = os.environ.get(ONEDNN_CACHE_ENV, ONEDNN_CACHE_DEFAULT)
    if capacity == "default":
        return None
    try:
        capacity = int(capacity)
        if capacity < 1:
            raise ValueError
    except ValueError:
        raise UserError(
            f"{ONEDNN_CACHE_ENV} is {capacity!r}. Fix: a whole number of cache entries >= 1 (e.g. 64), or 'default'"
        ) from None
    for var in _ONEDNN_VARS:
        os.environ.setdefault(var, str(capacity))
    return capacity
