"""The gradient collectors' ledgers (``RUN_DIR/ledger.collector-<rank>.jsonl``)
merged into the report: their workers' rows and the group-sum check.

A collector's ledger holds, per run start, a ``collector`` record (its
parent, children and hosts), then its group's scheduler records (copies of
its sub-tasks, each with the parent's task it belongs to, and membership
events about its workers) and a ``group_sum`` record per sum it sent up.
Every rank's row comes from its parent's ledger: ranks under rank 0 from
``ledger.jsonl``, a collector's workers (and, in a two-level tree, the
collectors below it) from that collector's ledger.

Run matching
------------
Sub-task ids start again at every run start, so each ``collector`` record
opens a *segment* of the file, and a segment belongs to one run of rank 0's
ledger: the run nearest in start time (of those whose ``collectors`` list
the collector, when run records say).  A collector writes its record after
its hello goes up and rank 0 writes its run record after every hello came,
so the run record follows its collectors' records by the start-up wait,
while the run before started a whole run earlier.  The match is *exact*
when the run record is not earlier than the segment's start (less
:data:`CLOCK_SLACK_S` for clocks of different hosts) and no nearer segment
of the same collector took that run; an inexact segment's sums are checked
on their own, not against the parent.

The group-sum check
-------------------
A collector's sum is what its parent receives as one result.  The sums
checked are those the parent has on record: a copy in rank 0's ledger (or,
a level up, in the parent collector's ledger) with the collector as
``rank`` and the sum's ``task``, in the matching run, whatever its state --
the accepted one went into the model, and a duplicate or rejected one was
still compared with it.  A sum without such a copy is not checked: a resume
cuts rank 0's ledger back to its checkpoint but not the collectors'
ledgers, so the sums of steps the resume redid have no parent copy left
(and a sum that never reached its parent counted nowhere).  Sums whose
parent's records are missing altogether (an inexact match, no ledger of the
parent collector) are checked without this filter.  For a checked sum:

* each sub-task it lists was accepted exactly once in that segment, and
  belongs to the sum's task (its copies' ``parent_task``);
* no sub-task is counted in two sums of the segment (any two sums: a
  sub-task summed twice is wrong even if one sum was not accepted);
* its ``samples`` are the samples of those accepted sub-tasks, and the
  samples of the task the parent gave it.

And the other way: every result the parent accepted from the collector in
a run has a sum in the collector's segment of that run (for exactly
matched segments).  A problem is a FAILED integrity line naming the
collector and the step.  A rollback of rank 0 voids steps but leaves the
sums of the voided steps as they were: they are checked like the rest.

Memory: a segment's sub-tasks and sums until it closes; then the sums
(task, step, samples, problems) and its copies on child collectors (which
their own ledgers' sums are checked against); and rank 0's copies on
collectors.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from ..ledger_schema import (ACCEPTED, COLLECTOR, COLLECTOR_LEDGER, COPY, COPY_STATES, EV, EXONERATE, GRAD,
                             GROUP_SUM, SENT, STRIKE)
from .common import MEMBERSHIP, NUMBER_TYPES, RETURNED, TASK_ID_TYPES, int_list
from .integrity import ids_words

__all__ = ["CLOCK_SLACK_S", "find_group_ledgers", "merge_groups", "match_run", "GroupSegment"]

#: how much earlier than its collectors' records a run record may be stamped (the hosts' clocks differ)
CLOCK_SLACK_S = 5.0
#: a collector's ledger file name; the group is its rank
_NAME = re.compile(re.escape(COLLECTOR_LEDGER).replace(re.escape("{rank}"), r"(\d+)"))
#: problems named per sum before "and N more"
_PER_SUM = 3
_STATES = frozenset(COPY_STATES)


def find_group_ledgers(run_dir) -> dict[int, Path]:
    """rank -> path of every collector's ledger in ``run_dir``, by rank."""
    out = {}
    for p in Path(run_dir).glob(COLLECTOR_LEDGER.format(rank="*")):
        m = _NAME.fullmatch(p.name)
        if m and p.is_file():
            out[int(m.group(1))] = p
    return dict(sorted(out.items()))


