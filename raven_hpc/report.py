"""Reports on a run directory: the metrics history, the Proof-of-Calculation
ledger, and the operator's drain file.

Pure in the CLI's sense: functions here read files and return dicts (or
write the one file the operator owns, the drain file); only
:mod:`raven_hpc.cli` prints.

The ledger
----------
``RUN_DIR/ledger.jsonl`` is written by the master: one JSON object per line,
``ev`` one of

``run``
    a start (a resumed run appends a new one): ``start_step``, ``resumed``,
    ``ranks``, ``hosts``, ``poc``, ``faults`` and the plan: ``train_snippets``
    (snippets of the training split), ``steps_per_epoch``, ``epochs``,
    ``max_steps``.
``copy``
    one copy of a task that reached a final state: ``step``, ``task``,
    ``kind`` (grad | eval), ``snippets`` (ids), ``rank``, ``state``
    (accepted | duplicate | late | rejected | lost | skipped), times, flags.
``step``
    one applied step: ``step``, ``epoch``, ``step_in_epoch`` (steps of that
    epoch applied, this one included), ``tasks`` and ``snippets`` (accepted
    grad copies of the step and the snippets in them), ``samples``, ``t``.
    Written after every accepted copy of its step (late and duplicate copies
    of the step may follow it).
``strike``, ``exclude``, ``readmit``, ``drain``, ``undrain``, ``lost``
    membership events of a rank.
``exonerate``
    strikes of a rank cleared because an audit proved the votes that gave
    them wrong (``strikes``: what the rank has left).
``audit``
    the master recomputed an accepted grad result: ``task``, ``ok``, ``ranks``
    (whose copies carried the audited value).
``rollback``
    training went back from step ``step`` to ``to_step`` (K), e.g. after a
    failed audit: ``guilty`` ranks, ``reason``, ``checkpoint``.  Every record
    of steps >= K written before it is void (those steps are redone after it,
    as after a resume at K), except the membership, strike, exonerate and
    audit records, which stay facts.  K equal to ``step`` redoes the current
    step.
``arbitrated``
    a task the master decided or computed itself.
``checkpoint``
    a checkpoint written at ``step`` (``path``).
``end``
    the run stopped: ``step`` (steps applied), ``status`` (finished |
    interrupted | failed).

Step numbers: a ``copy``, ``step``, ``audit`` or ``rollback`` record's
``step`` is the index of the step (0 is the first update); a ``run``
record's ``start_step`` and an ``end`` record's ``step`` count the steps
applied, which is the index of the next step.

Unknown ``ev`` values are counted and otherwise ignored (forward
compatibility); lines that are not JSON are skipped with a warning, and a
truncated last line -- a run killed while writing it -- with a note.
``ledger.superseded.jsonl`` (the tail a resume cut off) is not read.

:func:`summarize_ledger` streams the file (memory grows with the distinct
tasks and snippets of the open run segment and epochs, not with lines) and
returns :func:`ledger_summary`'s dict:

``runs``
    one entry per run record (start step, ranks, hosts, plan, how it ended).
``totals``
    copies by state, backups, verified / disagreed / credited copies, strikes
    (and strikes cleared), and the steps and grad tasks applied.
``ranks``
    one row per rank: copies assigned (every copy), returned (accepted +
    duplicate + late + rejected), accepted, the snippets in its returned and
    in its accepted grad copies (a copy of a chunk holds several), credited
    (fastest three),
    duplicates, late, rejected, lost, skipped, backups issued to it, median
    latency (s), median compute time per sample (ms) and its ratio to the
    median over ranks (``relative_compute``; > 1 is slower), strikes (those
    not cleared by audits; ``strikes_cleared`` apart), and the status from
    its last membership event (active | excluded | drained | lost).
``suspects``
    ranks with strikes, an exclusion, a loss, or a relative compute time
    >= 2, each with the reasons in words.
``audits``, ``rollbacks``, ``arbitrations``, ``checkpoints``
    counts, the failed audits (task, the step it was applied at, the ranks
    found wrong) and every rollback (from step, to step, guilty ranks, reason).
``integrity``
    the check below.

The integrity check
-------------------
A resume at step K (a ``run`` record) and a ``rollback`` to K both start a
new *segment*: records of the earlier segments at steps >= K are void and the
steps are checked as redone.  Over what is left:

* steps: every step from the first run's start to the last applied one has
  its ``step`` record, in order (a ledger without step records, written
  before they existed, has its steps derived from the accepted grad copies,
  and the per-step and per-epoch checks are left out: ``notes`` says so);
* exactly once: every grad task of a closed step has exactly one accepted
  copy (and at most three credited ones); a step record's ``tasks`` and
  ``snippets`` match its accepted copies; a task accepted twice is a
  violation even in an open step;
* snippets: per epoch (from the step records), every snippet id in
  ``range(train_snippets)`` is in exactly one accepted grad copy of a
  completed epoch, and in at most one of the epoch in progress;
* audits and rollbacks: a rollback goes back (``to_step`` <= ``step``) and
  names as guilty only ranks a failed audit proved wrong or that were
  excluded when it came; the result a failed audit found wrong is voided by
  a later rollback or resume to its step or earlier;
* the ledger reads: not empty, not mostly garbage, no damaged line in the
  middle, the last line whole, and the last run ends with an ``end`` record
  whose step follows the last step record.

``integrity["status"]`` is ``"OK"``, ``"INCOMPLETE"`` (the ledger stops
before the run's end: no end record, an interrupted or failed end, a torn
last line, a failed audit the stopped run has not rolled back yet; and in
:func:`run_report`, ``summary.json`` or ``checkpoint.h5`` at a later step
than the ledger) or ``"FAILED"`` (a violation above, a gap in the middle --
records of later steps exist --, step records out of order, an empty or
garbled ledger).  ``first_missing_step`` is the first step whose records are
missing (None when none is), ``problems`` says what is wrong in short
sentences (the failures first; ``failures`` counts them), ``notes`` what the
check could not cover; ``ok`` is True only for OK.  Also: ``steps``,
``first_step``, ``last_step`` (the steps with their records), ``epochs``
(complete, counted_once, in_progress), ``audits``, ``failed_audits``,
``rollbacks``, ``limited`` (no step records), ``stopped`` (the sentence on a
run without end record), and the exactly-once counts ``checked_tasks``,
``checked_steps``, ``violation_count``, ``violations``, ``open_tasks`` (of
the step in flight when a run stopped) and ``redone_tasks`` (voided by a
resume or rollback); :func:`run_report` adds ``summary_steps`` and
``checkpoint_step``.

The drain file
--------------
``[poc] drain_file`` (default ``RUN_DIR/drain``) lists ranks, one per line;
the running master polls it and takes those ranks out of the schedule,
and readmits a rank whose line is removed.  :func:`update_drain` edits it
atomically (temporary file + ``os.replace``).
"""
from __future__ import annotations

