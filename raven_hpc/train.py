"""The training job: start-up checks on rank 0, the run directory, and the
split into master and workers.

Nothing here prints: progress goes to an ``on_event(kind, info)`` callback
(the CLI turns it into a bar or lines) and to machine-readable files in the
run directory (``config.toml``, the resolved configuration, and what the
:class:`~raven_hpc.recorder.Recorder` writes).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from .checks import validate
from .config import load_config, to_toml
from .errors import CheckpointError, ConfigError, Interrupted, RavenError
from .recorder import EventFn, Recorder
from .rundir import claim as claim_run_dir

__all__ = ["setup_run", "run_training", "broadcast_setup", "ReportedElsewhere"]


def setup_run(config_path, overrides: list[str] | None = None, run_dir: str | None = None,
              resume: bool | str | None = None) -> dict:
    """Rank 0's start-up checks: config, dataset layout, model, optimizer,
    the run directory (created, writable, locked for this job: see
    :mod:`raven_hpc.rundir`) and its checkpoint against ``resume``:

    * ``False``: a checkpoint there is an error (no silent overwrite);
    * ``True`` (``--resume``): continue from it; none there is an error;
    * ``"auto"`` (``--resume auto``, batch scripts): continue when there is
      one, start fresh otherwise.

    Raises a :class:`RavenError` naming the problem; returns the resolved config.
    """
    overrides = list(overrides or [])
    if run_dir is not None:
        overrides.append(f"run.dir={json.dumps(str(Path(run_dir).resolve()))}")
    if resume is not None:
        overrides.append(f"run.resume={json.dumps(resume)}")
    cfg = load_config(config_path, overrides)
    from .data import open_dataset
    from .data.packet import DatasetInfo

    with open_dataset(cfg["data"]["path"]) as ds:
        for key in ("train_split", "test_split"):
            if cfg["data"][key]:
                ds.split(cfg["data"][key])
        shape, classes = tuple(ds.feature_shape), int(ds.num_classes)
        counts = ds.split(cfg["data"]["train_split"]).snippets["count"] if cfg["data"]["train_split"] else None
        # what a rank that never opens the file needs to know of it (data.delivery = "scatter")
        info = DatasetInfo.from_dataset(ds).to_dict()
    validate(cfg, shape, classes, counts, ds.snippet_size)
    run = Path(cfg["run"]["dir"])
    ck = run / "checkpoint.h5"
    resume = cfg["run"]["resume"]
    if resume is True and not ck.exists():
        raise CheckpointError(f"--resume: the run directory {run} holds no checkpoint.h5 to continue from: check "
                              "--run-dir (or [run] dir), leave out --resume to start a new run, or pass "
                              "--resume auto to start one only when there is no checkpoint")
    note = claim_run_dir(run)
    if note:
        cfg["meta"]["notes"] = [note]
    if ck.exists() and resume is False:
        raise CheckpointError(f"{ck} exists: pass --resume (or --resume auto) to continue that run, or choose "
                              "another --run-dir")
    cfg["meta"]["input_shape"] = list(shape)
    cfg["meta"]["num_classes"] = classes
    cfg["meta"]["dataset"] = info
    return cfg


def broadcast_setup(comm, fn: Callable[[], dict]) -> dict:
    """Run ``fn`` on rank 0 and hand its result -- or its error -- to every rank.

    A bad config therefore ends every rank at once with the same error,
    and only rank 0 reports it.
    """
    result, error = None, None
    if comm.Get_rank() == 0:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - any failure must reach the other ranks
            error = exc
    result, error_text = comm.bcast((result, None if error is None else (type(error).__name__, str(error))), root=0)
    if error is not None:
        raise error
    if error_text is not None:
        raise ReportedElsewhere(error_text[1])
    return result


class ReportedElsewhere(RavenError):
    """Raised on ranks != 0 when rank 0 already reported the error."""


def job_tree(comm, cfg: dict):
    """Who leads whom (:mod:`raven_hpc.protocol.topology`); the same on every
    rank.  Collective: every rank learns which ranks share its node, for
    ``collectors = "auto"`` and for the GPU a rank takes (its place among
    the ranks of its node)."""
    from .kernels import cuda
    from .protocol.topology import build_tree, node_keys

    cl, size, rank = cfg["cluster"], comm.Get_size(), comm.Get_rank()
    keys = node_keys(comm)
    cuda.set_local_rank(sum(1 for r in range(rank) if keys[r] == keys[rank]))
    grouped = cl["collectors"] == "auto" and size - 1 > cl["fan_in"]
    return build_tree(size, cl["collectors"], cl["fan_in"], keys if grouped else None)


#: a rank's own environment may set its backend (MPMD launches, a module per node type)
BACKEND_ENV = "RAVEN_BACKEND"


def rank_backend(cfg: dict, environ=None) -> str:
    """The kernel backend this rank computes on: ``RAVEN_BACKEND`` from its
    own environment when set, else ``cluster.backend`` (the configuration
    is read on rank 0 and broadcast, so a per-rank choice has to come from
    the rank's environment).  The name is checked where the rank builds its
    model, whose errors reach the master."""
    value = (os.environ if environ is None else environ).get(BACKEND_ENV, "").strip()
    return value or cfg["cluster"]["backend"]


def run_training(comm, cfg: dict, on_event: EventFn | None = None) -> dict | None:
    """Rank 0 runs the master and returns the summary; collectors lead their
    groups and workers compute (both return None)."""
    from .protocol.scatter import resolve_delivery

    tree = job_tree(comm, cfg)
    resolve_delivery(comm, cfg)     # collective: "auto" asks every worker whether it can open data.path
    rank = comm.Get_rank()
    if rank != 0:
        cfg["cluster"]["backend"] = rank_backend(cfg)
        ancestors = tree.ancestors(rank)
        if tree.children_of(rank):
            from .protocol.collector import run_collector

            kids = tree.children_of(rank)
            both = cfg["cluster"]["collector_computes"]
            run_collector(comm, cfg, ancestors, kids, {r: (tree.workers_under(r, both), tree.depth(r)) for r in kids})
        else:
            from .protocol.worker import run_worker

            run_worker(comm, cfg, ancestors)
        return None
    return _master_main(comm, cfg, on_event, tree)


def _master_main(comm, cfg: dict, on_event: EventFn | None, tree) -> dict:
    try:
        trainer = _make_trainer(comm, cfg, on_event, tree)
    except BaseException as exc:
        # The workers are up (or starting): release them before reporting.
        from .protocol.pump import stop_ranks

        if not stop_ranks(comm, tree.children_of(0), RELEASE_TIMEOUT_S, RELEASE_QUIET_S):
            exc.abort_job = True
        raise
    return _run(trainer)


#: how long a master that failed before training waits for every worker to take
#: its stop message (a worker still compiling its kernels takes it afterwards)
RELEASE_TIMEOUT_S = 120.0
#: ... and then for this long without any message arriving
RELEASE_QUIET_S = 0.05


def _make_trainer(comm, cfg: dict, on_event: EventFn | None, tree):
    from .engine import build_model, make_optimizer
    from .protocol.master import Master
    from .protocol.state import TrainState
    from .protocol.training import Trainer
    from .protocol.worker import open_splits

    run_dir = Path(cfg["run"]["dir"])
    alone = comm.Get_size() == 1 or cfg["cluster"]["master_computes"] == "yes"
    if not alone:
        cfg_master = json.loads(json.dumps(cfg))
        cfg_master["data"]["cache"] = False  # the master only needs the snippet tables
    else:
        cfg_master = cfg
    ds, splits = open_splits(cfg_master)
    # the master computes on the configured backend only when it trains alone;
    # otherwise it updates, evaluates and arbitrates on the CPU
    model = build_model(cfg["model"], tuple(ds.feature_shape), int(ds.num_classes),
                        backend=cfg["cluster"]["backend"] if alone else "cpu")
    opt = make_optimizer(dict(cfg["optimizer"]), model)  # sized for model.num_trainable
    state = TrainState()
    extra = None
    ck = run_dir / "checkpoint.h5"
    if cfg["run"]["resume"] and ck.exists():
        state = _restore(ck, model, opt)
        extra = _checkpoint_extra(ck)
        if on_event:
            on_event("resume", {"path": str(ck), "step": state.step, "epoch": state.epoch})
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(to_toml(cfg))
    rec = Recorder(run_dir, cfg, on_event, comm.Get_size(), resume_extra=extra)
    master = Master(comm, cfg, model, splits, rec, state, tree=tree)
    if extra:
        master.sched.load_vouched_state(extra.get("vouched", []))
    return Trainer(master, opt, ds)


def _checkpoint_extra(path: Path) -> dict:
    """The bookkeeping a checkpoint carries besides the model (ledger and
    metrics sizes, what rollbacks need to know)."""
    from .checkpoint import load_checkpoint

    return load_checkpoint(path).get("extra") or {}


def _run(trainer) -> dict:
    master, rec, ds = trainer.master, trainer.rec, trainer.ds
    try:
        master.start()
        trainer.train()
        summary = rec.finish(trainer.state, trainer.facts())
    except BaseException as exc:
        rec.ledger(master.drain_events(), master.hosts)
        interrupted = isinstance(exc, (KeyboardInterrupt, Interrupted))
        rec.close_ledger("interrupted" if interrupted else "failed", trainer.state.step)
        # Stopped by a signal too: the workers keep working until this stop
        # message (marked interrupted), then every rank exits resumable.
        if not master.stop():
            # Some worker cannot be reached: the CLI reports and aborts the job.
            exc.abort_job = True
        ds.close()
        raise
    stopped = master.stop()
    ds.close()
    if not stopped:
        err = RavenError("training finished (checkpoint written) but some workers did not acknowledge "
                         "the stop message; aborting the job")
        err.abort_job = True
        raise err
    return summary


def _restore(path: Path, model, opt):
    from .checkpoint import load_checkpoint
    from .protocol.state import TrainState

    ck = load_checkpoint(path)
    if ck["params"].shape != model.params.shape:
        raise CheckpointError(f"{path} holds {ck['params'].shape[0]} parameters but the model has "
                              f"{model.num_params}: the [model] section changed since the checkpoint")
    model.params[:] = ck["params"]
    opt.load_state_dict(ck["optimizer_state"])
    return TrainState(**ck["train_state"])


def env_threads(cfg_path: str | None) -> None:
    """Pin BLAS/OpenMP/Numba threads before numpy loads (from [cluster] threads)."""
    n = "1"
    if cfg_path:
        try:
            from .config import read_toml

            n = str(int(read_toml(cfg_path).get("cluster", {}).get("threads", 1)))
        except (ConfigError, ValueError, TypeError, AttributeError):
            n = "1"
    n = os.environ.get("RAVEN_CLUSTER__THREADS", n)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(var, n)
