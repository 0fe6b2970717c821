"""Memory that a request needed goes back to the system afterwards.

glibc's malloc keeps freed memory in its heaps for reuse, and raises its mmap threshold after each
large free, so one request that decoded minutes of audio left hundreds of MB resident for good (a
fuzzed TTS held 5.4 GB; VAD kept 1.0 GB after a 3-hour file). With a fixed threshold, large
buffers (decoded audio, model inputs and outputs) are mapped on their own and unmapped when freed;
fewer arenas bound the fragmentation the worker threads cause.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("rvchat.memory")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

MMAP_THRESHOLD = 256 * 1024  # glibc's initial value, kept instead of growing to 32 MB
TRIM_THRESHOLD = 1024 * 1024
ARENA_MAX = 2  # the event loop's thread and the model's worker threads


def return_freed_memory() -> bool:
    """Set glibc's malloc to give large frees back to the system; False where it is not glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # musl, macOS: their allocators behave differently and need none of this
    ok = all(mallopt(param, value) == 1 for param, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_ARENA_MAX, ARENA_MAX)))
    if not ok:
        log.warning("mallopt refused a setting; freed memory may stay resident")
    return ok
