"""Shared by the report modules: the report's constants, a rank's row, the run plan, and the words a
report uses for steps, ranks and ids."""
from __future__ import annotations

import re
import statistics
from array import array

from ..ledger_schema import COPY_STATES, DRAIN, EV, EXCLUDE, LOST, READMIT, RETURNED_STATES, UNDRAIN


#: integrity["status"], best first
STATUSES = ("OK", "INCOMPLETE", "FAILED")
#: membership event -> the status it leaves the rank in
MEMBERSHIP = {EXCLUDE: "excluded", READMIT: "active", DRAIN: "drained", UNDRAIN: "active", LOST: "lost"}
#: a rank whose median compute time per sample is this many times the median over ranks is "slow"
SLOW_FACTOR = 2.0
RETURNED = frozenset(RETURNED_STATES)
NUMBER_TYPES = frozenset((int, float))
TASK_ID_TYPES = frozenset((int, str))
MAX_LISTED = 20          # violations / warnings listed (the counts are always complete)
MAX_STEPS_IN_WORDS = 10  # steps named in a suspect's reason before "... and N more"


class RankRow:
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
        self.strikes: list[tuple] = []       # (step, reason), (step, reason, collector) from a collector's ledger
        self.cleared = 0                     # strikes cleared by audits
        self.exonerations: list[tuple] = []  # (step, cleared, reason)
        self.membership: list[dict] = []     # {"ev", "step", "reason", "run"}, and "collector" from its ledger
        self.status = "active"

    def host(self, host) -> None:
        if host and (not self.hosts or self.hosts[-1] != host):
            if host in self.hosts:
                self.hosts.remove(host)
            self.hosts.append(str(host))


def run_plan(rec: dict) -> dict:
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


def median(xs):
    return statistics.median(xs) if len(xs) else None


_DETAIL = re.compile(r"\s*\([^()]*\)\s*$")


def steps_words(steps: list) -> str:
    steps = sorted(set(s for s in steps if s is not None))
    if not steps:
        return ""
    shown = ", ".join(str(s) for s in steps[:MAX_STEPS_IN_WORDS])
    more = f" and {len(steps) - MAX_STEPS_IN_WORDS} more" if len(steps) > MAX_STEPS_IN_WORDS else ""
    return f"at step{'s' if len(steps) > 1 else ''} {shown}{more}"


def grouped(items: list[tuple], strip_detail: bool) -> str:
    """[(step, reason)] -> "reason a at steps 1, 2; reason b at step 5" (first-seen order)."""
    groups: dict[str, list] = {}
    for step, reason in items:
        key = (_DETAIL.sub("", reason) if strip_detail else reason).strip() or "no reason given"
        groups.setdefault(key, []).append(step)
    return "; ".join(f"{k} {steps_words(v)}".strip() for k, v in groups.items())


def ranks_words(ranks) -> str:
    ranks = sorted(ranks)
    return f"rank{'s' if len(ranks) != 1 else ''} {', '.join(map(str, ranks)) or 'none'}"


def int_list(v) -> list[int]:
    return [r for r in v if type(r) is int] if isinstance(v, list) else []


def _by(m: dict) -> str:
    """The words naming the collector of a membership record from its ledger ("" for rank 0's)."""
    return f" by collector {m['collector']}" if m.get("collector") is not None else ""


def suspect(d: dict, row: RankRow) -> dict | None:
    """The suspect entry of a rank's row (None: no reason to suspect it);
    what a collector did to the rank names the collector."""
    reasons = []
    by_source: dict = {}
    for x in row.strikes:
        by_source.setdefault(x[2] if len(x) > 2 else None, []).append(x[:2])
    for c, strikes in by_source.items():
        n = len(strikes)
        src = f" from collector {c}" if c is not None else ""
        reasons.append(f"{n} strike{'s' if n > 1 else ''}{src}: {grouped(strikes, strip_detail=True)}")
    if row.cleared:
        steps = [s for s, n, _ in row.exonerations if n]
        reasons.append(f"{row.cleared} strike{'s' if row.cleared > 1 else ''} cleared by audits {steps_words(steps)}"
                       .strip())
    excluded = False
    for m in row.membership:
        if m[EV] == EXCLUDE:
            excluded = True
            why = f" ({m['reason']})" if m["reason"] and not re.fullmatch(r"\d+ strikes?", m["reason"]) else ""
            reasons.append(f"excluded at step {m['step']}{_by(m)}{why}")
        elif m[EV] == READMIT and excluded:
            why = f" ({m['reason']})" if m["reason"] else ""
            reasons.append(f"readmitted at step {m['step']}{_by(m)}{why}")
    groups: dict[tuple, list] = {}
    for m in row.membership:
        if m[EV] == LOST:
            groups.setdefault((m["reason"].strip(), _by(m)), []).append(m["step"])
    for (why, by), steps in groups.items():
        reasons.append(f"lost {steps_words(steps)}{by}" + (f": {why}" if why else ""))
    rel = d["relative_compute"]
    if rel is not None and rel >= SLOW_FACTOR:
        reasons.append(f"slow: {rel:.1f}x the median compute time per sample")
    if not reasons:
        return None
    return {"rank": d["rank"], "host": d["host"], "status": d["status"], "strikes": d["strikes"],
            "relative_compute": rel, "reasons": reasons, "leader": d.get("leader")}