import json
import os
import re
import statistics
import tempfile
from array import array
from pathlib import Path
from typing import Iterable, Iterator

from .errors import RavenError
from .ledger_schema import COPY_STATES, KNOWN_KINDS, LEDGER_NAME, RETURNED_STATES

__all__ = [
    "LEDGER_NAME",
    "COPY_STATES",
    "RETURNED_STATES",
    "SLOW_FACTOR",
    "KNOWN_KINDS",
    "STATUSES",
    "read_history",
    "iter_ledger",
    "read_ledger",
    "ledger_summary",
    "summarize_ledger",
    "check_against",
    "run_report",
    "drain_path",
    "parse_drain",
    "read_drain",
    "parse_ranks",
    "update_drain",
]

#: integrity["status"], best first
STATUSES = ("OK", "INCOMPLETE", "FAILED")
#: membership event -> the status it leaves the rank in
MEMBERSHIP = {"exclude": "excluded", "readmit": "active", "drain": "drained", "undrain": "active",
              "lost": "lost"}
#: a rank whose median compute time per sample is this many times the median over ranks is "slow"
SLOW_FACTOR = 2.0
_RETURNED = frozenset(RETURNED_STATES)
_NUMBER = frozenset((int, float))
_TASK_ID = frozenset((int, str))
MAX_LISTED = 20          # violations / warnings listed (the counts are always complete)
MAX_STEPS_IN_WORDS = 10  # steps named in a suspect's reason before "... and N more"


