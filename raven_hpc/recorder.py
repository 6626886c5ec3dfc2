"""The master's record of a run: metrics, the ledger, checkpoints, the summary.

Files in the run directory::

    metrics.jsonl   one JSON object per logged step, per epoch, per rollback
    ledger.jsonl    every copy, verdict, membership change, step and checkpoint
                    (record kinds: :mod:`raven_hpc.ledger_schema`)
    summary.json    final accuracy, throughput, wall and master CPU seconds
    checkpoint.h5   parameters + optimizer state + position, written atomically
    checkpoints/    the newest ``run.keep_checkpoints`` and the rollback point

The recorder is handed values (a :class:`Snapshot`, the training state,
the master's counters), never the master itself.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import CheckpointError
from .ledger_schema import (CHECKPOINT, DRAIN, END, EV, EXCLUDE, LEDGER_NAME, LOST, READMIT, ROLLBACK, RUN, STEP,
                            STRIKE, UNDRAIN)

__all__ = ["Recorder", "Snapshot", "EventFn", "LEDGER", "KEPT_DIR", "cut_back", "kept_checkpoints", "keep_copy",
           "prune_kept", "remove_stale_temporaries", "per_step"]

EventFn = Callable[[str, dict], None]


@dataclass
class Snapshot:
    """What a checkpoint holds: the model, the optimizer, where training is,
    and what a rollback needs to know (which ranks vouched for which steps;
    the oldest step a rollback may still go back to, None: none)."""

    params: np.ndarray
    param_info: Any
    optimizer_state: dict
    train_state: dict
    model_spec: Any
    vouched: list
    trust_floor: int | None


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

    def begin(self, state, hosts: dict, workers: int, num_params: int, run_info: dict | None = None) -> None:
        """Open the metrics and the ledger (cut back to a resumed checkpoint)
        and write the ledger's ``run`` record; ``state`` is where training
        starts (a :class:`~raven_hpc.protocol.training.TrainState`)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.dir)
        if self._resume_extra is not None:
            # what was written after the checkpoint is redone by this run
            for name, key in (("metrics.jsonl", "metrics_bytes"), (LEDGER, "ledger_bytes")):
                size = self._resume_extra.get(key)
                if isinstance(size, int):
                    cut_back(self.dir / name, size)
        self._metrics = open(self.dir / "metrics.jsonl", "a", buffering=1)
        self.t0 = time.monotonic()
        self.cpu0 = time.process_time()
        self._last = (self.t0, state.samples)
        self._samples0 = state.samples
        if self.cfg["poc"]["ledger"]:
            path = self.dir / LEDGER
            torn = path.exists() and path.stat().st_size > 0 and not _last_byte(path) == b"\n"
            self._ledger = open(path, "a", buffering=1 << 16)
            if torn:   # a killed run left half a line: start ours on a fresh one
                self._ledger.write("\n")
            self._ledger.write(json.dumps({
                EV: RUN, "unix_time": time.time(), "start_step": state.step,
                "resumed": state.step > 0, "ranks": self.ranks,
                "hosts": {str(k): v for k, v in sorted(hosts.items())}, "poc": self.cfg["poc"],
                "faults": self.cfg["faults"]["rules"], **(run_info or {})}) + "\n")
        self.on_event("begin", {"ranks": self.ranks, "workers": workers,
                                "collectors": (run_info or {}).get("collectors", []),
                                "num_params": num_params, "run_dir": str(self.dir),
                                "resumed_at_step": state.step, "epochs": self.cfg["train"]["epochs"]})

    def step_record(self, st, total: dict) -> None:
        """The ledger's record of an applied step (after its accepted copies)."""
        if self._ledger is None:
            return
        self._ledger.write(json.dumps({
            EV: STEP, "step": st.step - 1, "epoch": st.epoch, "step_in_epoch": st.step_in_epoch,
            "tasks": total.get("accepted_copies", 0), "snippets": total.get("snippets", 0),
            "samples": total["samples"], "t": round(time.monotonic() - self.t0, 4)}) + "\n")

    def rollback(self, from_step: int, to_step: int, reason: str, guilty, path, samples: int) -> None:
        """Training went back from ``from_step`` to ``to_step`` (``samples``
        applied at that point): the records of steps >= ``to_step`` written
        before this one are void."""
        self._last = (time.monotonic(), samples)
        rec = {EV: ROLLBACK, "step": from_step, "to_step": to_step, "guilty": sorted(guilty),
               "reason": reason, "checkpoint": None if path is None else str(path),
               "t": round(time.monotonic() - self.t0, 4)}
        if self._ledger is not None:
            self._ledger.write(json.dumps(rec) + "\n")
        self._write({"event": "rollback", "step": from_step, "to_step": to_step, "reason": reason,
                     "wall_s": round(time.monotonic() - self.t0, 4)})
        where = f"the checkpoint of step {to_step}" if path is not None else f"the start of step {to_step}"
        self.notice(f"step {from_step}: rolled back to {where}: {reason}")

    #: ledger events that change whether a rank takes part
    MEMBERSHIP = (EXCLUDE, READMIT, LOST, DRAIN, UNDRAIN)

    def member(self, rank: int, event: str) -> None:
        """A rank's membership changed (``event``: a ledger record kind of
        :attr:`MEMBERSHIP`): the ``member`` event for the live display."""
        self.on_event("member", {"rank": int(rank), "event": event})

    def notice(self, text: str) -> None:
        """Something an operator should see (membership changes)."""
        self.on_event("notice", {"text": text})

    #: scheduler events an operator sees as they happen (all go to the ledger)
    NOTICES = {STRIKE: "strike {strikes}", EXCLUDE: "excluded", READMIT: "readmitted", LOST: "lost",
               DRAIN: "drained", UNDRAIN: "undrained"}

    def ledger(self, events: list[dict], hosts: dict) -> None:
        """Append scheduler events to ledger.jsonl (times relative to the run start)
        and show membership changes as notices."""
        for e in events:
            what = self.NOTICES.get(e.get(EV))
            if what:
                r = e.get("rank")
                who = "master" if r == 0 else f"rank {r} ({hosts.get(r, '?')})"
                self.notice(f"step {e.get('step')}: {who} {what.format(**e)}: {e.get('reason', '')}")
                if e.get(EV) in self.MEMBERSHIP:
                    self.member(r, e[EV])
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

    def close_ledger(self, status: str, step: int) -> None:
        if self._ledger is not None:
            self._ledger.write(json.dumps({EV: END, "step": step, "t": round(time.monotonic() - self.t0, 3),
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

    def checkpoint(self, snap: "Snapshot", keep_only: bool = False) -> Path:
        """Write a checkpoint of ``snap``; returns its path.

        The ledger and metrics are made durable first (their sizes go into
        the checkpoint).  ``keep_only``: write it only to ``checkpoints/``
        (the state a run starts from, kept for rollbacks) and only when no
        kept checkpoint is at this step yet."""
        from .checkpoint import save_checkpoint

        step = snap.train_state["step"]
        kept = self.dir / KEPT_DIR / f"step-{step:09d}.h5"
        if keep_only and kept.exists():
            return kept
        extra = {"vouched": snap.vouched, **self._sync()}
        target = kept if keep_only else self.dir / "checkpoint.h5"
        p = save_checkpoint(target, params=snap.params, param_info=snap.param_info,
                            optimizer_state=snap.optimizer_state, train_state=snap.train_state,
                            config=_jsonable(self.cfg), model_spec=snap.model_spec, extra=extra)
        if not keep_only:
            keep_copy(p, kept)
            self._write_ledger({EV: CHECKPOINT, "step": step, "path": str(p)})
            self.on_event("checkpoint", {"path": str(p), "step": step})
        floor = snap.trust_floor
        prune_kept(self.dir / KEPT_DIR, self.cfg["run"]["keep_checkpoints"], step if floor is None else floor)
        return p

    def checkpoint_at_or_before(self, step: int) -> Path | None:
        """The newest kept checkpoint of a step <= ``step`` (None: none kept)."""
        best = None
        for s, p in kept_checkpoints(self.dir / KEPT_DIR):
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

    def finish(self, state, facts: dict) -> dict:
        """Write summary.json and close the files.  ``facts`` (from the
        master): workers, master_computes, num_params, hosts, timing (summed
        seconds per role, see :func:`per_step`), stats (messages, bytes) and
        workers_status (the scheduler's per-worker counts)."""
        wall = time.monotonic() - self.t0
        cpu = time.process_time() - self.cpu0
        st = state
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
            "workers": facts["workers"],
            "master_computes": facts["master_computes"],
            "collectors": facts.get("collectors", []),
            "wall_s": round(wall, 3),
            "master_cpu_s": round(cpu, 3),
            "master_cpu_fraction": round(cpu / wall, 4) if wall > 0 else None,
            "num_params": facts["num_params"],
            "hosts": {str(k): v for k, v in sorted(facts["hosts"].items())},
            "step_ms": per_step(facts["timing"]),
            "messages": facts["stats"]["messages"],
            "bytes_in": facts["stats"]["bytes_in"],
            "bytes_out": facts["stats"]["bytes_out"],
            "history": st.history,
        }
        summary["workers_status"] = {str(r): w for r, w in sorted(facts["workers_status"].items())}
        (self.dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        self.close_ledger("finished", st.step)
        self.on_event("end", summary)
        if self._metrics:
            self._metrics.close()
        return summary


def per_step(t: dict) -> dict:
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


LEDGER = LEDGER_NAME
KEPT_DIR = "checkpoints"
_KEPT = re.compile(r"step-(\d+)\.h5$")
_TMP = re.compile(r"^\..+\.tmp-(\d+)$")


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1)


def cut_back(path: Path, size: int) -> None:
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


def kept_checkpoints(folder: Path) -> list[tuple[int, Path]]:
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


def keep_copy(src: Path, dst: Path) -> None:
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


def prune_kept(folder: Path, keep: int, floor: int) -> None:
    """Keep the newest ``keep`` checkpoints in ``folder`` and the newest one
    at or before step ``floor`` (the rollback point of last resort)."""
    kept = kept_checkpoints(folder)
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


def remove_stale_temporaries(run_dir: Path) -> None:
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
