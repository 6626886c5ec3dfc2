"""Reports on a run directory: the metrics history, the Proof-of-Calculation
ledger, and the operator's drain file.

Pure in the CLI's sense: functions here read files and return dicts (or
write the one file the operator owns, the drain file); only
:mod:`raven_hpc.cli` prints.

The ledger
----------
``RUN_DIR/ledger.jsonl`` is written by the master: one JSON object per line,
``ev`` one of ``run`` (a start; a resumed run appends a new one), ``copy``
(one copy of a task that reached a final state), ``strike``, ``exclude``,
``readmit``, ``drain``, ``undrain``, ``lost`` and ``end``.  Unknown ``ev``
values are counted and otherwise ignored (forward compatibility); lines that
are not JSON are skipped with a warning, and a truncated last line -- a run
killed while writing it -- with a note.

:func:`summarize_ledger` streams the file (memory grows with the number of
distinct tasks, not of lines) and returns :func:`ledger_summary`'s dict:

``runs``
    one entry per run record (start step, ranks, hosts, how it ended).
``totals``
    copies by state, backups, verified / disagreed / credited copies, and the
    steps and grad tasks applied.
``ranks``
    one row per rank: copies assigned (every copy), returned (accepted +
    duplicate + late + rejected), accepted, the snippets in its returned and
    in its accepted grad copies (a copy of a chunk holds several), credited
    (fastest three),
    duplicates, late, rejected, lost, skipped, backups issued to it, median
    latency (s), median compute time per sample (ms) and its ratio to the
    median over ranks (``relative_compute``; > 1 is slower), strikes, and the
    status from its last membership event (active | excluded | drained | lost).
``suspects``
    ranks with strikes, an exclusion, a loss, or a relative compute time
    >= 2, each with the reasons in words.
``integrity``
    the exactly-once check: every (step, task) of kind ``grad`` of a closed
    step has exactly one accepted copy (and at most three credited ones).
    A resumed run redoes the steps after its checkpoint: copies of the
    earlier run at steps >= the new start step are counted as ``redone``, not
    checked; tasks of the step that was open when a run stopped without
    finishing are counted as ``open``.

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

__all__ = [
    "LEDGER_NAME",
    "COPY_STATES",
    "RETURNED_STATES",
    "SLOW_FACTOR",
    "read_history",
    "iter_ledger",
    "read_ledger",
    "ledger_summary",
    "summarize_ledger",
    "run_report",
    "drain_path",
    "parse_drain",
    "read_drain",
    "parse_ranks",
    "update_drain",
]

LEDGER_NAME = "ledger.jsonl"
COPY_STATES = ("accepted", "duplicate", "late", "rejected", "lost", "skipped")
RETURNED_STATES = ("accepted", "duplicate", "late", "rejected")
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
    """``summary.json`` (without its history) and the epoch records of
    ``metrics.jsonl``.  A metrics line that is not JSON (a killed run's last
    line) is skipped and named in ``warnings``."""
    run = Path(run_dir)
    out: dict = {"summary": {}, "epochs": [], "warnings": []}
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
        with mp.open("r", encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    out["warnings"].append(f"{mp.name} line {n}: not JSON (truncated?); skipped")
                    continue
                if isinstance(rec, dict) and rec.get("event") == "epoch":
                    out["epochs"].append(rec)
    return out


# ------------------------------------------------------------------- ledger --
def _loads_or_none(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


def iter_ledger(path, warnings: list | None = None) -> Iterator[dict]:
    """The ledger's records, one dict per line, streamed.

    Blank lines are skipped; a line that is not a JSON object is skipped and
    reported in ``warnings`` (appended to as the file is read; the note on a
    truncated last line comes when the end is reached)."""
    warnings = [] if warnings is None else warnings
    bad: list[int] = []
    salvaged: list[int] = []
    last = 0
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
                        continue
                    salvaged.append(last)
            if type(rec) is dict and type(rec.get("ev")) is str:
                yield rec
            else:
                bad.append(last)
    truncated = bool(bad) and bad[-1] == last
    middle = bad[:-1] if truncated else bad
    for n in middle[:MAX_LISTED]:
        warnings.append(f"ledger line {n}: not a JSON record with an \"ev\"; skipped")
    if len(middle) > MAX_LISTED:
        warnings.append(f"... and {len(middle) - MAX_LISTED} more such lines skipped")
    for n in salvaged[:MAX_LISTED]:
        warnings.append(f"ledger line {n}: a truncated record (a killed run) followed by a whole one; "
                        "the truncated part skipped")
    if truncated:
        warnings.append(f"ledger line {last} (the last): truncated record skipped (the run was killed while "
                        "writing it)")


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
                 "latency", "compute", "strikes", "membership", "status", "snippets", "snippets_accepted")

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
        self.membership: list[dict] = []     # {"ev", "step", "reason", "run"}
        self.status = "active"

    def host(self, host) -> None:
        if host and (not self.hosts or self.hosts[-1] != host):
            if host in self.hosts:
                self.hosts.remove(host)
            self.hosts.append(str(host))


class _Segment:
    """The grad tasks of one run record (for the exactly-once check).

    ``tasks`` maps (step, task) -> accepted count + (credited count << 16)."""

    __slots__ = ("start_step", "tasks", "max_accepted_step", "end")

    def __init__(self, start_step: int):
        self.start_step = start_step
        self.tasks: dict = {}
        self.max_accepted_step = -1
        self.end: dict | None = None




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


class _Summary:
    def __init__(self):
        self.ranks: dict[int, _Rank] = {}
        self.runs: list[dict] = []
        self.segments: list[_Segment] = []
        self.ignored: dict[str, int] = {}
        self.malformed = 0
        self.other_kinds: dict[str, int] = {}
        # integrity, filled as segments close
        self.closed_steps: set = set()
        self.closed_tasks = 0
        self.redone = 0
        self.open = 0
        self.violations: list[dict] = []
        self.violation_count = 0

    def rank(self, r: int) -> _Rank:
        row = self.ranks.get(r)
        if row is None:
            row = self.ranks[r] = _Rank(r)
        return row

    def segment(self) -> _Segment:
        if not self.segments:  # copies before any run record: an implicit first run
            self.segments.append(_Segment(0))
        return self.segments[-1]

    # -- records --------------------------------------------------------------
    def feed(self, records: Iterable[dict]) -> None:
        copy, add = self.copy, self.add
        for rec in records:
            if rec.get("ev") == "copy":
                copy(rec)
            else:
                add(rec)

    def add(self, rec: dict) -> None:
        ev = rec.get("ev")
        if ev == "copy":
            self.copy(rec)
        elif ev in MEMBERSHIP or ev == "strike":
            self.member(ev, rec)
        elif ev == "run":
            self.run(rec)
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
        key = (step, task)
        tasks = seg.tasks
        v = tasks.get(key, 0)
        if state == "accepted":
            v += 1
            if step > seg.max_accepted_step:
                seg.max_accepted_step = step
        if credited:
            v += 1 << 16
        tasks[key] = v

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

    def run(self, rec: dict) -> None:
        start = rec.get("start_step")
        start = start if isinstance(start, int) else 0
        if self.segments:
            self.close_segment(self.segments[-1], next_start=start)
        self.segments.append(_Segment(start))
        hosts = rec.get("hosts") if isinstance(rec.get("hosts"), dict) else {}
        nranks = rec.get("ranks")
        self.runs.append({"unix_time": rec.get("unix_time"), "start_step": start,
                          "resumed": bool(rec.get("resumed")), "ranks": nranks, "hosts": hosts,
                          "poc": rec.get("poc"), "end": None})
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

    # -- exactly once ---------------------------------------------------------
    def close_segment(self, seg: _Segment, next_start: int | None) -> None:
        """Check the grad tasks of one run.  Steps below the horizon were
        closed: each task must have been accepted exactly once.  The horizon
        is the next run's start step (what the resumed run redid is not
        checked), none for a finished run, else the end record's step or,
        for a killed run, the last step with an accepted copy (the steps from
        there on were open).  A task accepted twice is a violation anywhere."""
        if next_start is not None:
            horizon = next_start
        elif seg.end is not None and seg.end.get("status") == "finished":
            horizon = None
        else:
            end_step = seg.end.get("step") if seg.end is not None else None
            horizon = end_step if type(end_step) is int else seg.max_accepted_step
        run_no = self.segments.index(seg)
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
            self.closed_steps.add(step)
            if accepted != 1:
                self.violation(run_no, step, task, accepted, credited,
                               "never accepted" if accepted == 0 else f"accepted {accepted} times")
            elif credited > 3:
                self.violation(run_no, step, task, accepted, credited, f"{credited} copies credited (at most 3)")
        seg.tasks = {}

    def violation(self, run_no, step, task, accepted, credited, problem) -> None:
        self.violation_count += 1
        if len(self.violations) < MAX_LISTED:
            self.violations.append({"run": run_no, "step": step, "task": task, "accepted": accepted,
                                    "credited": credited, "problem": problem})

    # -- result ---------------------------------------------------------------
    def result(self, warnings: list[str]) -> dict:
        if self.segments:
            self.close_segment(self.segments[-1], next_start=None)
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
                "strikes": len(row.strikes),
                "strike_events": [{"step": s, "reason": why} for s, why in row.strikes],
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
            "steps": len(self.closed_steps),
            "tasks": self.closed_tasks,
            "other_kinds": dict(self.other_kinds),
        }
        integrity = {
            "ok": self.violation_count == 0,
            "checked_tasks": self.closed_tasks,
            "checked_steps": len(self.closed_steps),
            "violation_count": self.violation_count,
            "violations": self.violations,
            "open_tasks": self.open,
            "redone_tasks": self.redone,
        }
        return {"runs": self.runs, "totals": totals, "ranks": rows, "suspects": suspects,
                "integrity": integrity, "ignored_events": dict(self.ignored), "warnings": warnings,
                "reference_compute_ms_per_sample": ref}


def _suspect(d: dict, row: _Rank) -> dict | None:
    reasons = []
    if row.strikes:
        n = len(row.strikes)
        reasons.append(f"{n} strike{'s' if n > 1 else ''}: {_grouped(row.strikes, strip_detail=True)}")
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
    """Per-rank rows, totals, suspects and the exactly-once check of ledger
    records (any iterable: a list, or :func:`iter_ledger` to stream).
    ``warnings`` (e.g. from :func:`read_ledger`) are carried into the result."""
    acc = _Summary()
    acc.feed(records)
    return acc.result(list(warnings or []))


def summarize_ledger(path) -> dict:
    """:func:`ledger_summary` of a ledger file, streamed."""
    warnings: list[str] = []
    acc = _Summary()
    acc.feed(iter_ledger(path, warnings))
    out = acc.result(warnings)
    out["path"] = str(path)
    return out


def run_report(run_dir) -> dict:
    """Everything ``raven-hpc report`` shows: ``summary``, ``epochs``,
    ``ledger`` (:func:`summarize_ledger`, or None without a ledger) and
    ``drain`` (the drain file's path and the ranks it lists now)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise RavenError(f"no run directory at {run}")
    hist = read_history(run)
    lp = run / LEDGER_NAME
    ledger = summarize_ledger(lp) if lp.is_file() else None
    if not hist["summary"] and not hist["epochs"] and ledger is None:
        raise RavenError(f"{run} holds no summary.json, metrics.jsonl or {LEDGER_NAME}: "
                         "is it a raven-hpc run directory?")
    try:
        dp = drain_path(run)
        drain = {"path": str(dp), "ranks": read_drain(dp)}
    except RavenError:   # an unreadable config.toml or drain file: the report goes on without it
        drain = None
    return {"run_dir": str(run), "summary": hist["summary"], "epochs": hist["epochs"],
            "history_warnings": hist["warnings"], "ledger": ledger,
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
