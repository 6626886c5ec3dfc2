"""The training job: start-up checks on rank 0, the run directory, metrics,
checkpoints, and the split into master and workers.

Nothing here prints: progress goes to an ``on_event(kind, info)`` callback
(the CLI turns it into a bar or lines) and to machine-readable files in the
run directory::

    metrics.jsonl   one JSON object per logged step and per epoch
    summary.json    final accuracy, throughput, wall and master CPU seconds
    checkpoint.h5   parameters + optimizer state + position, written atomically
    config.toml     the resolved configuration
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from .checks import validate
from .config import load_config, to_toml
from .errors import CheckpointError, ConfigError, Interrupted, RavenError
from .rundir import claim as claim_run_dir

__all__ = ["setup_run", "run_training", "Recorder", "broadcast_setup"]

EventFn = Callable[[str, dict], None]


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

    with open_dataset(cfg["data"]["path"]) as ds:
        for key in ("train_split", "test_split"):
            if cfg["data"][key]:
                ds.split(cfg["data"][key])
        shape, classes = tuple(ds.feature_shape), int(ds.num_classes)
        counts = ds.split(cfg["data"]["train_split"]).snippets["count"] if cfg["data"]["train_split"] else None
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
        raise _Silent(error_text[1])
    return result


class _Silent(RavenError):
    """Raised on ranks != 0 when rank 0 already reported the error."""


class Recorder:
    """Writes metrics.jsonl / ledger.jsonl / summary.json / checkpoints and emits events.

    Durability: before a checkpoint is renamed into place, everything the
    ledger and the metrics hold up to it is flushed and fsync'ed, and their
    sizes are stored in the checkpoint.  A run resumed from it cuts both
    files back to those sizes (what a killed run wrote after its checkpoint
    is redone; the cut-off tail is kept in ``*.superseded.jsonl``), so no
    record is missing before the checkpoint and none is counted twice after.

    Checkpoints: ``checkpoint.h5`` is the newest; ``checkpoints/`` keeps the
    newest ``run.keep_checkpoints`` (the previous good one among them) and
    the newest one from before the first step whose results a rollback
    could still undo (see :meth:`checkpoint`).
    """

    def __init__(self, run_dir: Path, cfg: dict, on_event: EventFn | None, ranks: int,
                 resume_extra: dict | None = None):
        self.dir = Path(run_dir)
        self.cfg = cfg
        self.on_event = on_event or (lambda kind, info: None)
        self.ranks = ranks
        self.t0 = time.monotonic()
        self.cpu0 = time.process_time()
        self.train_s = 0.0
        self.eval_s = 0.0
        self._last = None
        self._metrics = None
        self._ledger = None
        self._hosts: dict = {}
        self._resume_extra = resume_extra

    def begin(self, master, run_info: dict | None = None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(self.dir)
        if self._resume_extra is not None:
            # what was written after the checkpoint is redone by this run
            for name, key in (("metrics.jsonl", "metrics_bytes"), (LEDGER, "ledger_bytes")):
                size = self._resume_extra.get(key)
                if isinstance(size, int):
                    _cut_back(self.dir / name, size)
        self._metrics = open(self.dir / "metrics.jsonl", "a", buffering=1)
        self.t0 = time.monotonic()
        self.cpu0 = time.process_time()
        self._last = (self.t0, master.state.samples)
        self._samples0 = master.state.samples
        if self.cfg["poc"]["ledger"]:
            path = self.dir / LEDGER
            torn = path.exists() and path.stat().st_size > 0 and not _last_byte(path) == b"\n"
            self._ledger = open(path, "a", buffering=1 << 16)
            if torn:   # a killed run left half a line: start ours on a fresh one
                self._ledger.write("\n")
            self._ledger.write(json.dumps({
                "ev": "run", "unix_time": time.time(), "start_step": master.state.step,
                "resumed": master.state.step > 0, "ranks": self.ranks,
                "hosts": {str(k): v for k, v in sorted(master.hosts.items())}, "poc": self.cfg["poc"],
                "faults": self.cfg["faults"]["rules"], **(run_info or {})}) + "\n")
        self.on_event("begin", {"ranks": self.ranks, "workers": len(master.worker_ranks),
                                "num_params": master.n, "run_dir": str(self.dir),
                                "resumed_at_step": master.state.step, "epochs": self.cfg["train"]["epochs"]})

    def step_record(self, st, total: dict) -> None:
        """The ledger's record of an applied step (after its accepted copies)."""
        if self._ledger is None:
            return
        self._ledger.write(json.dumps({
            "ev": "step", "step": st.step - 1, "epoch": st.epoch, "step_in_epoch": st.step_in_epoch,
            "tasks": total.get("accepted_copies", 0), "snippets": total.get("snippets", 0),
            "samples": total["samples"], "t": round(time.monotonic() - self.t0, 4)}) + "\n")

    def rollback(self, from_step: int, to_step: int, reason: str, guilty, path, samples: int) -> None:
        """Training went back from ``from_step`` to ``to_step`` (``samples``
        applied at that point): the records of steps >= ``to_step`` written
        before this one are void."""
        self._last = (time.monotonic(), samples)
        rec = {"ev": "rollback", "step": from_step, "to_step": to_step, "guilty": sorted(guilty),
               "reason": reason, "checkpoint": None if path is None else str(path),
               "t": round(time.monotonic() - self.t0, 4)}
        if self._ledger is not None:
            self._ledger.write(json.dumps(rec) + "\n")
        self._write({"event": "rollback", "step": from_step, "to_step": to_step, "reason": reason,
                     "wall_s": round(time.monotonic() - self.t0, 4)})
        where = f"the checkpoint of step {to_step}" if path is not None else f"the start of step {to_step}"
        self.notice(f"step {from_step}: rolled back to {where}: {reason}")

    def notice(self, text: str) -> None:
        """Something an operator should see (membership changes)."""
        self.on_event("notice", {"text": text})

    #: scheduler events an operator sees as they happen (all go to the ledger)
    NOTICES = {"strike": "strike {strikes}", "exclude": "excluded", "readmit": "readmitted", "lost": "lost",
               "drain": "drained", "undrain": "undrained"}

    def ledger(self, events: list[dict], hosts: dict) -> None:
        """Append scheduler events to ledger.jsonl (times relative to the run start)
        and show membership changes as notices."""
        for e in events:
            what = self.NOTICES.get(e.get("ev"))
            if what:
                r = e.get("rank")
                who = "master" if r == 0 else f"rank {r} ({hosts.get(r, '?')})"
                self.notice(f"step {e.get('step')}: {who} {what.format(**e)}: {e.get('reason', '')}")
        if self._ledger is None or not events:
            return
        t0 = self.t0
        out = []
        for e in events:
            e["host"] = hosts.get(e.get("rank"), "?")
            for k in ("assigned", "finished"):
                if k in e:
                    e[k] = round(e[k] - t0, 6)
            if "latency_s" in e:
                e["latency_s"] = round(e["latency_s"], 6)
            out.append(json.dumps(e))
        self._ledger.write("\n".join(out) + "\n")

    def _close_ledger(self, status: str, step: int) -> None:
        if self._ledger is not None:
            self._ledger.write(json.dumps({"ev": "end", "step": step, "t": round(time.monotonic() - self.t0, 3),
                                           "status": status}) + "\n")
            self._sync()
            self._ledger.close()
            self._ledger = None

    def _write(self, rec: dict) -> None:
        self._metrics.write(json.dumps(rec) + "\n")

    def on_step(self, st, window: dict, steps_per_epoch: int, extra: dict | None = None) -> None:
        now = time.monotonic()
        t_prev, s_prev = self._last
        self._last = (now, st.samples)
        n = max(1, window["samples"])
        rec = {"event": "step", "step": st.step, "epoch": st.epoch, "loss": window["loss_sum"] / n,
               "train_accuracy": window["correct"] / n, "samples": st.samples,
               "wall_s": round(now - self.t0, 4),
               "samples_per_s": round((st.samples - s_prev) / max(now - t_prev, 1e-9), 1)}
        rec.update({k: v for k, v in (extra or {}).items() if v is not None})
        self._write(rec)
        self.on_event("step", dict(rec, steps_per_epoch=steps_per_epoch, step_in_epoch=st.step_in_epoch))

    def on_epoch(self, st, metrics: dict) -> None:
        rec = {"event": "epoch", "step": st.step, "epoch": st.epoch, "samples": st.samples,
               "wall_s": round(time.monotonic() - self.t0, 4)}
        rec.update(metrics)
        last_loss = None
        for line in reversed(_read_jsonl(self.dir / "metrics.jsonl")):
            if line.get("event") == "step":
                last_loss = line["loss"]
                break
        rec["loss"] = last_loss
        self._write(rec)
        self.on_event("epoch", rec)

    def checkpoint(self, master, keep_only: bool = False) -> Path:
        """Write a checkpoint of the master's state; returns its path.

        The ledger and metrics are made durable first (their sizes go into
        the checkpoint).  ``keep_only``: write it only to ``checkpoints/``
        (the state a run starts from, kept for rollbacks) and only when no
        kept checkpoint is at this step yet."""
        from .checkpoint import save_checkpoint

        step = master.state.step
        kept = self.dir / KEPT_DIR / f"step-{step:09d}.h5"
        if keep_only and kept.exists():
            return kept
        extra = {"vouched": master.sched.vouched_state(), **self._sync()}
        target = kept if keep_only else self.dir / "checkpoint.h5"
        p = save_checkpoint(target, params=master.model.params, param_info=master.model.param_info,
                            optimizer_state=master.opt.state_dict(), train_state=asdict(master.state),
                            config=_jsonable(self.cfg), model_spec=master.model.spec, extra=extra)
        if not keep_only:
            _keep_copy(p, kept)
            self._write_ledger({"ev": "checkpoint", "step": step, "path": str(p)})
            self.on_event("checkpoint", {"path": str(p), "step": step})
        floor = master.sched.trust_floor()
        _prune_kept(self.dir / KEPT_DIR, self.cfg["run"]["keep_checkpoints"], step if floor is None else floor)
        return p

    def checkpoint_at_or_before(self, step: int) -> Path | None:
        """The newest kept checkpoint of a step <= ``step`` (None: none kept)."""
        best = None
        for s, p in _kept(self.dir / KEPT_DIR):
            if s <= step:
                best = p
        return best

    def _sync(self) -> dict:
        """Flush and fsync the ledger and metrics; their sizes."""
        out = {}
        for key, fh in (("ledger_bytes", self._ledger), ("metrics_bytes", self._metrics)):
            if fh is None or fh.closed:
                continue
            fh.flush()
            try:
                os.fsync(fh.fileno())
            except OSError:
                pass
            out[key] = fh.tell()
        return out

    def _write_ledger(self, rec: dict) -> None:
        if self._ledger is not None:
            self._ledger.write(json.dumps(rec) + "\n")

    def finish(self, master) -> dict:
        wall = time.monotonic() - self.t0
        cpu = time.process_time() - self.cpu0
        st = master.state
        final = next((h for h in reversed(st.history) if "test_accuracy" in h), {})
        trained = st.samples - self._samples0
        summary = {
            "final_test_accuracy": final.get("test_accuracy"),
            "final_test_loss": final.get("test_loss"),
            "epochs": st.epoch,
            "steps": st.step,
            "samples": st.samples,
            "samples_this_run": trained,
            "samples_per_s": round(trained / wall, 1) if wall > 0 else None,
            "ranks": self.ranks,
            "workers": len(master.worker_ranks),
            "master_computes": master.master_computes,
            "wall_s": round(wall, 3),
            "master_cpu_s": round(cpu, 3),
            "master_cpu_fraction": round(cpu / wall, 4) if wall > 0 else None,
            "num_params": master.n,
            "hosts": {str(k): v for k, v in sorted(master.hosts.items())},
            "step_ms": _per_step(master.timing),
            "messages": master.stats["messages"],
            "bytes_in": master.stats["bytes_in"],
            "bytes_out": master.stats["bytes_out"],
            "history": st.history,
        }
        summary["workers_status"] = {str(r): w for r, w in sorted(master.sched.worker_stats().items())}
        (self.dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        self._close_ledger("finished", st.step)
        self.on_event("end", summary)
        if self._metrics:
            self._metrics.close()
        return summary


def _per_step(t: dict) -> dict:
    """Mean milliseconds per step: the master waiting for results and updating;
    the workers computing and waiting between tasks (summed over workers)."""
    n = max(1, t["steps"])
    return {"wait": round(1e3 * t["wait_s"] / n, 3), "update": round(1e3 * t["update_s"] / n, 3),
            "worker_compute": round(1e3 * t["worker_compute_s"] / n, 3),
            "worker_idle": round(1e3 * t.get("worker_idle_s", 0.0) / n, 3)}


def _read_jsonl(path: Path) -> list[dict]:
    try:
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    except (OSError, ValueError):
        return []


def _jsonable(cfg: dict) -> dict:
    return json.loads(json.dumps(cfg, default=str))


LEDGER = "ledger.jsonl"
KEPT_DIR = "checkpoints"
_KEPT = re.compile(r"step-(\d+)\.h5$")
_TMP = re.compile(r"^\..+\.tmp-(\d+)$")


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1)


