"""The stop-on-signal watcher survives a stderr that is a closed pipe."""

import signal
import subprocess
import sys
import time

CHILD = """
import time
from clipclop_jax.cli.main import _say_stopping
from clipclop_jax.runs.interrupt import StopOnSignal

with StopOnSignal(on_first=_say_stopping):
    print("ready", flush=True)
    time.sleep(60)
"""


def test_second_sigterm_exits_at_once_when_stderr_is_a_closed_pipe():
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert process.stdout.readline().strip() == b"ready"
        process.stderr.close()  # the reader leaves: writes to stderr now fail with EPIPE
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert process.poll() is None  # the first signal only asks to stop
        start = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=20)
        assert code == 128 + signal.SIGTERM
        assert time.monotonic() - start < 5
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