# ------------------------------------------------------------------ history --
def read_history(run_dir) -> dict:
    """``summary.json`` (without its history), the epoch records of
    ``metrics.jsonl`` and its rollbacks.  A metrics line
    ``{"event": "rollback", "step": S, "to_step": K}`` voids the earlier step
    and epoch lines with step > K (training went back to K and redid them):
    ``epochs`` holds only the lines that stand.  A metrics line that is not
    JSON (a killed run's last line) is skipped and named in ``warnings``."""
    run = Path(run_dir)
    out: dict = {"summary": {}, "epochs": [], "rollbacks": [], "warnings": []}
    sp = run / "summary.json"
    if sp.exists():
        try:
            summary = json.loads(sp.read_text())
        except (OSError, ValueError) as exc:
            out["warnings"].append(f"{sp}: unreadable ({exc}); skipped")
        else:
            if isinstance(summary, dict):
                out["summary"] = {k: v for k, v in summary.items() if k != "history"}
    mp = run / "metrics.jsonl"
    if mp.exists():
        epochs = out["epochs"]
        with mp.open("r", encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    out["warnings"].append(f"{mp.name} line {n}: not JSON (truncated?); skipped")
                    continue
                if not isinstance(rec, dict):
                    continue
                event = rec.get("event")
                if event == "epoch":
                    epochs.append(rec)
                elif event == "rollback":
                    k = rec.get("to_step")
                    if type(k) is not int:
                        out["warnings"].append(f"{mp.name} line {n}: rollback without an integer to_step; skipped")
                        continue
                    out["rollbacks"].append(rec)
                    epochs[:] = [e for e in epochs if not (type(e.get("step")) is int and e["step"] > k)]
    return out


# ------------------------------------------------------------------- ledger --
def _loads_or_none(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


def iter_ledger(path, warnings: list | None = None, stats: dict | None = None) -> Iterator[dict]:
    """The ledger's records, one dict per line, streamed.

    Blank lines are skipped; a line that is not a JSON object is skipped and
    reported in ``warnings`` (appended to as the file is read; the note on a
    truncated last line comes when the end is reached).  ``stats``, when
    given, is filled at the end: ``lines``, ``records``, ``bad`` (line numbers
    of damaged lines in the middle), ``torn`` (records a killed run left
    truncated before a resumed run's records: glued to them, or alone on a
    line right before the next ``run`` record) and ``truncated_last``."""
    warnings = [] if warnings is None else warnings
    bad: list[int] = []
    salvaged: list[int] = []
    torn: list[int] = []
    last = 0
    records = 0
    prev_bad = False      # the last non-blank line was bad
    loads = json.loads
    scan = json.JSONDecoder().scan_once   # the C scanner json.loads ends in, minus its wrappers
    with open(path, "r", encoding="utf-8", errors="replace", newline="\n") as fh:
        for last, line in enumerate(fh, 1):
            try:
                try:
                    rec, end = scan(line, 0)
                except StopIteration:
                    raise ValueError from None
                if end != len(line) and not line[end:].isspace():
                    rec = loads(line)     # trailing text: let json say what it thinks of it
            except ValueError:
                if not line.strip():
                    continue
                rec = _loads_or_none(line)
                if rec is None:
                    # A killed run's partial last line, with the resumed run's first
                    # record appended to it: keep the whole record.
                    cut = line.rfind('{"ev"')
                    rec = _loads_or_none(line[cut:]) if cut > 0 else None
                    if not (isinstance(rec, dict) and isinstance(rec.get("ev"), str)):
                        bad.append(last)
                        prev_bad = True
                        continue
                    salvaged.append(last)
            if type(rec) is dict and type(rec.get("ev")) is str:
                if prev_bad:
                    prev_bad = False
                    if rec["ev"] == "run":     # a killed run's partial last line, then the resumed run
                        torn.append(bad.pop())
                records += 1
                yield rec
            else:
                bad.append(last)
                prev_bad = True
    truncated = bool(bad) and bad[-1] == last
    middle = bad[:-1] if truncated else bad
    for n in middle[:MAX_LISTED]:
        warnings.append(f"ledger line {n}: not a JSON record with an \"ev\"; skipped")
    if len(middle) > MAX_LISTED:
        warnings.append(f"... and {len(middle) - MAX_LISTED} more such lines skipped")
    for n in salvaged[:MAX_LISTED]:
        warnings.append(f"ledger line {n}: a truncated record (a killed run) followed by a whole one; "
                        "the truncated part skipped")
    for n in torn[:MAX_LISTED]:
        warnings.append(f"ledger line {n}: a truncated record (a killed run) before the next run's start; skipped")
    if truncated:
        warnings.append(f"ledger line {last} (the last): truncated record skipped (the run was killed while "
                        "writing it)")
    if stats is not None:
        stats.update(lines=last, records=records, bad=middle, torn=salvaged + torn, truncated_last=truncated)


def read_ledger(path) -> tuple[list[dict], list[str]]:
    """All records of a ledger and the warnings about skipped lines.

    Holds every record in memory; for big ledgers use :func:`summarize_ledger`,
    which streams."""
    warnings: list[str] = []
    records = list(iter_ledger(path, warnings))
    return records, warnings


class _Rank:
    """Running counters of one rank."""

    __slots__ = ("rank", "hosts", "counts", "backups", "credited", "verified", "disagreed",
                 "latency", "compute", "strikes", "cleared", "exonerations", "membership", "status", "snippets",
                 "snippets_accepted")

    def __init__(self, rank: int):
        self.rank = rank
        self.hosts: list[str] = []
        self.counts = dict.fromkeys(COPY_STATES, 0)
        self.backups = 0
        self.snippets = 0              # snippets in returned grad copies (a chunk holds several)
        self.snippets_accepted = 0
        self.credited = 0
        self.verified = 0
        self.disagreed = 0
        self.latency = array("d")            # s, returned copies
        self.compute = array("d")            # ms per sample
        self.strikes: list[tuple] = []       # (step, reason)
        self.cleared = 0                     # strikes cleared by audits
        self.exonerations: list[tuple] = []  # (step, cleared, reason)
        self.membership: list[dict] = []     # {"ev", "step", "reason", "run"}
        self.status = "active"

    def host(self, host) -> None:
        if host and (not self.hosts or self.hosts[-1] != host):
            if host in self.hosts:
                self.hosts.remove(host)
            self.hosts.append(str(host))


def _plan(rec: dict) -> dict:
    """The plan a run record carries (empty for a ledger from before plans)."""
    plan = {k: rec[k] for k in ("train_snippets", "steps_per_epoch", "epochs", "max_steps")
            if type(rec.get(k)) is int}
    if not plan:
        return plan
    spe, epochs, max_steps = plan.get("steps_per_epoch"), plan.get("epochs"), plan.get("max_steps")
    planned = spe * epochs if spe and epochs else None
    if max_steps:
        planned = max_steps if planned is None else min(planned, max_steps)
    plan["planned"] = planned
    return plan


class _Segment:
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


def _steps_range(a: int, b: int) -> str:
    return f"step {a:,}" if a == b else f"steps {a:,}-{b:,}"


class _Steps:
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


def _ids_words(ids: list, limit: int = MAX_STEPS_IN_WORDS) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit:,} more" if len(ids) > limit else "")


class _Epoch:
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
                                 f"never counted (id{'s' if len(missing) > 1 else ''} {_ids_words(missing)})")
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


