"""Ledger builders for the report tests: synthetic ledger.jsonl lines the way the master writes them."""
from __future__ import annotations

import json

from raven_hpc.report import ledger_summary


HOSTS = {"0": "n0", "1": "n1", "2": "n2", "3": "n3"}
FAST, SLOW = 0.004, 0.016      # compute_s of 128 samples: rank 3 is 4x slower


class Ledger:
    """Builds ledger.jsonl lines the way the master writes them."""

    def __init__(self):
        self.lines: list[str] = []
        self.t = 0.0

    def rec(self, **kw) -> None:
        self.lines.append(json.dumps(kw))

    def run(self, start, ranks=4, resumed=False, hosts=None) -> None:
        self.t = 0.0
        self.rec(ev="run", unix_time=1.7e9 + start, start_step=start, resumed=resumed, ranks=ranks,
                 hosts=hosts or HOSTS, poc={"redundancy": 2, "quorum": 1})

    def copy(self, step, task, rank, state, *, compute=None, samples=128, latency=0.05, backup=False,
             verified=False, agreed=None, credited=None, kind="grad", reason="", snippets=None) -> None:
        if compute is None and state not in ("lost", "skipped"):
            compute = SLOW if rank == 3 else FAST
        if credited is None:
            credited = state in ("accepted", "duplicate")
        self.t += 0.01
        snippets = [2 * task, 2 * task + 1] if snippets is None else snippets
        self.rec(ev="copy", step=step, task=task, kind=kind, snippets=snippets, samples=samples,
                 rank=rank, host=HOSTS.get(str(rank), f"n{rank}"), assigned=round(self.t, 4),
                 finished=round(self.t + latency, 4), compute_s=compute, latency_s=latency, state=state,
                 backup=backup, verified=verified, agreed=agreed, credited=credited, reason=reason)

    def event(self, ev, step, rank, reason="", **kw) -> None:
        self.rec(ev=ev, step=step, rank=rank, host=HOSTS.get(str(rank), f"n{rank}"), reason=reason, **kw)

    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)

    def write(self, path, tail: str = ""):
        path.write_text(self.text() + tail)
        return path


def scenario() -> Ledger:
    """Two runs: run 1 (4 ranks) is killed during step 20 and leaves a partial
    line; run 2 resumes from the checkpoint at step 18 and finishes step 24.

    * every task has 2 copies (accepted + duplicate) on ranks 1..3; rank 3 is 4x slower;
    * rank 2 disagrees with the quorum at steps 14, 15, 16 (3 strikes) and is excluded at step 16;
    * one backup (step 5), one late copy (step 7), one skipped copy (step 9);
    * rank 1 is drained at step 18 (its copy is lost) and undrained at step 19;
    * in run 2 rank 3 is lost at step 22 (hung) with a lost copy.
    """
    L = Ledger()
    L.run(0)
    for step in range(20):
        for k in range(3):
            task = 3 * step + k
            if step < 14:
                a, b = 1 + k, 1 + (k + 1) % 3
            else:
                a, b = (1, 3) if k != 2 else (3, 1)
            if step == 18:
                L.copy(step, task, 3, "accepted")
                if k == 0:
                    L.copy(step, task, 1, "lost", reason="drained")
                continue
            L.copy(step, task, a, "accepted", verified=True, agreed=True)
            L.copy(step, task, b, "duplicate", verified=True, agreed=True)
            if step in (14, 15, 16) and k == 1:
                L.copy(step, task, 2, "rejected", verified=True, agreed=False, credited=False,
                       reason="disagreed with the quorum")
        if step in (14, 15, 16):
            L.event("strike", step, 2, "disagreed with the quorum (fingerprint off by 3.1e+01 x tolerance)",
                    strikes=step - 13)
        if step == 16:
            L.event("exclude", step, 2, "3 strikes")
        if step == 5:
            L.copy(step, 3 * step, 2, "duplicate", backup=True, verified=True, agreed=True, credited=True)
        if step == 7:
            L.copy(step, 3 * step + 1, 3, "late", credited=False)
        if step == 9:
            L.copy(step, 3 * step + 2, 1, "skipped", credited=False)
        if step == 18:
            L.event("drain", step, 1, "listed in RUN_DIR/drain")
        if step == 19:
            L.event("undrain", step, 1, "readmitted by the operator")
    # step 20 in flight when run 1 is killed
    L.copy(20, 60, 1, "accepted")
    L.copy(20, 61, 3, "lost", reason="run stopped")
    L.rec(ev="heartbeat", t=3.0)                       # a record kind this reader does not know
    L.lines.append('{"ev": "copy", "step": 20, "task": 62, "ki')   # killed mid-line ...
    L.lines[-1] += json.dumps({"ev": "run", "unix_time": 1.7e9 + 100, "start_step": 18, "resumed": True,
                               "ranks": 4, "hosts": HOSTS, "poc": {}})  # ... and run 2 appended to it
    for step in range(18, 25):
        for k in range(3):
            task = 3 * step + k
            r = 1 + k
            if step >= 22 and r == 3:
                r = 1
            L.copy(step, task, r, "accepted")
        if step == 22:
            L.copy(step, 3 * step + 2, 3, "lost", latency=60.0, reason="worker lost")
            L.event("lost", step, 3, "no result for 60.0 s (hung)")
    L.rec(ev="end", step=25, t=12.3, status="finished")
    return L


