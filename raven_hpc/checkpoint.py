"""Atomic HDF5 checkpoints: parameters, optimizer state, training position.

A checkpoint is written to a temporary file in the same folder, flushed and
fsync'ed, then renamed over the old one (``os.replace`` is atomic on POSIX),
and the folder is fsync'ed.  A run killed at any moment leaves either the old
checkpoint or the new one, never a torn file.

Layout::

    /params                 float32 (num_params,)  the flat parameter vector
    /param_info             names, shapes, offsets (attrs, JSON)
    /optimizer/<name>       arrays of the optimizer state; scalars as attrs
    attrs: format, format_version, train_state (JSON), config (JSON),
           model_spec (JSON), created, raven_hpc_version
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from .errors import CheckpointError

__all__ = ["save_checkpoint", "load_checkpoint", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "raven-hpc-checkpoint"
CHECKPOINT_VERSION = 1


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path, *, params: np.ndarray, param_info, optimizer_state: dict, train_state: dict,
                    config: dict, model_spec: dict, extra: dict | None = None) -> Path:
    """Write a checkpoint atomically; returns its path."""
    import h5py

    from . import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = CHECKPOINT_FORMAT
            f.attrs["format_version"] = CHECKPOINT_VERSION
            f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            f.attrs["raven_hpc_version"] = __version__
            f.attrs["train_state"] = json.dumps(train_state)
            f.attrs["config"] = json.dumps(config)
            f.attrs["model_spec"] = json.dumps(model_spec)
            f.attrs["extra"] = json.dumps(extra or {})
            f.create_dataset("params", data=np.asarray(params, dtype=np.float32))
            f.attrs["param_info"] = json.dumps([[n, list(s), int(o)] for n, s, o in param_info])
            g = f.create_group("optimizer")
            for k, v in optimizer_state.items():
                if isinstance(v, np.ndarray):
                    g.create_dataset(k, data=v)
                else:
                    g.attrs[k] = json.dumps(v)
            f.flush()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {path}: {exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path) -> dict:
    """Read a checkpoint into a dict (params, optimizer_state, train_state, config, model_spec, extra)."""
    import h5py

    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.h5"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != CHECKPOINT_FORMAT:
                raise CheckpointError(f"{path} is not a raven-hpc checkpoint")
            opt = {k: f["optimizer"][k][()] for k in f["optimizer"]}
            opt.update({k: json.loads(v) for k, v in f["optimizer"].attrs.items()})
            return {
                "path": str(path),
                "params": f["params"][()],
                "param_info": json.loads(f.attrs["param_info"]),
                "optimizer_state": opt,
                "train_state": json.loads(f.attrs["train_state"]),
                "config": json.loads(f.attrs["config"]),
                "model_spec": json.loads(f.attrs["model_spec"]),
                "extra": json.loads(f.attrs.get("extra", "{}")),
            }
    except (OSError, KeyError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