def _cut_back(path: Path, size: int) -> None:
    """Cut ``path`` back to ``size`` bytes; the tail is appended to
    ``<stem>.superseded.jsonl`` (records of steps a resumed run redoes)."""
    try:
        now = path.stat().st_size
    except FileNotFoundError:
        return
    if now <= size:
        return
    with open(path, "rb+") as fh:
        fh.seek(size)
        tail = fh.read()
        with open(path.with_name(path.stem + ".superseded.jsonl"), "ab") as out:
            out.write(tail if tail.endswith(b"\n") else tail + b"\n")
            out.flush()
            os.fsync(out.fileno())
        fh.truncate(size)
        fh.flush()
        os.fsync(fh.fileno())


def _kept(folder: Path) -> list[tuple[int, Path]]:
    """Kept checkpoints, oldest first."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    out = []
    for n in names:
        m = _KEPT.fullmatch(n)
        if m:
            out.append((int(m.group(1)), folder / n))
    return sorted(out)


def _keep_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes a kept copy of the checkpoint ``src`` (a hard link
    where the filesystem has them)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    except OSError as exc:
        raise CheckpointError(f"cannot keep a copy of {src} as {dst}: {exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def _prune_kept(folder: Path, keep: int, floor: int) -> None:
    """Keep the newest ``keep`` checkpoints in ``folder`` and the newest one
    at or before step ``floor`` (the rollback point of last resort)."""
    kept = _kept(folder)
    save = {p for _, p in kept[-keep:]} if keep > 0 else set()
    older = [p for s, p in kept if s <= floor]
    if older:
        save.add(older[-1])
    for _, p in kept:
        if p not in save:
            try:
                p.unlink()
            except OSError:
                pass


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Remove temporary checkpoint files that dead processes left behind
    (the run directory is locked by this job, so none is being written)."""
    for folder in (run_dir, run_dir / KEPT_DIR):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for n in names:
            m = _TMP.match(n)
            if m and int(m.group(1)) != os.getpid():
                try:
                    (folder / n).unlink()
                except OSError:
                    pass