def _median(xs):
    return statistics.median(xs) if len(xs) else None


_DETAIL = re.compile(r"\s*\([^()]*\)\s*$")


def _steps_words(steps: list) -> str:
    steps = sorted(set(s for s in steps if s is not None))
    if not steps:
        return ""
    shown = ", ".join(str(s) for s in steps[:MAX_STEPS_IN_WORDS])
    more = f" and {len(steps) - MAX_STEPS_IN_WORDS} more" if len(steps) > MAX_STEPS_IN_WORDS else ""
    return f"at step{'s' if len(steps) > 1 else ''} {shown}{more}"


def _grouped(items: list[tuple], strip_detail: bool) -> str:
    """[(step, reason)] -> "reason a at steps 1, 2; reason b at step 5" (first-seen order)."""
    groups: dict[str, list] = {}
    for step, reason in items:
        key = (_DETAIL.sub("", reason) if strip_detail else reason).strip() or "no reason given"
        groups.setdefault(key, []).append(step)
    return "; ".join(f"{k} {_steps_words(v)}".strip() for k, v in groups.items())


def _ranks_words(ranks) -> str:
    ranks = sorted(ranks)
    return f"rank{'s' if len(ranks) != 1 else ''} {', '.join(map(str, ranks)) or 'none'}"


def _int_list(v) -> list[int]:
    return [r for r in v if type(r) is int] if isinstance(v, list) else []


class _Problems:
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
FAILED_CATEGORIES = ("read", "gap", "order", "exactly_once", "step", "epoch", "audit")
#: problem categories that make the ledger INCOMPLETE (when none FAILED)
INCOMPLETE_CATEGORIES = ("cross", "stop", "torn", "unrolled")