class GroupSegment:
    """One run's part of a collector's ledger (from a ``collector`` record to the next)."""

    __slots__ = ("collector", "parent", "children", "unix_time", "run", "exact", "subs", "sums", "summed", "up")

    def __init__(self, collector: int, rec: dict):
        self.collector = collector
        self.parent = rec.get("parent") if type(rec.get("parent")) is int else None
        self.children = int_list(rec.get("children"))
        t = rec.get("unix_time")
        self.unix_time = t if type(t) in NUMBER_TYPES else None
        self.run = 0                # the index of its run in rank 0's ledger
        self.exact = False          # matched to that run by its start time
        self.subs: dict | None = {}  # sub-task id -> [accepted copies, samples, parent task, rank, step]
        self.sums: list = []        # open: [step, task, subs, samples]; closed: (step, task, samples, problems)
        self.summed: set = set()    # (closed) the parent's task ids it sent a sum of
        self.up: dict = {}          # child collector -> {sub-task id: (samples, step, accepted)} of its copies

    def close(self) -> None:
        """Check each sum against the segment's accepted sub-tasks (the
        problems are kept with the sum until the parent's records say whether
        the sum is checked) and drop the sub-tasks."""
        subs, sums = self.subs, self.sums
        counted: dict = {}
        for i, sm in enumerate(sums):
            for x in dict.fromkeys(sm[2]):
                counted.setdefault(x, []).append(i)
        out = []
        for i, (step, task, ids, samples) in enumerate(sums):
            probs = []
            got, whole = 0, True
            seen: set = set()
            for x in ids:
                if x in seen:
                    probs.append(f"counts sub-task {x} twice")
                    continue
                seen.add(x)
                other = next((j for j in counted[x] if j != i), None)
                if other is not None:
                    probs.append(f"counts sub-task {x}, which its sum for task {sums[other][1]} "
                                 f"({_at(sums[other][0])}) counts too")
                a = subs.get(x)
                if a is None or a[0] == 0:
                    probs.append(f"counts sub-task {x}, which it never accepted")
                    whole = False
                    continue
                if a[0] > 1:
                    probs.append(f"counts sub-task {x}, which it accepted {a[0]} times")
                if a[2] is not None and a[2] != task:
                    probs.append(f"counts sub-task {x} of task {a[2]}")
                if type(a[1]) is int:
                    got += a[1]
                else:
                    whole = False
            if whole and type(samples) is int and got != samples:
                probs.append(f"says {samples:,} samples, its sub-tasks hold {got:,}")
            out.append((step, task, samples, probs))
            self.summed.add(task)
        self.sums = out
        self.subs = None


def _at(step) -> str:
    return f"step {step:,}" if type(step) is int else "step ?"


def match_run(runs: list, collector: int, t) -> tuple[int, bool]:
    """(index of the run a segment starting at ``t`` belongs to, exact)."""
    if not runs:
        return 0, False
    cands = [i for i, r in enumerate(runs) if r.get("collectors") is None or collector in r["collectors"]]
    cands = cands or list(range(len(runs)))
    timed = [i for i in cands if type(runs[i].get("unix_time")) in NUMBER_TYPES]
    if t is None or not timed:
        return cands[-1], False
    best = min(timed, key=lambda i: abs(runs[i]["unix_time"] - t))
    return best, runs[best]["unix_time"] >= t - CLOCK_SLACK_S


