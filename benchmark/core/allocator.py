"""CPU memory-allocator tuning for training processes (glibc ``mallopt``).

PyTorch allocates CPU tensors with ``malloc``. glibc serves every block above its
mmap threshold (dynamic, capped at 32 MiB on 64-bit Linux) with a fresh ``mmap``
and returns it with ``munmap`` when freed, so a training step's large activations
and gradients are page-faulted and zero-filled by the kernel again on every step.
On this project's 2-core reference machine that costs 15-20 % of a ResNet-18
SimCLR step (``perf/bench_pretrain.py`` reports it). PyTorch's CPU
performance guide recommends preloading jemalloc or tcmalloc for this; sslbench
gets the same effect without a preload by raising glibc's mmap and trim
thresholds once per process, so freed blocks stay in the heap and are reused.

The cost is memory that is kept rather than given back to the system: peak RSS
grows by roughly the size of one step's activations (a few hundred MiB at the CPU
profiles) and then stays flat. Numbers are unaffected (allocation addresses do not
change arithmetic). Set ``SSLBENCH_MALLOC_TUNING=0`` to keep glibc's defaults;
other C libraries (musl, macOS, Windows) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

#: glibc ``mallopt`` parameters (``malloc.h``).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks up to 1 GiB come from the heap; freed heap memory is kept up to 2 GiB.
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = 2**31 - 1
ENV = "SSLBENCH_MALLOC_TUNING"

_state: str | None = None


def tune_allocator() -> str:
    """Raise glibc's mmap and trim thresholds for this process, once.

    Returns:
        The allocator state recorded in provenance: ``"glibc-tuned"`` when the
        thresholds were raised, ``"default (SSLBENCH_MALLOC_TUNING=0)"`` when
        disabled, or ``"default (<libc>)"`` on a C library other than glibc.
    """
    global _state
    if _state is not None:
        return _state
    if os.environ.get(ENV, "1").strip().lower() in {"0", "off", "false", "no"}:
        _state = f"default ({ENV}=0)"
        return _state
    libc_name, _ = platform.libc_ver()
    if platform.system() != "Linux" or libc_name != "glibc":
        _state = f"default ({libc_name or platform.system()})"
        return _state
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    _state = "glibc-tuned" if ok else "default (mallopt refused)"
    return _state


def allocator_state() -> str:
    """The state :func:`tune_allocator` set, or ``"default"`` if it was not called."""
    return _state or "default"