class _Summary:
    def __init__(self):
        self.ranks: dict[int, _Rank] = {}
        self.runs: list[dict] = []
        self.segments: list[_Segment] = []
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
        self.steps = _Steps()
        self.epochs: dict[int, _Epoch] = {}
        self.problems = _Problems()
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

    def rank(self, r: int) -> _Rank:
        row = self.ranks.get(r)
        if row is None:
            row = self.ranks[r] = _Rank(r)
        return row

    def segment(self) -> _Segment:
        if not self.segments:  # copies before any run record: an implicit first run
            self.segments.append(_Segment(0))
        return self.segments[-1]

    def fail(self, cat: str, text: str, step: int | None = None) -> None:
        self.problems.add(cat, text, step)

    # -- records --------------------------------------------------------------
    def feed(self, records: Iterable[dict]) -> None:
        copy, add = self.copy, self.add
        n = 0
        for n, rec in enumerate(records, 1):
            if rec.get("ev") == "copy":
                copy(rec)
            else:
                add(rec)
        self.records += n

    def add(self, rec: dict) -> None:
        ev = rec.get("ev")
        if ev == "copy":
            self.copy(rec)
        elif ev == "step":
            self.step(rec)
        elif ev in MEMBERSHIP or ev == "strike":
            self.member(ev, rec)
        elif ev == "run":
            self.run(rec)
        elif ev == "audit":
            self.audit(rec)
        elif ev == "rollback":
            self.rollback(rec)
        elif ev == "exonerate":
            self.exonerate(rec)
        elif ev == "arbitrated":
            self.arbitrations += 1
            if len(self.arbitrated) < MAX_LISTED:
                self.arbitrated.append({"step": rec.get("step"), "reason": str(rec.get("reason") or "")})
        elif ev == "checkpoint":
            self.checkpoints += 1
            self.last_checkpoint = {"step": rec.get("step"), "path": rec.get("path")}
        elif ev == "end":
            seg = self.segment()
            seg.end = {"status": rec.get("status"), "step": rec.get("step"), "t": rec.get("t")}
            if self.runs:
                self.runs[-1]["end"] = seg.end
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
            kind, step, task = get("kind", "grad"), get("step"), get("task")
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
        if state in _RETURNED and type(lat) in _NUMBER:
            row.latency.append(lat)
        if type(cs) in _NUMBER and type(n) in _NUMBER and n > 0:
            row.compute.append(1000.0 * cs / n)
        if kind != "grad":
            self.other_kinds[str(kind)] = self.other_kinds.get(str(kind), 0) + 1
            return
        sn = None
        if state in _RETURNED:
            sn = rec.get("snippets")
            k = len(sn) if isinstance(sn, list) else 0
            row.snippets += k
            if state == "accepted":
                row.snippets_accepted += k
        if type(step) is not int or type(task) not in _TASK_ID:
            self.malformed += 1
            return
        seg = self.segments[-1] if self.segments else self.segment()
        if seg.settling:
            if state != "accepted":
                self.redone += 1        # dropped by the rollback
                return
            seg.settling = False
        key = (step, task)
        tasks = seg.tasks
        v = tasks.get(key, 0)
        if state == "accepted":
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

    def accepted_after_record(self, seg: _Segment, step: int, task, sn) -> None:
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
            ep = self.epochs[e] = _Epoch(e, n, first)
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

    def member(self, ev: str, rec: dict) -> None:
        r = rec.get("rank")
        if not isinstance(r, int):
            self.malformed += 1
            return
        row = self.rank(r)
        row.host(rec.get("host"))
        step, reason = rec.get("step"), str(rec.get("reason") or "")
        if ev == "strike":
            row.strikes.append((step, reason))
            return
        row.membership.append({"ev": ev, "step": step, "reason": reason, "run": max(len(self.runs) - 1, 0)})
        row.status = MEMBERSHIP[ev]

    def exonerate(self, rec: dict) -> None:
        r = rec.get("rank")
        if not isinstance(r, int):
            self.malformed += 1
            return
        row = self.rank(r)
        row.host(rec.get("host"))
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
        plan = _plan(rec)
        self.segments.append(_Segment(start, len(self.runs), plan))
        hosts = rec.get("hosts") if isinstance(rec.get("hosts"), dict) else {}
        nranks = rec.get("ranks")
        self.runs.append({"unix_time": rec.get("unix_time"), "start_step": start,
                          "resumed": bool(rec.get("resumed")), "ranks": nranks, "hosts": hosts,
                          "poc": rec.get("poc"), "plan": plan, "end": None})
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
    def task_step(self, seg: _Segment, task, step) -> int | None:
        """The step at which the current segment accepted ``task``."""
        if type(task) not in _TASK_ID:
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
        ranks = _int_list(rec.get("ranks"))
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
        guilty = _int_list(rec.get("guilty"))
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
            self.fail("audit", f"the rollback at {at} names {_ranks_words(unproven)} guilty, but no failed audit "
                               f"before it proved {it} wrong, nor {'was it' if it == 'it' else 'were they'} excluded")
        self.close_segment(seg, next_start=k)
        new = _Segment(k, seg.run, seg.plan, settling=True)
        new.new_format = seg.new_format
        self.segments.append(new)
        self.restart(k, f"the rollback at {at} goes back to step {k:,}")

    # -- exactly once ---------------------------------------------------------
    def close_segment(self, seg: _Segment, next_start: int | None) -> None:
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
        for r in sorted(self.ranks):
            row = self.ranks[r]
            c = row.counts
            for k in COPY_STATES:
                states[k] += c[k]
            med_c = _median(row.compute)
            if med_c is not None:
                per_rank_compute[r] = med_c
            rows.append({
                "rank": r,
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
                "median_latency_s": _median(row.latency),
                "compute_ms_per_sample": med_c,
                "relative_compute": None,
                "strikes": len(row.strikes) - row.cleared,
                "strikes_cleared": row.cleared,
                "strike_events": [{"step": s, "reason": why} for s, why in row.strikes],
                "exonerations": [{"step": s, "cleared": n, "reason": why} for s, n, why in row.exonerations],
                "membership": list(row.membership),
            })
        # The reference: the median over ranks (the lower middle one when even,
        # so one slow rank of two still stands out).
        ref = statistics.median_low(list(per_rank_compute.values())) if per_rank_compute else None
        for d in rows:
            if ref and d["compute_ms_per_sample"] is not None:
                d["relative_compute"] = d["compute_ms_per_sample"] / ref
        suspects = [s for s in (_suspect(d, self.ranks[d["rank"]]) for d in rows) if s]
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
        return {"runs": self.runs, "totals": totals, "ranks": rows, "suspects": suspects,
                "audits": {"count": self.audit_count, "failed": self.audit_failed,
                           "failed_audits": self.failed_audits},
                "rollbacks": self.rollbacks,
                "arbitrations": {"count": self.arbitrations, "first": self.arbitrated},
                "checkpoints": {"count": self.checkpoints, "last": self.last_checkpoint},
                "integrity": self.integrity(stats), "ignored_events": dict(self.ignored), "warnings": warnings,
                "reference_compute_ms_per_sample": ref}

    def integrity(self, stats: dict | None) -> dict:
        P = self.problems
        st = self.steps
        nxt = st.next
        # reading the file
        lines = stats.get("lines", 0) if stats else 0
        bad = stats.get("bad", []) if stats else []
        torn_last = bool(stats and stats.get("truncated_last"))
        unreadable = len(bad) + torn_last
        if self.records == 0:
            if lines:
                P.add("read", f"the ledger holds no records: none of its {lines:,} line{'s' if lines > 1 else ''} "
                              "is a JSON record (not a ledger, or garbled)")
            else:
                P.add("read", "the ledger is empty: no records")
        elif unreadable > self.records:
            P.add("read", f"the ledger is garbled: {unreadable:,} of its {lines:,} lines are not JSON records")
        elif bad:
            P.add("read", f"the ledger is damaged: line{'s' if len(bad) > 1 else ''} {_ids_words(bad)} in the "
                          f"middle {'is not a JSON record' if len(bad) == 1 else 'are not JSON records'} "
                          "(records lost)")
        if torn_last and self.records:
            P.add("torn", f"the last line ({lines:,}) is cut mid-record: the run was killed while writing it",
                  step=nxt)
        # every step has its records
        for a, b, why in st.gaps:
            later = f"records of {_steps_range(b + 1, nxt - 1)} present" if nxt - 1 >= b + 1 else ""
            P.add("gap", f"{_steps_range(a, b)} missing ({'; '.join(x for x in (why, later) if x)})", step=a)
        # exactly once
        if self.violation_count:
            v = self.violations[0]
            P.add("exactly_once", f"{self.violation_count:,} of {self.closed_tasks:,} grad tasks not accepted "
                                  f"exactly once (first: run {v['run'] + 1} step {v['step']:,} task {v['task']}: "
                                  f"{v['problem']})", step=self.never_accepted_step)
        # every snippet once per epoch
        epochs_complete = epochs_ok = 0
        in_progress = []
        for e in sorted(self.epochs):
            ep = self.epochs[e]
            for text in ep.problems:
                P.add("epoch", text)
            if ep.complete:
                epochs_complete += 1
                epochs_ok += not ep.problems
            else:
                in_progress.append(e)
        # how the last run ended
        seg = self.segments[-1] if self.segments else None
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
                        P.add("gap", f"{_steps_range(nxt, es - 1)} missing (the end record says the run stopped at "
                                     f"step {es:,})", step=nxt)
                    elif es < nxt:
                        P.add("order", f"step records up to step {nxt - 1:,}, past the end record's step {es:,}")
                finished = status == "finished"
                if not finished:
                    at = es if type(es) is int else nxt
                    how = {"interrupted": "was interrupted", "failed": "failed"}.get(status, f"ended {status!r}")
                    P.add("stop", f"the run {how} at step {at:,}{of} (end record): --resume continues it",
                          step=at)
        for a in self.unresolved:
            text = (f"the audit of task {a['task']} (step {a['task_step']:,}) found {_ranks_words(a['ranks'])} "
                    f"wrong, but no rollback to step {a['task_step']:,} or earlier follows")
            if finished:
                P.add("audit", text + ": the wrong result stands")
            else:
                P.add("unrolled", text + " (the run stopped first)")
        notes = []
        if self.limited:
            notes.append("ledger without step records (written before they existed): the steps are derived from "
                         "the accepted grad copies; per-step (tasks of a step) and per-epoch (every snippet once) "
                         "checks were not made")
        if self.unknown_snippets:
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
                       "checked": bool(self.epochs)},
            "audits": self.audit_count,
            "failed_audits": self.audit_failed,
            "rollbacks": len(self.rollbacks),
            "limited": self.limited,
            "checked_tasks": self.closed_tasks,
            "checked_steps": len(self.closed_steps),
            "violation_count": self.violation_count,
            "violations": self.violations,
            "open_tasks": self.open,
            "redone_tasks": self.redone,
        }