def row(summary, rank):
    return next(r for r in summary["ranks"] if r["rank"] == rank)


class Run(Ledger):
    """Ledger lines in the format with a plan in the run record and a step
    record after each applied step.  A step has ``tasks`` grad tasks of
    ``per_task`` snippets (accepted on one rank, a duplicate on another); an
    epoch's ``steps_per_epoch`` steps cover every snippet of
    range(train_snippets) once, in an order that depends on the epoch."""

    def __init__(self, tasks=3, per_task=2, steps_per_epoch=4, epochs=2, max_steps=0):
        super().__init__()
        self.tasks, self.per_task, self.spe, self.epochs, self.max_steps = (tasks, per_task, steps_per_epoch,
                                                                          epochs, max_steps)
        self.n = tasks * per_task * steps_per_epoch
        self.next_task = 0

    def run(self, start, ranks=4, resumed=None, hosts=None) -> None:
        self.t = 0.0
        self.rec(ev="run", unix_time=1.7e9 + start, start_step=start, resumed=start > 0 if resumed is None else resumed,
                 ranks=ranks, hosts=hosts or HOSTS, poc={"redundancy": 2}, faults=[], train_snippets=self.n,
                 steps_per_epoch=self.spe, epochs=self.epochs, max_steps=self.max_steps)

    def ids(self, step, k) -> list[int]:
        e, i = divmod(step, self.spe)
        base = (i * self.tasks + k) * self.per_task
        return [(base + j + 5 * e) % self.n for j in range(self.per_task)]

    def step(self, s, *, record=True, snippets=None) -> list[int]:
        """Step ``s``: its copies and its record; ``snippets`` {k: ids}
        replaces the ids of task k.  Returns the task ids."""
        tids = []
        total = 0
        for k in range(self.tasks):
            task = self.next_task
            self.next_task += 1
            tids.append(task)
            ids = (snippets or {}).get(k, self.ids(s, k))
            total += len(ids)
            self.copy(s, task, 1 + k % 3, "accepted", snippets=ids, verified=True, agreed=True)
            self.copy(s, task, 1 + (k + 1) % 3, "duplicate", snippets=ids, verified=True, agreed=True)
        if record:
            e, i = divmod(s, self.spe)
            self.rec(ev="step", step=s, epoch=e, step_in_epoch=i + 1, tasks=self.tasks, snippets=total,
                     samples=total * 32, t=round(self.t, 3))
        return tids

    def steps(self, a, b) -> None:
        for s in range(a, b):
            self.step(s)

    def end(self, step, status="finished") -> None:
        self.rec(ev="end", step=step, t=round(self.t, 3), status=status)


def integ(L: Ledger) -> dict:
    return ledger_summary(json.loads(x) for x in L.lines)["integrity"]


def complete_run(**kw) -> Run:
    L = Run(**kw)
    L.run(0)
    L.steps(0, 8)
    L.end(8)
    return L


def make_run_dir(path, L: Ledger, summary_steps=None, checkpoint_step=None, tail=""):
    path.mkdir(parents=True, exist_ok=True)
    L.write(path / "ledger.jsonl", tail=tail)
    if summary_steps is not None:
        (path / "summary.json").write_text(json.dumps({"steps": summary_steps, "history": []}))
    if checkpoint_step is not None:
        import h5py

        with h5py.File(path / "checkpoint.h5", "w") as f:
            f.attrs["train_state"] = json.dumps({"epoch": 1, "step_in_epoch": 0, "step": checkpoint_step,
                                                 "samples": 0, "history": []})
    return path


def audited(L: Run, step, task, ok, ranks) -> None:
    L.rec(ev="audit", step=step, task=task, rank=0, host="n0", ok=ok, ranks=ranks,
          reason=f"task {task}: " + ("agrees" if ok else "wrong"))


def rollback_run(with_rollback=True, to_step=3, at_step=6) -> Run:
    """Steps 0-5 applied; during step 6 the audit of a task of step 3 fails:
    back to step ``to_step``, the steps from there redone, the run finishes at 8."""
    L = Run()
    L.run(0)
    tids = {}
    for s in range(0, at_step):
        tids[s] = L.step(s)
    audited(L, 4, tids[3][0], True, [1, 2])
    L.step(at_step, record=False)                 # in flight
    audited(L, at_step, tids[3][1], False, [2, 3])
    L.event("exclude", at_step, 2, "proven wrong by a trusted audit")
    L.event("exonerate", at_step, 1, "1 strike cleared: an audit proved rank 2 wrong", strikes=0)
    if with_rollback:
        L.rec(ev="rollback", step=at_step, to_step=to_step, guilty=[2, 3], reason="audit of task failed",
              checkpoint=None)
        L.copy(at_step, tids[at_step - 1][0] + 3, 3, "late", reason="rolled back")   # a copy the rollback dropped
    L.steps(to_step, 8)
    L.end(8)
    return L
