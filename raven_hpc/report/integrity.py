"""The integrity checks: run segments, the exactly-once step bookkeeping, the per-epoch snippet
coverage, the problem lists, and :func:`integrity_verdict`, the status and problems of a fed
:class:`~.summary.Summary`."""
from __future__ import annotations

from array import array
from typing import Iterable

from .common import MAX_LISTED, MAX_STEPS_IN_WORDS, ranks_words

class Segment:
    """The grad tasks of one run segment: from a run record or a rollback to
    the next one (for the exactly-once check).

    ``tasks`` maps (step, task) -> accepted count + (credited count << 16);
    ``pending`` maps a step to the snippet lists of its accepted grad copies
    until the step's record says which epoch they belong to."""

    __slots__ = ("start_step", "run", "plan", "new_format", "tasks", "max_accepted_step", "end", "pending",
                 "step_records", "last_step", "settling")

    def __init__(self, start_step: int, run: int = 0, plan: dict | None = None, settling: bool = False):
        self.start_step = start_step
        self.run = run                  # index of its run record
        self.plan = plan or {}
        self.new_format = bool(self.plan)   # the master writes step records
        self.tasks: dict = {}
        self.max_accepted_step = -1
        self.end: dict | None = None
        self.pending: dict = {}
        self.step_records = 0
        self.last_step: tuple | None = None     # (step, epoch) of its last step record
        # after a rollback: the copies the rollback dropped (late, lost) come before the
        # first accepted copy of the redone work, and are not checked
        self.settling = settling


def steps_range(a: int, b: int) -> str:
    return f"step {a:,}" if a == b else f"steps {a:,}-{b:,}"


class Steps:
    """Which steps have their records: every step from the first run's start
    to the last applied one, but for the gaps; voided from K on by a resume
    or a rollback to K."""

    __slots__ = ("first", "next", "gaps")

    def __init__(self):
        self.first: int | None = None
        self.next: int | None = None        # the step after the last applied one
        self.gaps: list[list] = []          # [first, last, why] of missing steps

    def applied(self, s: int) -> str | None:
        """Step ``s`` has its records; a problem in words when out of order."""
        if self.next is None:
            self.first = self.next = s
        if s == self.next:
            self.next = s + 1
            return None
        if s > self.next:
            self.gaps.append([self.next, s - 1, None])
            self.next = s + 1
            return None
        return (f"step {s:,}: a step record after the one of step {self.next - 1:,} "
                f"({'repeated' if s == self.next - 1 else 'out of order'})")

    def void(self, k: int) -> None:
        self.gaps = [[a, min(b, k - 1), why] for a, b, why in self.gaps if a < k]
        self.next = k
        if self.first is None or k < self.first:
            self.first = k

    @property
    def count(self) -> int:
        if self.next is None:
            return 0
        return self.next - self.first - sum(b - a + 1 for a, b, _ in self.gaps)


# A snippet multiset is summed up as (count, sum of hash((id, _SALT)) mod 2**64):
# what an epoch closed before a rollback kept, for when the rollback reopens it.
_SALT = 0x5BD1E995
_M64 = (1 << 64) - 1
_FULL_HASH: dict = {}


def _full_hash(n: int) -> int:
    h = _FULL_HASH.get(n)
    if h is None:
        h = _FULL_HASH[n] = sum(hash((i, _SALT)) & _M64 for i in range(n)) & _M64
    return h


def ids_words(ids: list, limit: int = MAX_STEPS_IN_WORDS) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit:,} more" if len(ids) > limit else "")