def _suspect(d: dict, row: _Rank) -> dict | None:
    reasons = []
    if row.strikes:
        n = len(row.strikes)
        reasons.append(f"{n} strike{'s' if n > 1 else ''}: {_grouped(row.strikes, strip_detail=True)}")
    if row.cleared:
        steps = [s for s, n, _ in row.exonerations if n]
        reasons.append(f"{row.cleared} strike{'s' if row.cleared > 1 else ''} cleared by audits {_steps_words(steps)}"
                       .strip())
    excluded = False
    for m in row.membership:
        if m["ev"] == "exclude":
            excluded = True
            why = f" ({m['reason']})" if m["reason"] and not re.fullmatch(r"\d+ strikes?", m["reason"]) else ""
            reasons.append(f"excluded at step {m['step']}{why}")
        elif m["ev"] == "readmit" and excluded:
            why = f" ({m['reason']})" if m["reason"] else ""
            reasons.append(f"readmitted at step {m['step']}{why}")
    losses = [(m["step"], m["reason"]) for m in row.membership if m["ev"] == "lost"]
    if losses:
        groups: dict[str, list] = {}
        for step, why in losses:
            groups.setdefault(why.strip(), []).append(step)
        for why, steps in groups.items():
            reasons.append(f"lost {_steps_words(steps)}" + (f": {why}" if why else ""))
    rel = d["relative_compute"]
    if rel is not None and rel >= SLOW_FACTOR:
        reasons.append(f"slow: {rel:.1f}x the median compute time per sample")
    if not reasons:
        return None
    return {"rank": d["rank"], "host": d["host"], "status": d["status"], "strikes": d["strikes"],
            "relative_compute": rel, "reasons": reasons}


