"""Child processes that do not outlive the process that started them."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import threading
from collections.abc import Callable

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` for :class:`subprocess.Popen` asking the kernel to send ``sig`` to the child when its
    parent dies — also when the parent is SIGKILLed and no ``atexit`` hook or ``finally`` runs.

    The kernel ties the signal to the *thread* that forked the child, so it is only requested from the main
    thread (which lives as long as the process); from another thread this returns ``None`` (no request).
    The function only calls ``prctl``, which is safe between fork and exec.
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def preexec() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig))

    return preexec
