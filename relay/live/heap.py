"""Give the heap pages freed by viewers that left back to the system.

Every per-viewer object is freed when its viewer goes (``relay_live_objects`` counts them), yet
the relay's resident memory used to grow with every viewer opened and stay up after all had gone:
glibc's malloc keeps freed pages inside its heap for reuse, and a viewer's transient buffers
(RTP packets, SRTP and DTLS state, WebSocket frames) leave holes that smaller long-lived objects
pin. Measured in one process: 30 MSE viewers opened and closed grew the main arena from 27 to
40 MB of which 24.6 MB were in use, and ``malloc_trim(0)`` brought the RSS back to where it
started. So after viewers have left the controller calls ``malloc_trim(0)``, at most once per
reconcile pass (10 s by default); it takes milliseconds. With a C library that has no
``malloc_trim`` (musl, macOS) there is nothing to do.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library the process runs on
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


_TRIM = _malloc_trim()


def give_back() -> bool:
    """Return free heap pages to the system; False when this C library cannot."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