def ledger_summary(records: Iterable[dict], warnings: list[str] | None = None) -> dict:
    """Per-rank rows, totals, suspects, audits, rollbacks and the integrity
    check of ledger records (any iterable: a list, or :func:`iter_ledger` to
    stream).  ``warnings`` (e.g. from :func:`read_ledger`) are carried into
    the result."""
    acc = _Summary()
    acc.feed(records)
    return acc.result(list(warnings or []))


def summarize_ledger(path) -> dict:
    """:func:`ledger_summary` of a ledger file, streamed, with the checks on
    the file itself (empty, garbled, damaged, a torn last line)."""
    warnings: list[str] = []
    stats: dict = {}
    acc = _Summary()
    acc.feed(iter_ledger(path, warnings, stats))
    out = acc.result(warnings, stats)
    out["path"] = str(path)
    return out


def check_against(integrity: dict, sources: Iterable[tuple[str, int | None]]) -> dict:
    """Cross-check a ledger's ``integrity`` against what other files say the
    run reached: ``sources`` are (name, steps applied).  A source past the
    ledger's last step makes an OK ledger INCOMPLETE (its tail is missing:
    ``first_missing_step`` is the step after the ledger's last one).
    Returns ``integrity``, updated in place."""
    nxt = integrity["last_step"] + 1 if integrity.get("last_step") is not None else integrity.get("first_step")
    nxt = nxt if nxt is not None else 0
    ahead = [(name, steps) for name, steps in sources if type(steps) is int and steps > nxt]
    if not ahead:
        return integrity
    if len({steps for _, steps in ahead}) == 1:
        n = ahead[0][1]
        says = (f"{ahead[0][0]} says" if len(ahead) == 1 else
                f"{', '.join(name for name, _ in ahead[:-1])} and {ahead[-1][0]} say") + f" {n:,} steps"
    else:
        says = "; ".join(f"{name} says {steps:,} steps" for name, steps in ahead)
    found = [f"no records from step {nxt:,} on ({says})"]
    probs = integrity["problems"]
    if integrity.get("stopped") in probs:
        probs.remove(integrity["stopped"])     # the run got further: the ledger lost its tail
    at = integrity.get("failures", 0)          # the failures stay first
    probs[at:at] = found
    if integrity["status"] == "OK":
        integrity["status"] = "INCOMPLETE"
        integrity["ok"] = False
    fm = integrity.get("first_missing_step")
    integrity["first_missing_step"] = nxt if fm is None else min(fm, nxt)
    return integrity


def _checkpoint_step(run: Path, warnings: list[str]) -> int | None:
    """The steps applied at ``RUN_DIR/checkpoint.h5`` (None without one)."""
    p = run / "checkpoint.h5"
    if not p.is_file():
        return None
    try:
        import h5py

        with h5py.File(p, "r") as f:
            state = json.loads(f.attrs["train_state"])
        step = state["step"]
        return step if type(step) is int else None
    except (ImportError, OSError, KeyError, TypeError, ValueError) as exc:
        warnings.append(f"{p}: cannot read its step ({type(exc).__name__}: {exc}); not cross-checked")
        return None


