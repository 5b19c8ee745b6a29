"""A child started with die_with_parent() is ended by the kernel when its parent is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cadr.children import die_with_parent

# The parent starts a long sleeper with die_with_parent(), prints the sleeper's pid, and waits to be killed.
_PARENT = """
import subprocess, sys, time
sys.path.insert(0, {root!r})
from cadr.children import die_with_parent
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], preexec_fn=die_with_parent())
print(child.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_child_dies_when_its_parent_is_killed_outright() -> None:
    root = str(Path(__file__).resolve().parents[2])
    parent = subprocess.Popen([sys.executable, "-c", _PARENT.format(root=root)], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the child outlived its SIGKILLed parent"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_no_request_from_a_thread_that_may_exit_before_the_process() -> None:
    import threading

    got: list[object] = []
    thread = threading.Thread(target=lambda: got.append(die_with_parent()))
    thread.start()
    thread.join()
    assert got == [None]
    assert callable(die_with_parent())