class Epoch:
    """Which snippets the accepted grad copies of one epoch's steps hold.

    While open, ``marks[i]`` is the step that counted snippet ``i`` (-1: none
    yet) and ``dups`` the further steps that counted it again.  Closing checks
    the epoch and keeps only per step (count, hash sum) of what it counted, so
    a rollback into a closed epoch can reopen it: the kept steps before the
    rollback point plus the redone ones must still make every snippet once."""

    __slots__ = ("epoch", "n", "first", "last", "marks", "mark_from", "dups", "foreign", "kept", "complete",
                 "problems")

    def __init__(self, epoch: int, n: int | None, first: int):
        self.epoch = epoch
        self.n = n                      # snippets of the training split (None: not known)
        self.first = first              # its first step
        self.last = first - 1           # its last step with a step record
        self.marks: array | None = self._fresh()
        self.mark_from = first          # marks hold what steps >= mark_from counted
        self.dups: dict = {}
        self.foreign: list = []         # (step, id) of ids outside range(n)
        self.kept: dict = {}            # step -> [count, hash sum] of a closed epoch
        self.complete = False
        self.problems: list[str] = []

    def _fresh(self) -> array:
        return array("i", [-1]) * self.n if self.n else array("i")

    def add(self, step: int, ids) -> None:
        marks, n = self.marks, self.n
        if marks is None:
            self.problems.append(f"epoch {self.epoch}: snippets counted at step {step:,}, after the epoch was "
                                 "complete")
            return
        for i in ids if isinstance(ids, list) else ():
            if type(i) is not int or i < 0 or (n is not None and i >= n):
                self.foreign.append((step, i))
                continue
            if n is None and i >= len(marks):
                if i > 1 << 26:
                    self.foreign.append((step, i))
                    continue
                marks.extend(array("i", [-1]) * (i + 1 - len(marks)))
            if marks[i] < 0:
                marks[i] = step
            else:
                self.dups.setdefault(i, []).append(step)

    def close(self, complete: bool) -> None:
        """Check what the epoch counted (``complete``: every snippet exactly
        once; else at most once) and keep the per-step sums."""
        marks = self.marks
        if marks is None:
            return
        e, n = self.epoch, self.n
        self.complete = complete
        probs = self.problems
        for i, steps in sorted(self.dups.items())[:MAX_LISTED]:
            probs.append(f"epoch {e}: snippet {i} counted {1 + len(steps)} times "
                         f"(steps {', '.join(f'{s:,}' for s in sorted([marks[i], *steps]))})")
        if len(self.dups) > MAX_LISTED:
            probs.append(f"epoch {e}: ... and {len(self.dups) - MAX_LISTED:,} more snippets counted more than once")
        for s, i in self.foreign[:MAX_LISTED]:
            probs.append(f"epoch {e}: snippet id {i!r} at step {s:,} is not one of the training split's "
                         + (f"0-{n - 1:,}" if n else "snippets"))
        if len(self.foreign) > MAX_LISTED:
            probs.append(f"epoch {e}: ... and {len(self.foreign) - MAX_LISTED:,} more such ids")
        # the per-step sums of what the open part counted
        kept = self.kept
        prefix = any(s < self.mark_from for s in kept)
        for i, s in enumerate(marks):
            if s >= 0:
                v = kept.get(s)
                if v is None:
                    v = kept[s] = [0, 0]
                v[0] += 1
                v[1] = (v[1] + hash((i, _SALT))) & _M64
        for i, steps in self.dups.items():
            for s in steps:
                v = kept.setdefault(s, [0, 0])
                v[0] += 1
                v[1] = (v[1] + hash((i, _SALT))) & _M64
        if complete and n is not None:
            if not prefix:
                missing = [i for i, s in enumerate(marks) if s < 0]
                if missing:
                    probs.append(f"epoch {e}: {len(missing):,} of {n:,} snippet{'s' if len(missing) > 1 else ''} "
                                 f"never counted (id{'s' if len(missing) > 1 else ''} {ids_words(missing)})")
            else:
                count = sum(c for c, _ in kept.values())
                total = sum(h for _, h in kept.values()) & _M64
                if count != n or total != _full_hash(n):
                    probs.append(f"epoch {e}: the snippets its steps before {self.mark_from:,} counted (before a "
                                 f"rollback or resume) and those of the redone steps are not every snippet once "
                                 f"({count:,} counted, {n:,} snippets)")
        self.marks = None
        self.dups = {}
        self.foreign = []

    def void(self, k: int) -> bool:
        """Steps >= ``k`` are voided (redone): forget what they counted.
        False when the whole epoch is voided."""
        if k <= self.first:
            return False
        self.kept = {s: v for s, v in self.kept.items() if s < k}
        marks = self.marks
        if marks is not None and self.mark_from < k:
            for i, s in enumerate(marks):
                if s >= k:
                    marks[i] = -1
            dups = {}
            for i, steps in self.dups.items():
                keep = [s for s in steps if s < k]
                if marks[i] < 0 and keep:
                    marks[i] = keep.pop(0)
                if keep:
                    dups[i] = keep
            self.dups = dups
        else:
            self.marks = self._fresh()
            self.mark_from = k
            self.dups = {}
        self.foreign = [(s, i) for s, i in self.foreign if s < k]
        self.problems = []
        self.complete = False
        self.last = min(self.last, k - 1)
        return True