def run_training(comm, cfg: dict, on_event: EventFn | None = None) -> dict | None:
    """Rank 0 runs the master and returns the summary; other ranks work and return None."""
    if comm.Get_rank() != 0:
        from .protocol.worker import run_worker

        run_worker(comm, cfg)
        return None
    return _master_main(comm, cfg, on_event)


def _master_main(comm, cfg: dict, on_event: EventFn | None) -> dict:
    try:
        master = _make_master(comm, cfg, on_event)
    except BaseException as exc:
        # The workers are up (or starting): release them before reporting.
        if not _release_workers(comm):
            exc.abort_job = True
        raise
    return _run_master(master)


#: how long a master that failed before training waits for every worker to take
#: its stop message (a worker still compiling its kernels takes it afterwards)
RELEASE_TIMEOUT_S = 120.0
#: ... and then for this long without any message arriving
RELEASE_QUIET_S = 0.05


def _release_workers(comm, timeout_s: float = RELEASE_TIMEOUT_S, quiet_s: float = RELEASE_QUIET_S) -> bool:
    """Stop every worker when no :class:`Master` could be built.

    Sends each worker the stop message and meanwhile receives and drops
    whatever the workers send (their hello, an error report), until every
    stop is delivered and nothing has arrived for ``quiet_s``: a message
    left unreceived makes ``MPI_Finalize`` fail on this rank ("unmatched
    messages"), which turned one clear error into a traceback and a random
    exit status.  A worker sends nothing after it took its stop (it flushed
    its sends before), so the quiet period only covers messages in flight.
    True when every worker got its stop within ``timeout_s``.
    """
    from mpi4py import MPI

    from .protocol.messages import TAG_CTRL
    from .protocol.transport import Backoff, Outbox

    outbox = Outbox()
    for r in range(1, comm.Get_size()):
        outbox.add(comm.issend({"type": "stop"}, dest=r, tag=TAG_CTRL))
    backoff = Backoff(1e-4, 5e-3)
    status = MPI.Status()
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while True:
        got = False
        while True:
            msg = comm.improbe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status)
            if msg is None:
                break
            got = True
            msg.Recv([bytearray(status.Get_count(MPI.BYTE)), MPI.BYTE])
        pending = outbox.progress()
        now = time.monotonic()
        if got or pending:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since > quiet_s:
            return True
        if now > deadline:
            outbox.cancel_all()
            return False
        if got:
            backoff.busy()
        else:
            backoff.idle()