class _Reader:
    """Feeds one collector's ledger into the summary's rank rows and cuts it into segments."""

    def __init__(self, s, rank: int, name: str):
        self.s, self.rank, self.name = s, rank, name
        self.segments: list[GroupSegment] = []
        self.counts: dict = {}
        self.members: set = set()       # ranks given membership records here

    def segment(self, rec: dict | None = None) -> GroupSegment:
        if rec is None and self.segments:
            return self.segments[-1]
        s = self.s
        if self.segments:
            self.segments[-1].close()
        seg = GroupSegment(self.rank, rec or {})
        seg.run, seg.exact = match_run(s.runs, self.rank, seg.unix_time)
        self.segments.append(seg)
        hosts = (rec or {}).get("hosts")
        hosts = hosts if isinstance(hosts, dict) else {}
        for r in seg.children:
            s.rank(r).host(hosts.get(str(r)))
        return seg

    def feed(self, records: Iterable[dict]) -> None:
        s = self.s
        for rec in records:
            ev = rec.get(EV)
            if ev == COLLECTOR:
                self.segment(rec)
            elif ev == COPY:
                self.copy(rec)
            elif ev == GROUP_SUM:
                ids = rec.get("subs")
                ids = [x for x in ids if type(x) in TASK_ID_TYPES] if isinstance(ids, list) else []
                self.segment().sums.append([rec.get("step"), rec.get("task"), ids, rec.get("samples")])
            elif ev in MEMBERSHIP or ev == STRIKE:
                self.member(ev, rec)
            elif ev == EXONERATE:
                s.exonerate(rec)
            elif ev == SENT:
                pass   # read by raven_hpc.report.exposure
            else:
                s.ignored[str(ev)] = s.ignored.get(str(ev), 0) + 1
        if self.segments:
            self.segments[-1].close()

    def copy(self, rec: dict) -> None:
        s = self.s
        get = rec.get
        r, state = get("rank"), get("state")
        if type(r) is not int or state not in _STATES:
            s.malformed += 1
            return
        self.counts[state] = self.counts.get(state, 0) + 1
        row = s.rank(r)
        row.counts[state] += 1
        row.host(get("host"))
        row.backups += bool(get("backup"))
        row.credited += get("credited") is True
        if get("verified"):
            row.verified += 1
            row.disagreed += get("agreed") is False
        lat, cs, n = get("latency_s"), get("compute_s"), get("samples")
        if state in RETURNED and type(lat) in NUMBER_TYPES:
            row.latency.append(lat)
        if type(cs) in NUMBER_TYPES and type(n) in NUMBER_TYPES and n > 0:
            row.compute.append(1000.0 * cs / n)
        if get("kind", GRAD) == GRAD and state in RETURNED:
            sn = get("snippets")
            k = len(sn) if isinstance(sn, list) else 0
            row.snippets += k
            row.snippets_accepted += k if state == ACCEPTED else 0
        sub = get("task")
        if type(sub) not in TASK_ID_TYPES:
            return
        seg = self.segment()
        if state == ACCEPTED:
            a = seg.subs.setdefault(sub, [0, None, None, r, get("step")])
            a[0] += 1
            a[1], a[2] = n, get("parent_task")
        if r in s.leaders:   # a copy on a collector of the next level: its sum is checked against it
            seen = seg.up.setdefault(r, {})
            if state == ACCEPTED or sub not in seen:
                seen[sub] = (n, get("step"), state == ACCEPTED)

    def member(self, ev: str, rec: dict) -> None:
        r = rec.get("rank")
        if type(r) is not int:
            self.s.malformed += 1
            return
        row = self.s.rank(r)
        row.host(rec.get("host"))
        step, reason = rec.get("step"), str(rec.get("reason") or "")
        if ev == STRIKE:
            row.strikes.append((step, reason, self.rank))
            return
        row.membership.append({EV: ev, "step": step, "reason": reason, "run": self.segment().run,
                               "collector": self.rank})
        self.members.add(r)


