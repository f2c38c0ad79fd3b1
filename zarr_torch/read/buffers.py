"""Buffers each decode thread reuses: what it reads and decodes only to copy at once.

A new bytes object or array for every chunk costs an allocation (for large chunks, fresh
pages and their faults); a thread that is done with a buffer before its next chunk keeps
one per use (``slot``) instead.

    raw = scratch(bound, "read")      # this thread's read buffer, at least ``bound`` bytes
"""

from __future__ import annotations

import threading

import numpy as np

_local = threading.local()


def scratch(nbytes: int, slot: str) -> memoryview:
    """This thread's reusable buffer ``slot``, ``nbytes`` long (flat bytes): valid until the
    thread asks for the same slot again."""
    buf = getattr(_local, slot, None)
    if buf is None or len(buf) < nbytes:
        buf = memoryview(np.empty(nbytes, dtype=np.uint8))
        setattr(_local, slot, buf)
    return buf[:nbytes]