def _make_master(comm, cfg: dict, on_event: EventFn | None):
    from .engine import build_model, make_optimizer
    from .protocol.master import Master, TrainState
    from .protocol.worker import open_splits

    run_dir = Path(cfg["run"]["dir"])
    alone = comm.Get_size() == 1 or cfg["cluster"]["master_computes"] == "yes"
    if not alone:
        cfg_master = json.loads(json.dumps(cfg))
        cfg_master["data"]["cache"] = False  # the master only needs the snippet tables
    else:
        cfg_master = cfg
    ds, splits = open_splits(cfg_master)
    model = build_model(cfg["model"], tuple(ds.feature_shape), int(ds.num_classes), backend=cfg["cluster"]["backend"])
    opt = make_optimizer(dict(cfg["optimizer"]), model)  # sized for model.num_trainable, on its backend
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
    master = Master(comm, cfg, model, opt, ds, splits, rec, state)
    if extra:
        master.sched.load_vouched_state(extra.get("vouched", []))
    return master


def _checkpoint_extra(path: Path) -> dict:
    """The bookkeeping a checkpoint carries besides the model (ledger and
    metrics sizes, what rollbacks need to know)."""
    from .checkpoint import load_checkpoint

    return load_checkpoint(path).get("extra") or {}


def _run_master(master) -> dict:
    rec, ds = master.rec, master.ds
    try:
        master.start()
        master.train()
        summary = rec.finish(master)
    except BaseException as exc:
        rec.ledger(master.sched.drain_events(), master.hosts)
        interrupted = isinstance(exc, (KeyboardInterrupt, Interrupted))
        rec._close_ledger("interrupted" if interrupted else "failed", master.state.step)
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
    from .protocol.master import TrainState

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
