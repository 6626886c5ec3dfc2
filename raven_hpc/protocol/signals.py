"""The stop signals: SIGUSR1 (Slurm's warning before a time limit,
``#SBATCH --signal``) and SIGTERM (``scancel``, a launcher ending the job).

Both mean "stop at the next step boundary".  Every rank records them from
start-up on (:func:`install`), so none dies of one: the master writes a
checkpoint and sends every worker the stop message marked ``interrupted``,
and then every rank exits with :data:`~raven_hpc.errors.EXIT_RESUMABLE`.
Slurm and the MPI launchers signal all tasks at once, so a worker usually
has the signal before the master's stop message arrives; it keeps working
until then.

A worker that got SIGTERM and hears nothing from the master for
:data:`WORKER_GRACE_S` (the master is gone or stuck) ends itself as SIGTERM
would have ended it, so a plain ``kill`` still works without the master.
"""
from __future__ import annotations

import os
import signal
import sys

__all__ = ["STOP_SIGNALS", "WORKER_GRACE_S", "install", "install_worker", "stop_received", "received",
           "resumable"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
WORKER_GRACE_S = 60.0

#: the first stop signal this process got (None: none yet)
received: int | None = None
#: a worker's stop message said the run was interrupted (exit EXIT_RESUMABLE)
resumable = False
_grace_s: float | None = None


def install() -> None:
    """Record SIGTERM / SIGUSR1 in :data:`received` instead of dying of them."""
    _set(_record)


def install_worker(grace_s: float = WORKER_GRACE_S) -> None:
    """:func:`install`, plus the worker's deadline for the stop message after SIGTERM."""
    global _grace_s
    _grace_s = grace_s
    _set(_record)
    if received == signal.SIGTERM:   # it came during start-up
        _arm()


def stop_received(interrupted: bool) -> None:
    """The master's stop message came: no deadline any more; remember how the run ended."""
    global resumable
    resumable = resumable or interrupted
    if _grace_s is not None:
        signal.alarm(0)


def _set(handler) -> None:
    for sig in STOP_SIGNALS:
        try:
            signal.signal(sig, handler)
        except ValueError:   # not the main thread (tests driving a loop directly)
            return


def _record(signum, frame) -> None:
    global received
    if received is None:
        received = signum
        if signum == signal.SIGTERM and _grace_s is not None:
            _arm()


def _arm() -> None:
    signal.signal(signal.SIGALRM, _grace_over)
    signal.alarm(max(1, int(round(_grace_s))))


def _grace_over(signum, frame) -> None:
    print(f"raven-hpc: rank process {os.getpid()}: no stop message from the master {_grace_s:.0f} s after "
          "SIGTERM; leaving", file=sys.stderr, flush=True)
    os._exit(128 + signal.SIGTERM)
