"""The project's exceptions.

Every error a user can cause (bad config, bad data, bad model) is a
:class:`RavenError`; the CLI prints its message once, on rank 0, and exits
non-zero.  Messages say what is wrong *and* what to do about it.
"""
from __future__ import annotations

__all__ = [
    "RavenError",
    "ConfigError",
    "DatasetError",
    "ModelError",
    "CheckpointError",
    "WorkerError",
    "ProtocolError",
    "RunDirError",
    "Interrupted",
    "EXIT_RESUMABLE",
]


class RavenError(Exception):
    """Base class of every error raven-hpc raises on purpose."""

    exit_code = 2


class ConfigError(RavenError):
    """The configuration (TOML file, CLI overrides, environment) is invalid."""


class DatasetError(RavenError):
    """A dataset source or a prepared HDF5 file is missing or malformed."""


class ModelError(RavenError):
    """A model description is invalid (unknown layer, shape mismatch, ...)."""


class CheckpointError(RavenError):
    """A checkpoint cannot be written, read, or does not fit the model."""


class ProtocolError(RavenError):
    """The master/worker protocol saw something it cannot continue from."""

    exit_code = 3


class WorkerError(RavenError):
    """An exception raised on a worker rank, carried to the master.

    ``rank`` and ``host`` name where it happened; ``kind`` is the original
    exception's class name and ``detail`` its formatted traceback (kept for
    logs, not printed to the user by default).
    """

    exit_code = 3

    def __init__(self, rank: int, host: str, kind: str, message: str, detail: str = ""):
        self.rank = rank
        self.host = host
        self.kind = kind
        self.detail = detail
        super().__init__(f"worker rank {rank} on {host}: {kind}: {message}")

    def __reduce__(self):
        msg = str(self).split(": ", 2)[-1]
        return (WorkerError, (self.rank, self.host, self.kind, msg, self.detail))


class Interrupted(RavenError):
    """The job was told to stop (SIGTERM / SIGUSR1: a time limit, a dead
    rank under an MPI without fault tolerance, an operator); a checkpoint was
    written first.

    Every rank then exits with :data:`EXIT_RESUMABLE`: a batch script
    tells "stopped, continue with ``--resume auto``" from a failure by it.
    """

    exit_code = 75


#: exit status of every rank of a run stopped by a signal after writing its
#: checkpoint (75 is EX_TEMPFAIL in sysexits.h: try again later)
EXIT_RESUMABLE = Interrupted.exit_code


class RunDirError(RavenError):
    """The run directory cannot be used: not a directory, not writable, or
    held by another job."""
