"""README command (1): `cadr demo` starts the embedded stack, runs the scripted attack and prints its story."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


# Failed once (the story did not come within the demo's 240 s) while a whole second test suite ran on the same
# two cores; passed in every run on its own, also beside two busy loops. One retry.
@pytest.mark.flaky(reruns=1)
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_prints_the_attack_story_and_stops_what_it_started(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CADR_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "cadr.cli", "demo"],
        cwd=tmp_path,  # the embedded stack lives in ./.cadr
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    # the summary is wrapped to the terminal: read it as one paragraph
    text = re.sub(r"\s+", " ", re.sub(r"-\n\s*", "-", out))
    for told in (
        "alice@example.com ran kubectl exec into payments/payments-7d9f-abc12",
        "downloaded http://203.0.113.7/k with curl",
        "read the service-account token",
        "listed the secrets of payments through the API",
        "Severity: critical",
        "CADR-K8S-0028",
    ):
        assert told in text, f"the story does not tell {told!r}:\n{out[-3000:]}"
    # everything it started is stopped: no process still runs from its data dir
    data_dir = str(tmp_path / ".cadr")
    leftovers = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if data_dir in cmdline:
                leftovers.append(cmdline[:200])
    assert not leftovers, leftovers
