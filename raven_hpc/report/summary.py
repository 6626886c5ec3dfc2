"""One pass over the ledger's records: :class:`Summary` builds the per-rank rows and feeds the
integrity bookkeeping of :mod:`.integrity`."""
from __future__ import annotations

import statistics
from typing import Iterable

from ..ledger_schema import (ACCEPTED, ARBITRATED, AUDIT, CHECKPOINT, COPY, COPY_STATES, END, EV, EXONERATE, GRAD,
                            RETURNED_STATES, ROLLBACK, RUN, SENT, STEP, STRIKE)
from .common import (MAX_LISTED, MEMBERSHIP, NUMBER_TYPES, RETURNED, TASK_ID_TYPES, RankRow, int_list, median,
                     ranks_words, run_plan, suspect)
from .integrity import Epoch, Problems, Segment, Steps, integrity_verdict

class Summary:
    """``leaders``: the ranks whose collector ledgers will be merged after
    rank 0's (see :mod:`.collectors`): the results rank 0 accepts from them
    (copies of their sums) are kept in ``up`` for the group-sum check."""

    def __init__(self, leaders=()):
        self.ranks: dict[int, RankRow] = {}
        self.runs: list[dict] = []
        self.segments: list[Segment] = []
        self.ignored: dict[str, int] = {}
        self.malformed = 0
        self.records = 0
        self.other_kinds: dict[str, int] = {}
        # integrity, filled as segments close
        self.closed_steps: set = set()
        self.closed_tasks = 0
        self.redone = 0
        self.open = 0
        self.violations: list[dict] = []
        self.violation_count = 0
        self.never_accepted_step: int | None = None
        self.steps = Steps()
        self.epochs: dict[int, Epoch] = {}
        self.problems = Problems()
        self.limited = False               # closed steps of a segment without step records
        self.unknown_snippets = False      # step records of a run record without train_snippets
        # audits, rollbacks and the other events the master writes
        self.audit_count = 0
        self.audit_failed = 0
        self.failed_audits: list[dict] = []
        self.unresolved: list[dict] = []   # failed audits whose wrong result no rollback voided yet
        self.proven_wrong: set = set()
        self.rollbacks: list[dict] = []
        self.arbitrations = 0
        self.arbitrated: list[dict] = []
        self.checkpoints = 0
        self.last_checkpoint: dict | None = None
        # gradient collectors: filled by .collectors.merge_groups
        self.leaders = frozenset(leaders)
        self.up: dict = {}                 # (run index, leader) -> {task: (samples, step, accepted)}
        self.groups: list[dict] = []
        self.group_integrity: dict | None = None
        self.leader_of: dict[int, int] = {}   # rank -> the collector whose ledger holds its records

    def rank(self, r: int) -> RankRow:
        row = self.ranks.get(r)
        if row is None:
            row = self.ranks[r] = RankRow(r)
        return row

    def segment(self) -> Segment:
        if not self.segments:  # copies before any run record: an implicit first run
            self.segments.append(Segment(0))
        return self.segments[-1]

    def fail(self, cat: str, text: str, step: int | None = None) -> None:
        self.problems.add(cat, text, step)

    # -- records --------------------------------------------------------------
    def feed(self, records: Iterable[dict]) -> None:
        copy, add = self.copy, self.add
        n = 0
        for n, rec in enumerate(records, 1):
            if rec.get(EV) == COPY:
                copy(rec)
            else:
                add(rec)
        self.records += n

    def add(self, rec: dict) -> None:
        ev = rec.get(EV)
        if ev == COPY:
            self.copy(rec)
        elif ev == STEP:
            self.step(rec)
        elif ev in MEMBERSHIP or ev == STRIKE:
            self.member(ev, rec)
        elif ev == RUN:
            self.run(rec)
        elif ev == AUDIT:
            self.audit(rec)
        elif ev == ROLLBACK:
            self.rollback(rec)
        elif ev == EXONERATE:
            self.exonerate(rec)
        elif ev == ARBITRATED:
            self.arbitrations += 1
            if len(self.arbitrated) < MAX_LISTED:
                self.arbitrated.append({"step": rec.get("step"), "reason": str(rec.get("reason") or "")})
        elif ev == CHECKPOINT:
            self.checkpoints += 1
            self.last_checkpoint = {"step": rec.get("step"), "path": rec.get("path")}
        elif ev == END:
            seg = self.segment()
            seg.end = {"status": rec.get("status"), "step": rec.get("step"), "t": rec.get("t")}
            if self.runs:
                self.runs[-1]["end"] = seg.end
        elif ev == SENT:
            pass   # which snippets went where: raven_hpc.report.exposure reads them
        else:
            self.ignored[str(ev)] = self.ignored.get(str(ev), 0) + 1

    def copy(self, rec: dict) -> None:
        # The hot path (nearly every line): subscripts, per-rank counters only
        # (the totals are their sums); a record missing fields takes .get().
        try:
            r, state, host = rec["rank"], rec["state"], rec["host"]
            backup, credited, verified, agreed = rec["backup"], rec["credited"], rec["verified"], rec["agreed"]
            lat, cs, n = rec["latency_s"], rec["compute_s"], rec["samples"]
            kind, step, task = rec["kind"], rec["step"], rec["task"]
        except KeyError:
            get = rec.get
            r, state, host = get("rank"), get("state"), get("host")
            backup, credited, verified, agreed = get("backup"), get("credited"), get("verified"), get("agreed")
            lat, cs, n = get("latency_s"), get("compute_s"), get("samples")
            kind, step, task = get("kind", GRAD), get("step"), get("task")
        row = self.ranks.get(r)
        if row is None:
            if type(r) is not int:
                self.malformed += 1
                return
            row = self.rank(r)
        counts = row.counts
        if state not in counts:
            self.malformed += 1
            return
        counts[state] += 1
        if r in self.leaders:
            self.from_leader(r, task, n, step, state == ACCEPTED)
        if host is not None and (not row.hosts or host != row.hosts[-1]):
            row.host(host)
        if backup:
            row.backups += 1
        credited = credited is True
        if credited:
            row.credited += 1
        if verified:
            row.verified += 1
            if agreed is False:
                row.disagreed += 1
        if state in RETURNED and type(lat) in NUMBER_TYPES:
            row.latency.append(lat)
        if type(cs) in NUMBER_TYPES and type(n) in NUMBER_TYPES and n > 0:
            row.compute.append(1000.0 * cs / n)
        if kind != GRAD:
            self.other_kinds[str(kind)] = self.other_kinds.get(str(kind), 0) + 1
            return
        sn = None
        if state in RETURNED:
            sn = rec.get("snippets")
            k = len(sn) if isinstance(sn, list) else 0
            row.snippets += k
            if state == ACCEPTED:
                row.snippets_accepted += k
        if type(step) is not int or type(task) not in TASK_ID_TYPES:
            self.malformed += 1
            return
        seg = self.segments[-1] if self.segments else self.segment()
        if seg.settling:
            if state != ACCEPTED:
                self.redone += 1        # dropped by the rollback
                return
            seg.settling = False
        key = (step, task)
        tasks = seg.tasks
        v = tasks.get(key, 0)
        if state == ACCEPTED:
            v += 1
            if step > seg.max_accepted_step:
                seg.max_accepted_step = step
                if not seg.new_format and len(seg.pending) > 2:
                    del seg.pending[min(seg.pending)]     # no step records to wait for: keep a few
            last = seg.last_step
            if last is not None and step <= last[0]:
                self.accepted_after_record(seg, step, task, sn)
            else:
                p = seg.pending.get(step)
                if p is None:
                    p = seg.pending[step] = []
                p.append(sn if isinstance(sn, list) else [])
        if credited:
            v += 1 << 16
        tasks[key] = v

    def from_leader(self, r: int, task, samples, step, accepted: bool) -> None:
        """A copy of ``task`` on the collector ``r`` (``accepted``: rank 0 took its sum)."""
        if type(task) in TASK_ID_TYPES:
            key = (max(len(self.runs) - 1, 0), r)
            seen = self.up.get(key)
            if seen is None:
                seen = self.up[key] = {}
            if accepted or task not in seen:
                seen[task] = (samples, step, accepted)

    def accepted_after_record(self, seg: Segment, step: int, task, sn) -> None:
        self.fail("step", f"step {step:,}: task {task} accepted after the step's record (which lists what went "
                          "into the update)")
        last_step, epoch = seg.last_step
        ep = self.epochs.get(epoch) if step == last_step else None
        if ep is not None:
            ep.add(step, sn)

    def step(self, rec: dict) -> None:
        s, e, i = rec.get("step"), rec.get("epoch"), rec.get("step_in_epoch")
        seg = self.segment()
        if type(s) is not int:
            self.fail("step", "a step record without an integer step")
            return
        seg.step_records += 1
        seg.new_format = True
        acc = seg.pending.pop(s, None) or []
        why = self.steps.applied(s)
        if why:
            self.fail("order", why)
            return
        seg.last_step = (s, e)
        n_tasks, n_snippets = rec.get("tasks"), rec.get("snippets")
        if type(n_tasks) is int and n_tasks != len(acc):
            self.fail("step", f"step {s:,}: its record counts {n_tasks:,} grad task{'' if n_tasks == 1 else 's'}, "
                              f"the ledger has "
                              f"{len(acc):,} accepted grad cop{'y' if len(acc) == 1 else 'ies'} of it",
                      step=s if len(acc) < n_tasks else None)
        if type(n_snippets) is int:
            got = sum(len(x) for x in acc)
            if got != n_snippets:
                self.fail("step", f"step {s:,}: its record counts {n_snippets:,} snippet"
                                  f"{'' if n_snippets == 1 else 's'}, its accepted grad copies hold {got:,}")
        if type(e) is not int or type(i) is not int or i < 1:
            self.fail("step", f"step {s:,}: its record has no epoch / step_in_epoch")
            return
        n = seg.plan.get("train_snippets")
        if n is None:
            self.unknown_snippets = True
        ep = self.epochs.get(e)
        first = s - i + 1
        if ep is None:
            for other in self.epochs.values():     # a later epoch started: the earlier ones are complete
                if other.epoch < e and other.marks is not None:
                    other.close(complete=True)
            ep = self.epochs[e] = Epoch(e, n, first)
        elif ep.first != first:
            self.fail("step", f"step {s:,}: step {i:,} of epoch {e}, but epoch {e} started at step {ep.first:,}")
        if ep.marks is None:
            self.fail("step", f"step {s:,}: a step of epoch {e}, which was complete at step {ep.last:,}")
            return
        for ids in acc:
            ep.add(s, ids)
        ep.last = s
        spe = seg.plan.get("steps_per_epoch")
        if spe and i >= spe:
            if i > spe:
                self.fail("step", f"step {s:,}: step {i:,} of epoch {e}, which has {spe:,} steps")
            ep.close(complete=True)

    def _row_of(self, rec: dict):
        """The rank row a membership-like record is about (None: no rank)."""
        r = rec.get("rank")
        if not isinstance(r, int):
            self.malformed += 1
            return None
        row = self.rank(r)
        row.host(rec.get("host"))
        return row

    def member(self, ev: str, rec: dict) -> None:
        row = self._row_of(rec)
        if row is None:
            return
        step, reason = rec.get("step"), str(rec.get("reason") or "")
        if ev == STRIKE:
            row.strikes.append((step, reason))
            return
        row.membership.append({EV: ev, "step": step, "reason": reason, "run": max(len(self.runs) - 1, 0)})
        row.status = MEMBERSHIP[ev]

    def exonerate(self, rec: dict) -> None:
        row = self._row_of(rec)
        if row is None:
            return
        active = len(row.strikes) - row.cleared
        cleared, left = rec.get("cleared"), rec.get("strikes")
        if type(cleared) is not int:
            cleared = active - left if type(left) is int else 1
        cleared = max(0, min(cleared, active))
        row.cleared += cleared
        row.exonerations.append((rec.get("step"), cleared, str(rec.get("reason") or "")))

    def run(self, rec: dict) -> None:
        start = rec.get("start_step")
        start = start if isinstance(start, int) else 0
        if self.segments:
            self.close_segment(self.segments[-1], next_start=start)
        plan = run_plan(rec)
        self.segments.append(Segment(start, len(self.runs), plan))
        hosts = rec.get("hosts") if isinstance(rec.get("hosts"), dict) else {}
        nranks = rec.get("ranks")
        self.runs.append({"unix_time": rec.get("unix_time"), "start_step": start,
                          "resumed": bool(rec.get("resumed")), "ranks": nranks, "hosts": hosts,
                          "poc": rec.get("poc"), "plan": plan, "end": None,
                          "collectors": int_list(rec.get("collectors")) if "collectors" in rec else None})
        self.restart(start, f"run {len(self.runs)} starts at step {start:,}")
        # A (re)start: every rank of the new run starts active; its hosts may differ.
        live = set()
        for k, h in hosts.items():
            try:
                r = int(k)
            except (TypeError, ValueError):
                continue
            live.add(r)
            if r != 0 or r in self.ranks:   # the master only gets a row when it computes
                self.rank(r).host(h)
        if isinstance(nranks, int):
            live.update(range(nranks))
            for r in range(1, nranks):      # idle workers show too
                self.rank(r)
        for r in live:
            if r in self.ranks:
                self.ranks[r].status = "active"

    def restart(self, k: int, why: str) -> None:
        """Training (re)starts at step ``k`` (a run record or a rollback):
        what steps >= k counted is void; a start past the last applied step
        leaves the steps between without records."""
        still = []
        for a in self.unresolved:
            if a["task_step"] >= k:
                a["voided_by"] = why
            else:
                still.append(a)
        self.unresolved = still
        st = self.steps
        if st.next is None:
            st.first = st.next = k
        elif k < st.next:
            st.void(k)
            for e in list(self.epochs):
                if not self.epochs[e].void(k):
                    del self.epochs[e]
        elif k > st.next:
            st.gaps.append([st.next, k - 1, why])
            st.next = k

    # -- audits and rollbacks ---------------------------------------------------
    def task_step(self, seg: Segment, task, step) -> int | None:
        """The step at which the current segment accepted ``task``."""
        if type(task) not in TASK_ID_TYPES:
            return None
        hi = seg.max_accepted_step if type(step) is not int else min(step, seg.max_accepted_step)
        tasks = seg.tasks
        for s in range(hi, seg.start_step - 1, -1):
            if tasks.get((s, task), 0) & 0xFFFF:
                return s
        return None

    def audit(self, rec: dict) -> None:
        self.audit_count += 1
        step, task, ok = rec.get("step"), rec.get("task"), rec.get("ok")
        ranks = int_list(rec.get("ranks"))
        seg = self.segment()
        ts = self.task_step(seg, task, step)
        at = f"step {step:,}" if type(step) is int else "an unknown step"
        if ts is None:
            self.fail("audit", f"the audit at {at} of task {task}: no accepted copy of that task before it "
                               "(since the last resume or rollback)")
        if ok is not True and ok is not False:
            self.fail("audit", f"the audit at {at} of task {task}: no ok true/false")
            return
        if ok:
            return
        self.audit_failed += 1
        self.proven_wrong.update(ranks)
        entry = {"step": step, "task": task, "task_step": ts, "ranks": ranks,
                 "reason": str(rec.get("reason") or ""), "voided_by": None}
        if len(self.failed_audits) < MAX_LISTED:
            self.failed_audits.append(entry)
        if ts is not None:
            self.unresolved.append(entry)

    def rollback(self, rec: dict) -> None:
        s, k = rec.get("step"), rec.get("to_step")
        guilty = int_list(rec.get("guilty"))
        seg = self.segment()
        self.rollbacks.append({"step": s, "to_step": k, "guilty": guilty, "reason": str(rec.get("reason") or ""),
                               "checkpoint": rec.get("checkpoint"), "run": seg.run})
        at = f"step {s:,}" if type(s) is int else "an unknown step"
        if type(k) is not int:
            self.fail("audit", f"the rollback at {at} has no integer to_step: not applied")
            return
        if type(s) is int and k > s:
            self.fail("audit", f"the rollback at step {s:,} goes forward, to step {k:,}")
        # guilty: proven wrong by an audit, or excluded (by strikes) when the rollback came
        unproven = sorted(r for r in set(guilty) - self.proven_wrong
                          if not (r in self.ranks and self.ranks[r].status == "excluded"))
        if unproven:
            it = "it" if len(unproven) == 1 else "them"
            self.fail("audit", f"the rollback at {at} names {ranks_words(unproven)} guilty, but no failed audit "
                               f"before it proved {it} wrong, nor {'was it' if it == 'it' else 'were they'} excluded")
        self.close_segment(seg, next_start=k)
        new = Segment(k, seg.run, seg.plan, settling=True)
        new.new_format = seg.new_format
        self.segments.append(new)
        self.restart(k, f"the rollback at {at} goes back to step {k:,}")

    # -- exactly once ---------------------------------------------------------
    def close_segment(self, seg: Segment, next_start: int | None) -> None:
        """Check the grad tasks of one segment.  Steps below the horizon were
        closed: each task must have been accepted exactly once.  The horizon
        is the next segment's start step (what the resumed run or the
        rollback redid is not checked), none for a finished run, else the
        end record's step or, for a killed run, the step after its last step
        record (a ledger without step records: the last step with an
        accepted copy; the steps from there on were open).  A task accepted
        twice is a violation anywhere."""
        if next_start is not None:
            horizon = next_start
        elif seg.end is not None and seg.end.get("status") == "finished":
            horizon = None
        else:
            end_step = seg.end.get("step") if seg.end is not None else None
            if type(end_step) is int:
                horizon = end_step
            elif seg.last_step is not None:
                horizon = seg.last_step[0] + 1
            else:
                horizon = seg.max_accepted_step
        run_no = seg.run
        closed = set()
        for (step, task), v in seg.tasks.items():
            accepted, credited = v & 0xFFFF, v >> 16
            if horizon is not None and step >= horizon:
                if next_start is not None:
                    self.redone += 1      # redone by the next (resumed) run
                else:
                    self.open += 1        # in flight when this run stopped
                if accepted > 1:
                    self.violation(run_no, step, task, accepted, credited, f"accepted {accepted} times")
                continue
            self.closed_tasks += 1
            closed.add(step)
            if accepted != 1:
                self.violation(run_no, step, task, accepted, credited,
                               "never accepted" if accepted == 0 else f"accepted {accepted} times")
            elif credited > 3:
                self.violation(run_no, step, task, accepted, credited, f"{credited} copies credited (at most 3)")
        self.closed_steps |= closed
        if not seg.new_format:
            # no step records: the steps are the ones with accepted copies
            if closed:
                self.limited = True
            for s in sorted(closed):
                self.steps.applied(s)
        else:
            for s in sorted(seg.pending):
                if horizon is None or s < horizon:
                    n = len(seg.pending[s])
                    self.fail("step", f"step {s:,}: {n:,} accepted grad cop{'y' if n == 1 else 'ies'} but no step "
                                      "record", step=s)
        seg.tasks = {}
        seg.pending = {}

    def violation(self, run_no, step, task, accepted, credited, problem) -> None:
        self.violation_count += 1
        if accepted == 0 and (self.never_accepted_step is None or step < self.never_accepted_step):
            self.never_accepted_step = step
        if len(self.violations) < MAX_LISTED:
            self.violations.append({"run": run_no, "step": step, "task": task, "accepted": accepted,
                                    "credited": credited, "problem": problem})

    # -- result ---------------------------------------------------------------
    def result(self, warnings: list[str], stats: dict | None = None) -> dict:
        if self.segments:
            self.close_segment(self.segments[-1], next_start=None)
        for ep in self.epochs.values():
            if ep.marks is not None:
                ep.close(complete=False)     # in progress: each snippet at most once
        rows = []
        per_rank_compute = {}
        states = dict.fromkeys(COPY_STATES, 0)
        # a collector's compute time is its group's (per worker): it is no node's speed
        leaders = set(self.leaders).union(*(run["collectors"] or () for run in self.runs))
        children: dict[int, list] = {g["rank"]: g["children"] for g in self.groups}
        for r in sorted(self.ranks):
            row = self.ranks[r]
            c = row.counts
            for k in COPY_STATES:
                states[k] += c[k]
            med_c = median(row.compute)
            if med_c is not None and r not in leaders:
                per_rank_compute[r] = med_c
            rows.append({
                "rank": r,
                "role": "master" if r == 0 else "collector" if r in leaders else "worker",
                "leader": None if r == 0 else self.leader_of.get(r, 0),
                "children": children.get(r, []),
                "host": row.hosts[-1] if row.hosts else None,
                "hosts": list(row.hosts),
                "status": row.status,
                "copies": sum(c.values()),
                "returned": sum(c[s] for s in RETURNED_STATES),
                "accepted": c["accepted"],
                "snippets": row.snippets,
                "snippets_accepted": row.snippets_accepted,
                "credited": row.credited,
                "duplicates": c["duplicate"],
                "late": c["late"],
                "rejected": c["rejected"],
                "lost": c["lost"],
                "skipped": c["skipped"],
                "backups": row.backups,
                "verified": row.verified,
                "disagreed": row.disagreed,
                "median_latency_s": median(row.latency),
                "compute_ms_per_sample": med_c,
                "relative_compute": None,
                "strikes": len(row.strikes) - row.cleared,
                "strikes_cleared": row.cleared,
                "strike_events": [{"step": x[0], "reason": x[1], **({"collector": x[2]} if len(x) > 2 else {})}
                                  for x in row.strikes],
                "exonerations": [{"step": s, "cleared": n, "reason": why} for s, n, why in row.exonerations],
                "membership": list(row.membership),
            })
        # The reference: the median over ranks (the lower middle one when even,
        # so one slow rank of two still stands out).
        ref = statistics.median_low(list(per_rank_compute.values())) if per_rank_compute else None
        for d in rows:
            if ref and d["compute_ms_per_sample"] is not None and d["rank"] not in leaders:
                d["relative_compute"] = d["compute_ms_per_sample"] / ref
        suspects = [s for s in (suspect(d, self.ranks[d["rank"]]) for d in rows) if s]
        if self.malformed:
            warnings.append(f"{self.malformed} ledger record(s) without a rank, step, task or known state ignored")
        totals = {
            "runs": len(self.runs),
            "copies": sum(states.values()),
            **states,
            "returned": sum(states[s] for s in RETURNED_STATES),
            "backups": sum(d["backups"] for d in rows),
            "verified": sum(d["verified"] for d in rows),
            "disagreed": sum(d["disagreed"] for d in rows),
            "credited": sum(d["credited"] for d in rows),
            "strikes": sum(len(r.strikes) for r in self.ranks.values()),
            "strikes_cleared": sum(r.cleared for r in self.ranks.values()),
            "steps": len(self.closed_steps),
            "tasks": self.closed_tasks,
            "other_kinds": dict(self.other_kinds),
        }
        return {"runs": self.runs, "totals": totals, "ranks": rows, "suspects": suspects, "collectors": self.groups,
                "audits": {"count": self.audit_count, "failed": self.audit_failed,
                           "failed_audits": self.failed_audits},
                "rollbacks": self.rollbacks,
                "arbitrations": {"count": self.arbitrations, "first": self.arbitrated},
                "checkpoints": {"count": self.checkpoints, "last": self.last_checkpoint},
                "integrity": integrity_verdict(self, stats), "ignored_events": dict(self.ignored), "warnings": warnings,
                "reference_compute_ms_per_sample": ref}
