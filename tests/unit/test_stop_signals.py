"""raven_hpc.protocol.signals: SIGTERM / SIGUSR1 are recorded, never fatal
while the master can still stop the run; a worker left without a stop
message after SIGTERM ends itself.  Each case runs in a child process."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO


def child(body: str, timeout: float = 30) -> subprocess.CompletedProcess:
    code = textwrap.dedent("""
        import os, signal, time
        from raven_hpc.protocol import signals
    """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR1"])
def test_a_stop_signal_is_recorded_not_fatal(sig):
    res = child(f"""
        signals.install()
        os.kill(os.getpid(), signal.{sig})
        os.kill(os.getpid(), signal.SIGUSR1)   # a second one keeps the first
        time.sleep(0.1)
        print(signal.Signals(signals.received).name)
    """)
    assert res.returncode == 0 and res.stdout.strip() == sig, res.stderr


def test_a_worker_without_a_stop_message_leaves_after_the_grace_period():
    res = child("""
        signals.install_worker(grace_s=1)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
        print("still here")
    """)
    assert res.returncode == 128 + 15, (res.returncode, res.stdout, res.stderr)
    assert "still here" not in res.stdout
    assert "no stop message from the master 1 s after SIGTERM" in res.stderr


def test_the_stop_message_ends_the_grace_period_and_says_resumable():
    res = child("""
        signals.install_worker(grace_s=1)
        os.kill(os.getpid(), signal.SIGTERM)
        signals.stop_received(interrupted=True)
        time.sleep(2)
        print("resumable" if signals.resumable else "finished")
    """)
    assert res.returncode == 0 and res.stdout.strip() == "resumable", res.stderr


def test_sigterm_during_start_up_starts_the_grace_period_when_the_worker_loop_begins():
    res = child("""
        signals.install()                      # the CLI, before the worker loop
        os.kill(os.getpid(), signal.SIGTERM)
        signals.install_worker(grace_s=1)
        time.sleep(10)
    """)
    assert res.returncode == 128 + 15, (res.returncode, res.stderr)
