"""`make demo` end to end: the demo drives the real CLI against two clusters it starts."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_the_whole_loop():
    proc = subprocess.run([sys.executable, "-m", "devtools.demo", "--once"], cwd=ROOT,
                          capture_output=True, text=True, timeout=480, stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "mirrored: 442 rows" in out
    assert "streaming" in out
    assert "runtime=onnx" in out
    assert "(scored on the ML replica, read on the source)" in out
    assert "Clusters stopped and removed" in out