class Problems:
    """Sentences for ``integrity["problems"]`` by category, each listed up to
    MAX_LISTED times (then counted)."""

    def __init__(self):
        self.lists: dict[str, list] = {}
        self.more: dict[str, int] = {}
        self.missing: list[int] = []      # candidates for first_missing_step

    def add(self, cat: str, text: str, step: int | None = None) -> None:
        lst = self.lists.setdefault(cat, [])
        if len(lst) < MAX_LISTED:
            lst.append(text)
        else:
            self.more[cat] = self.more.get(cat, 0) + 1
        if type(step) is int:
            self.missing.append(step)

    def sentences(self, cats: Iterable[str]) -> list[str]:
        out = []
        for cat in cats:
            out += self.lists.get(cat, [])
            if self.more.get(cat):
                out.append(f"... and {self.more[cat]:,} more such problems")
        return out


#: problem categories: a FAILED one, in the order problems are listed
FAILED_CATEGORIES = ("read", "gap", "order", "exactly_once", "step", "epoch", "audit", "collector")
#: problem categories that make the ledger INCOMPLETE (when none FAILED)
INCOMPLETE_CATEGORIES = ("cross", "stop", "torn", "unrolled")


def integrity_verdict(s, stats: dict | None) -> dict:
    """The integrity dict of a :class:`~.summary.Summary` ``s`` fed every record: the
    status, the problems by category and the counts (``stats``: the reader's line counts)."""
    P = s.problems
    st = s.steps
    nxt = st.next
    # reading the file
    lines = stats.get("lines", 0) if stats else 0
    bad = stats.get("bad", []) if stats else []
    torn_last = bool(stats and stats.get("truncated_last"))
    unreadable = len(bad) + torn_last
    if s.records == 0:
        if lines:
            P.add("read", f"the ledger holds no records: none of its {lines:,} line{'s' if lines > 1 else ''} "
                          "is a JSON record (not a ledger, or garbled)")
        else:
            P.add("read", "the ledger is empty: no records")
    elif unreadable > s.records:
        P.add("read", f"the ledger is garbled: {unreadable:,} of its {lines:,} lines are not JSON records")
    elif bad:
        P.add("read", f"the ledger is damaged: line{'s' if len(bad) > 1 else ''} {ids_words(bad)} in the "
                      f"middle {'is not a JSON record' if len(bad) == 1 else 'are not JSON records'} "
                      "(records lost)")
    if torn_last and s.records:
        P.add("torn", f"the last line ({lines:,}) is cut mid-record: the run was killed while writing it",
              step=nxt)
    # every step has its records
    for a, b, why in st.gaps:
        later = f"records of {steps_range(b + 1, nxt - 1)} present" if nxt - 1 >= b + 1 else ""
        P.add("gap", f"{steps_range(a, b)} missing ({'; '.join(x for x in (why, later) if x)})", step=a)
    # exactly once
    if s.violation_count:
        v = s.violations[0]
        P.add("exactly_once", f"{s.violation_count:,} of {s.closed_tasks:,} grad tasks not accepted "
                              f"exactly once (first: run {v['run'] + 1} step {v['step']:,} task {v['task']}: "
                              f"{v['problem']})", step=s.never_accepted_step)
    # every snippet once per epoch
    epochs_complete = epochs_ok = 0
    in_progress = []
    for e in sorted(s.epochs):
        ep = s.epochs[e]
        for text in ep.problems:
            P.add("epoch", text)
        if ep.complete:
            epochs_complete += 1
            epochs_ok += not ep.problems
        else:
            in_progress.append(e)
    # how the last run ended
    seg = s.segments[-1] if s.segments else None
    stopped = None
    finished = False
    if seg is not None:
        end = seg.end
        planned = seg.plan.get("planned")
        of = f" of {planned:,}" if planned else ""
        if end is None:
            at = nxt if nxt is not None else seg.start_step
            stopped = f"the run has not finished (or was killed) at step {at:,}{of}: no end record"
            P.add("stop", stopped, step=at)
        else:
            es, status = end.get("step"), end.get("status")
            if type(es) is int and nxt is not None:
                if es > nxt:
                    P.add("gap", f"{steps_range(nxt, es - 1)} missing (the end record says the run stopped at "
                                 f"step {es:,})", step=nxt)
                elif es < nxt:
                    P.add("order", f"step records up to step {nxt - 1:,}, past the end record's step {es:,}")
            finished = status == "finished"
            if not finished:
                at = es if type(es) is int else nxt
                how = {"interrupted": "was interrupted", "failed": "failed"}.get(status, f"ended {status!r}")
                P.add("stop", f"the run {how} at step {at:,}{of} (end record): --resume continues it",
                      step=at)
    for a in s.unresolved:
        text = (f"the audit of task {a['task']} (step {a['task_step']:,}) found {ranks_words(a['ranks'])} "
                f"wrong, but no rollback to step {a['task_step']:,} or earlier follows")
        if finished:
            P.add("audit", text + ": the wrong result stands")
        else:
            P.add("unrolled", text + " (the run stopped first)")
    notes = []
    if s.limited:
        notes.append("ledger without step records (written before they existed): the steps are derived from "
                     "the accepted grad copies; per-step (tasks of a step) and per-epoch (every snippet once) "
                     "checks were not made")
    if s.unknown_snippets:
        notes.append("run record without train_snippets: epochs were checked for snippets counted twice, "
                     "not for snippets missing")
    failed = P.sentences(FAILED_CATEGORIES)
    incomplete = P.sentences(INCOMPLETE_CATEGORIES)
    status = "FAILED" if failed else "INCOMPLETE" if incomplete else "OK"
    return {
        "status": status,
        "ok": status == "OK",
        "first_missing_step": min(P.missing) if P.missing and status != "OK" else None,
        "problems": failed + incomplete,
        "failures": len(failed),
        "notes": notes,
        "steps": st.count,
        "first_step": st.first,
        "last_step": nxt - 1 if nxt is not None else None,
        "stopped": stopped,
        "epochs": {"complete": epochs_complete, "counted_once": epochs_ok, "in_progress": in_progress,
                   "checked": bool(s.epochs)},
        "audits": s.audit_count,
        "failed_audits": s.audit_failed,
        "rollbacks": len(s.rollbacks),
        "limited": s.limited,
        "checked_tasks": s.closed_tasks,
        "checked_steps": len(s.closed_steps),
        "violation_count": s.violation_count,
        "violations": s.violations,
        "open_tasks": s.open,
        "redone_tasks": s.redone,
        "collectors": s.group_integrity,
    }
