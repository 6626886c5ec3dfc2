"""The run directory: one job at a time, writable, or one clear error.

Rank 0 claims the directory in ``setup_run``, before any worker computes:
it creates it, checks that a file can be written in it, and takes an
exclusive ``fcntl.flock`` on ``RUN_DIR/run.lock`` that it holds until the
process ends.  The lock file records the holder (host, pid, Slurm job id,
start time), so a second job on the same directory is refused with a
message naming both.  The kernel drops the lock with the process that held
it, so the file a killed job leaves behind never blocks the next one.

flock works across hosts on NFS (Linux maps it to POSIX locks there).  On a
file system that cannot lock at all (Lustre mounted without ``flock``) the
run goes on unlocked and :func:`claim` returns a note saying so.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import tempfile
import time
from pathlib import Path

from .errors import RunDirError

__all__ = ["LOCK_NAME", "claim", "release", "holder_of"]

LOCK_NAME = "run.lock"

#: run directory -> file descriptor of its lock file, held by this process
_held: dict[str, int] = {}

#: errno values of file systems that do not lock (the run goes on unlocked)
_NO_LOCKING = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


def claim(run_dir) -> str | None:
    """Create ``run_dir``, check it is writable and lock it for this process.

    Raises :class:`RunDirError` with one line saying what is wrong; returns
    ``None``, or a note when the file system cannot lock.  Claiming a
    directory this process already holds does nothing.
    """
    d = Path(run_dir)
    key = str(d)
    if key in _held:
        return None
    if d.exists() and not d.is_dir():
        raise RunDirError(f"run directory {d} is a file, not a directory: choose another --run-dir "
                          "(or [run] dir)")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create run directory {d}: {_reason(exc)}; choose another --run-dir "
                          "(or [run] dir)") from exc
    _check_writable(d)
    path = d / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)   # not inherited by children (PEP 446)
    except OSError as exc:
        raise RunDirError(f"cannot open the lock file {path}: {_reason(exc)}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read(fd)
        os.close(fd)
        raise RunDirError(f"run directory {d} is in use by {describe(holder)} (lock {path}): wait for that "
                          "job to end, or choose another --run-dir") from None
    except OSError as exc:
        if exc.errno not in _NO_LOCKING:
            os.close(fd)
            raise RunDirError(f"cannot lock {path}: {_reason(exc)}") from exc
        _write(fd)
        _held[key] = fd
        return (f"the file system of {d} cannot lock files ({_reason(exc)}): nothing stops a second job "
                "from using the same run directory")
    _write(fd)
    _held[key] = fd
    return None


def release(run_dir=None) -> None:
    """Give up the lock of ``run_dir`` (every lock this process holds when None)."""
    keys = list(_held) if run_dir is None else [str(Path(run_dir))]
    for key in keys:
        fd = _held.pop(key, None)
        if fd is not None:
            os.close(fd)


def holder_of(run_dir) -> dict | None:
    """What the lock file of ``run_dir`` says about its last holder (None: no file)."""
    try:
        return json.loads((Path(run_dir) / LOCK_NAME).read_text() or "null")
    except (OSError, ValueError):
        return None


def describe(holder: dict | None) -> str:
    if not isinstance(holder, dict):
        return "another process"
    job = holder.get("slurm_job_id")
    since = holder.get("unix_time")
    parts = [f"Slurm job {job}" if job else "another job",
             f"rank 0 on host {holder.get('host', '?')}, pid {holder.get('pid', '?')}"]
    if isinstance(since, (int, float)):
        parts.append(time.strftime("since %Y-%m-%d %H:%M:%S UTC", time.gmtime(since)))
    return f"{parts[0]} ({', '.join(parts[1:])})"


def _check_writable(d: Path) -> None:
    try:
        fd, name = tempfile.mkstemp(dir=d, prefix=".raven-write-test-")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise RunDirError(f"run directory {d} is not writable ({_reason(exc)}): checkpoints and metrics go "
                          "there; choose another --run-dir (or [run] dir)") from exc


def _write(fd: int) -> None:
    info = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "unix_time": round(time.time(), 3)}
    data = (json.dumps(info) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _read(fd: int) -> dict | None:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "null")
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
