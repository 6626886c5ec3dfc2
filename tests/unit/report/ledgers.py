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

    def run(self, start, ranks=4, resumed=None, hosts=None, collectors=None) -> None:
        self.t = 0.0
        extra = {} if collectors is None else {"collectors": collectors}
        self.rec(ev="run", unix_time=1.7e9 + start, start_step=start, resumed=start > 0 if resumed is None else resumed,
                 ranks=ranks, hosts=hosts or HOSTS, poc={"redundancy": 2}, faults=[], train_snippets=self.n,
                 steps_per_epoch=self.spe, epochs=self.epochs, max_steps=self.max_steps, **extra)

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


# ------------------------------------------------------------ collectors --
HOSTS7 = {str(r): f"n{r}" for r in range(7)}
SNIPPET = 32     # samples per snippet in the tree ledgers


class Group(Ledger):
    """A collector's ledger (ledger.collector-<rank>.jsonl) the way the
    collector writes it: a ``collector`` record per run start, copies of its
    sub-tasks (ids from 1 per run start) with ``collector`` and
    ``parent_task``, membership events with ``collector``, and a
    ``group_sum`` per sum sent up."""

    def __init__(self, rank, children, parent=0):
        super().__init__()
        self.rank, self.children, self.parent = rank, list(children), parent
        self.next_sub = 1

    def start(self, unix_time) -> None:
        self.t = 0.0
        self.next_sub = 1
        self.rec(ev="collector", collector=self.rank, parent=self.parent, children=self.children,
                 hosts={str(r): f"n{r}" for r in [self.rank, *self.children]}, unix_time=unix_time)

    def sub(self, step, parent_task, rank, state="accepted", snippets=(0,), **kw) -> int:
        """A copy of a new sub-task (``kw["task"]``: of that sub-task instead); returns its id."""
        sid = kw.pop("task", None)
        if sid is None:
            sid = self.next_sub
            self.next_sub += 1
        self.copy(step, sid, rank, state, snippets=list(snippets), samples=SNIPPET * len(snippets), **kw)
        rec = json.loads(self.lines[-1])
        self.lines[-1] = json.dumps({**rec, "collector": self.rank, "parent_task": parent_task})
        return sid

    def event(self, ev, step, rank, reason="", **kw) -> None:
        super().event(ev, step, rank, reason, collector=self.rank, **kw)

    def sum(self, step, task, subs, samples=None, kind="grad") -> None:
        self.rec(ev="group_sum", collector=self.rank, step=step, task=task, kind=kind, subs=list(subs),
                 samples=SNIPPET * len(subs) if samples is None else samples, t=round(self.t, 4))

    def task(self, step, parent_task, ids) -> list[int]:
        """A parent's task cut into one sub-task per snippet, on the workers in
        turn, each accepted; the sum goes up.  Returns the sub-task ids."""
        subs = [self.sub(step, parent_task, self.children[j % len(self.children)], snippets=[i])
                for j, i in enumerate(ids)]
        self.sum(step, parent_task, subs)
        return subs


class Tree:
    """Rank 0's ledger and its collectors' ledgers of a 7-rank job with two
    collectors (1 leads 2, 3; 4 leads 5, 6); with ``levels=2``, collector 4
    is a child of collector 1 (1 leads 2, 4; 4 leads 5, 6) and rank 0 hears
    only collector 1.  Each step has two tasks of two snippets; a task on a
    collector is cut into one sub-task per snippet."""

    def __init__(self, levels=1):
        self.root = Run(tasks=2, per_task=2, steps_per_epoch=4, epochs=2)
        if levels == 1:
            self.groups = {1: Group(1, [2, 3]), 4: Group(4, [5, 6])}
            self.top = [1, 4]
        else:
            self.groups = {1: Group(1, [2, 4]), 4: Group(4, [5, 6], parent=1)}
            self.top = [1]
        self.levels = levels

    def run(self, start) -> None:
        self.root.run(start, ranks=7, hosts=HOSTS7, collectors=sorted(self.groups))
        for g in self.groups.values():
            g.start(1.7e9 + start - 0.5)

    def step(self, s, record=True) -> list[int]:
        """Step ``s``: its tasks through the tree, accepted; returns the task ids."""
        L = self.root
        tids = []
        for k in range(L.tasks):
            task = L.next_task
            L.next_task += 1
            tids.append(task)
            ids = L.ids(s, k)
            c = self.top[k % len(self.top)]
            if self.levels == 1:
                self.groups[c].task(s, task, ids)
            else:   # collector 1 gives snippet 0 to rank 2 and snippet 1 to collector 4, which cuts it again
                g1, g4 = self.groups[1], self.groups[4]
                g1.sub(s, task, 2, snippets=ids[:1])
                sid = g1.sub(s, task, 4, snippets=ids[1:])
                g4.task(s, sid, ids[1:])
                g1.sum(s, task, [sid - 1, sid])
            L.copy(s, task, c, "accepted", snippets=ids, samples=SNIPPET * len(ids))
        if record:
            e, i = divmod(s, L.spe)
            L.rec(ev="step", step=s, epoch=e, step_in_epoch=i + 1, tasks=L.tasks, snippets=L.tasks * L.per_task,
                  samples=L.tasks * L.per_task * SNIPPET, t=round(L.t, 3))
        return tids

    def steps(self, a, b) -> None:
        for s in range(a, b):
            self.step(s)

    def end(self, step, status="finished") -> None:
        self.root.end(step, status)

    def summary(self) -> dict:
        return ledger_summary((json.loads(x) for x in self.root.lines),
                              groups={r: [json.loads(x) for x in g.lines] for r, g in self.groups.items()})

    def write(self, run_dir, tails=None):
        """ledger.jsonl and the collectors' ledgers in ``run_dir`` (``tails``: {rank: text appended})."""
        run_dir.mkdir(parents=True, exist_ok=True)
        self.root.write(run_dir / "ledger.jsonl")
        for r, g in self.groups.items():
            g.write(run_dir / f"ledger.collector-{r}.jsonl", tail=(tails or {}).get(r, ""))
        return run_dir


def tree_run(levels=1, steps=4) -> Tree:
    """A finished run of ``steps`` steps through the tree."""
    T = Tree(levels)
    T.run(0)
    T.steps(0, steps)
    T.end(steps)
    return T