def merge_groups(s, groups: Iterable[tuple]) -> None:
    """Merge collectors' ledgers into the summary ``s`` (fed rank 0's ledger
    first): ``groups`` are (rank, records, file name, reader stats or None;
    the stats are read once the records are).  Fills ``s.groups`` (one entry
    per collector), ``s.group_integrity`` and the ``collector`` problems."""
    ledgers: dict[int, list[GroupSegment]] = {}
    readers: dict[int, _Reader] = {}
    for rank, records, name, stats in groups:
        rd = _Reader(s, rank, name)
        rd.feed(records)
        readers[rank] = rd
        ledgers[rank] = rd.segments
        _read_problems(s, name, rd, stats)
    # a run takes the nearest segment of a collector; a farther one is inexact
    for segs in ledgers.values():
        best: dict = {}
        for seg in segs:
            if seg.exact and seg.unix_time is not None:
                t = s.runs[seg.run]["unix_time"] if s.runs else None
                d = abs(t - seg.unix_time) if type(t) in NUMBER_TYPES else 0.0
                if seg.run in best and best[seg.run][0] <= d:
                    seg.exact = False
                    continue
                if seg.run in best:
                    best[seg.run][1].exact = False
                best[seg.run] = (d, seg)
    depth = _depths(ledgers)
    multi = len(s.runs) > 1
    total = {"ledgers": len(ledgers), "sums": 0, "checked_sums": 0, "unchecked_sums": 0, "problems": 0}
    s.groups = []
    for rank, segs in ledgers.items():
        checked = unchecked = probs = 0
        for seg in segs:
            where = f"collector {rank}" + (f" (run {seg.run + 1})" if multi else "")
            acc = _parent_copies(s, ledgers, seg)
            parent = "rank 0" if seg.parent == 0 else f"collector {seg.parent}"
            for step, task, samples, found in seg.sums:
                if acc is not None:
                    up = acc.get(task)
                    if up is None:
                        unchecked += 1
                        continue
                    if type(samples) is int and type(up[0]) is int and up[0] != samples:
                        found = found + [f"says {samples:,} samples, the task {parent} gave it holds {up[0]:,}"]
                checked += 1
                if found:
                    probs += 1
                    more = f"; and {len(found) - _PER_SUM} more" if len(found) > _PER_SUM else ""
                    s.fail("collector", f"{where} {_at(step)}: its sum for task {task} "
                                        f"{'; '.join(found[:_PER_SUM])}{more}")
            for task, (_, step, accepted) in (acc or {}).items():
                if accepted and task not in seg.summed:
                    probs += 1
                    s.fail("collector", f"{where} {_at(step)}: {parent} accepted its result for task {task}, "
                                        "but its ledger has no sum of that task")
        children = sorted({r for seg in segs for r in seg.children})
        s.groups.append({"rank": rank, "ledger": readers[rank].name,
                         "parent": segs[-1].parent if segs else None, "children": children,
                         "runs": sorted({seg.run + 1 for seg in segs}), "copies": readers[rank].counts,
                         "sums": sum(len(seg.sums) for seg in segs), "checked_sums": checked,
                         "unchecked_sums": unchecked, "problems": probs})
        for r in children:
            s.leader_of[r] = rank
        total["sums"] += s.groups[-1]["sums"]
        total["checked_sums"] += checked
        total["unchecked_sums"] += unchecked
        total["problems"] += probs
    s.group_integrity = total
    _statuses(s, set().union(*(rd.members for rd in readers.values())), depth)


def _read_problems(s, name: str, rd: _Reader, stats: dict | None) -> None:
    """The reader's line counts of one collector's ledger: damaged lines in the middle fail the check."""
    if not stats:
        return
    bad, lines = stats.get("bad", []), stats.get("lines", 0)
    if stats.get("records", 0) == 0:
        if lines:
            s.fail("collector", f"{name} holds no records: none of its {lines:,} lines is a JSON record")
        return
    if bad:
        s.fail("collector", f"{name} is damaged: line{'s' if len(bad) > 1 else ''} {ids_words(bad)} in the "
                            f"middle {'is not a JSON record' if len(bad) == 1 else 'are not JSON records'} "
                            "(records lost)")


def _parent_copies(s, ledgers: dict, seg: GroupSegment) -> dict | None:
    """{task: (samples, step, accepted)} of the copies the segment's parent
    gave its collector in its run; None when that cannot be known (an
    inexact match, or no ledger of the parent collector)."""
    if not seg.exact or seg.parent is None:
        return None
    if seg.parent == 0:
        return s.up.get((seg.run, seg.collector), {})
    if seg.parent not in ledgers:
        return None
    acc: dict = {}
    for ps in ledgers[seg.parent]:
        if ps.run == seg.run and ps.exact:
            acc.update(ps.up.get(seg.collector, {}))
    return acc


def _depths(ledgers: dict) -> dict:
    """collector -> its level (1: rank 0's child), from each one's last parent."""
    parent = {r: segs[-1].parent for r, segs in ledgers.items() if segs}
    depth: dict = {}
    for r in parent:
        d, p, seen = 1, parent[r], {r}
        while p in parent and p not in seen:
            seen.add(p)
            d, p = d + 1, parent[p]
        depth[r] = d
    return depth


def _statuses(s, ranks: set, depth: dict) -> None:
    """Rows with membership records from collectors: every record in order
    (run, step, the deeper level first at the same step: a worker re-attached
    to a higher level after its collector's records), and the status from
    the last one when it is a collector's of the last run; else rank 0's
    ledger's status stands (a later run restarted the rank, or rank 0's
    record is the later one)."""
    last_run = len(s.runs) - 1
    for r in ranks:
        row = s.ranks[r]
        key = {id(m): (m["run"], m["step"] if type(m["step"]) is int else -1,
                       -depth.get(m.get("collector"), 0)) for m in row.membership}
        row.membership.sort(key=lambda m: key[id(m)])
        m = row.membership[-1]
        if m.get("collector") is not None and m["run"] >= last_run:
            row.status = MEMBERSHIP[m[EV]]