def run_report(run_dir) -> dict:
    """Everything ``raven-hpc report`` shows: ``summary``, ``epochs``,
    ``ledger`` (:func:`summarize_ledger`, or None without a ledger, its
    integrity cross-checked against ``summary.json``'s and
    ``checkpoint.h5``'s step) and ``drain`` (the drain file's path and the
    ranks it lists now)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise RavenError(f"no run directory at {run}")
    hist = read_history(run)
    lp = run / LEDGER_NAME
    ledger = summarize_ledger(lp) if lp.is_file() else None
    if not hist["summary"] and not hist["epochs"] and ledger is None:
        raise RavenError(f"{run} holds no summary.json, metrics.jsonl or {LEDGER_NAME}: "
                         "is it a raven-hpc run directory?")
    if ledger is not None:
        ck = _checkpoint_step(run, ledger["warnings"])
        check_against(ledger["integrity"], [("summary.json", hist["summary"].get("steps")), ("checkpoint.h5", ck)])
        ledger["integrity"]["summary_steps"] = hist["summary"].get("steps")
        ledger["integrity"]["checkpoint_step"] = ck
    try:
        dp = drain_path(run)
        drain = {"path": str(dp), "ranks": read_drain(dp)}
    except RavenError:   # an unreadable config.toml or drain file: the report goes on without it
        drain = None
    return {"run_dir": str(run), "summary": hist["summary"], "epochs": hist["epochs"],
            "rollbacks": hist["rollbacks"], "history_warnings": hist["warnings"], "ledger": ledger,
            "ledger_path": str(lp) if ledger is not None else None, "drain": drain}


# -------------------------------------------------------------------- drain --
def drain_path(run_dir) -> Path:
    """The drain file of a run: ``[poc] drain_file`` of ``RUN_DIR/config.toml``
    (``{run}`` and relative paths resolved against RUN_DIR), else ``RUN_DIR/drain``."""
    run = Path(run_dir)
    cp = run / "config.toml"
    if not cp.is_file():
        return run / "drain"
    from .config import read_toml

    poc = read_toml(cp).get("poc", {})
    value = poc.get("drain_file") if isinstance(poc, dict) else None
    if not isinstance(value, str) or not value.strip():
        return run / "drain"
    p = Path(value.replace("{run}", str(run))).expanduser()
    return p if p.is_absolute() else run / p


def parse_drain(text: str) -> tuple[list[int], list[str]]:
    """Ranks listed in a drain file's text (one per line; blank lines and
    ``#`` comments ignored) and the lines that are not ranks."""
    ranks, bad = set(), []
    for line in text.splitlines():
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        for tok in body.replace(",", " ").split():
            if tok.isdigit() and int(tok) > 0:
                ranks.add(int(tok))
            else:
                bad.append(line)
                break
    return sorted(ranks), bad


def read_drain(path) -> list[int]:
    """The ranks a drain file lists (none when it does not exist)."""
    p = Path(path)
    if not p.exists():
        return []
    try:
        return parse_drain(p.read_text())[0]
    except OSError as exc:
        raise RavenError(f"cannot read the drain file {p}: {exc}") from exc


def parse_ranks(items: Iterable[str]) -> list[int]:
    """Worker ranks given on the command line: positive integers."""
    out = []
    for item in items:
        s = str(item).strip()
        if not s.isdigit():
            raise RavenError(f"rank {item!r} is not a positive integer (worker ranks are 1..N-1)")
        r = int(s)
        if r == 0:
            raise RavenError("rank 0 is the master: it cannot be drained (worker ranks are 1..N-1)")
        out.append(r)
    if not out:
        raise RavenError("give at least one rank")
    return sorted(set(out))


def update_drain(run_dir, ranks: Iterable[int], undo: bool = False) -> dict:
    """Add ``ranks`` to the run's drain file (or remove them with ``undo``),
    atomically.  Comment lines are kept; lines that are not ranks are an error
    (the file is left alone).  Returns ``path``, ``ranks`` (listed now),
    ``changed`` and ``unchanged`` (already as asked)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise RavenError(f"no run directory at {run}")
    ranks = sorted(set(int(r) for r in ranks))
    path = drain_path(run)
    text = ""
    if path.exists():
        try:
            text = path.read_text()
        except OSError as exc:
            raise RavenError(f"cannot read the drain file {path}: {exc}") from exc
    listed, bad = parse_drain(text)
    if bad:
        raise RavenError(f"{path}: line {bad[0]!r} is not a rank (one positive integer per line); "
                         "fix or remove it first")
    now = set(listed)
    if undo:
        changed = [r for r in ranks if r in now]
        now -= set(ranks)
    else:
        changed = [r for r in ranks if r not in now]
        now |= set(ranks)
    unchanged = [r for r in ranks if r not in changed]
    if changed or not path.exists():
        comments = [ln for ln in text.splitlines() if ln.strip().startswith("#")]
        body = "".join(f"{ln}\n" for ln in comments) + "".join(f"{r}\n" for r in sorted(now))
        if not path.parent.is_dir():
            raise RavenError(f"the drain file's folder {path.parent} does not exist "
                             "(see [poc] drain_file in the run's config.toml)")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    return {"path": str(path), "ranks": sorted(now), "changed": changed, "unchanged": unchanged,
            "undo": bool(undo)}
