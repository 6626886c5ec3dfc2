"""What ``raven-hpc report --plots`` draws, as arrays: gathered in the
report's one pass over the ledger, without matplotlib.

:class:`LedgerTap` rides along :func:`.ledger.run_report`'s stream (its
``tap``): each copy record becomes one entry of compact arrays (rank,
assigned and finished time, state, flags, compute seconds per sample: 26
bytes a copy; the run segments run-length coded), the run, collector,
membership and rollback records a short event list; no record is kept as
a dict.
:func:`collect` returns a :class:`PlotData` with the report itself (rows,
suspects, integrity: computed once, by the report) and the series each
figure draws; :mod:`.plots` draws exactly these, and the tests compare them
with the ledger and ``metrics.jsonl``.

Times: every ledger time is seconds since its run started (a collector's,
since it started).  The plots put the runs of a resumed job end to end on
one *run clock*: run k starts where run k-1's last record (or metrics line)
was; a collector's segment sits at its run's start plus the difference of
their ``unix_time`` stamps.  A metrics line belongs to the last run that
started before its step.
"""
from __future__ import annotations

import math
from array import array

import numpy as np

from ..ledger_schema import (AUDIT, COLLECTOR, COPY, COPY_STATES, DRAIN, END, EV, EXCLUDE, LOST, READMIT,
                             RETURNED_STATES, ROLLBACK, RUN, STEP, UNDRAIN)
from .collectors import match_run
from .history import read_history
from .ledger import run_report

__all__ = ["FATES", "COMMON_FATES", "NOTABLE_FATES", "MEMBER_KINDS", "EXACT_BARS", "TIMELINE_BINS", "ROW_HEIGHT",
           "MAX_LANES", "LedgerTap",
           "PlotData", "collect", "fates_of", "metrics_series", "timeline", "timeline_bars", "rank_panels",
           "box_stats"]

#: a copy's fate, the colour of its bar (index = fate code)
FATES = ("accepted", "duplicate", "backup", "probe", "audit", "late", "rejected", "lost", "skipped")
#: fates a timeline cell shows by majority (binned timeline)
COMMON_FATES = ("accepted", "duplicate", "backup", "probe", "skipped")
#: fates a timeline cell shows whenever present, first wins (binned timeline)
NOTABLE_FATES = ("rejected", "lost", "late", "audit")
#: membership records marked on the plots
MEMBER_KINDS = (EXCLUDE, DRAIN, LOST, READMIT, UNDRAIN)
#: up to this many copies the timeline draws one bar per copy; beyond, binned cells
EXACT_BARS = 20_000
#: time bins of a binned timeline (about one per pixel column)
TIMELINE_BINS = 1600
#: the height of a rank's row of bars (rows are 1 apart); lanes of overlapping copies share it
ROW_HEIGHT = 0.8
MAX_LANES = 4
#: cells (ranks x bins x fates) a binned timeline may hold
_MAX_CELLS = 24_000_000
#: events of one kind kept for the plots (the counts are in the report)
_MAX_EVENTS = 10_000

_STATE_CODE = {s: i for i, s in enumerate(COPY_STATES)}
_RETURNED_CODES = np.array([_STATE_CODE[s] for s in RETURNED_STATES], dtype=np.int8)
_NUMBER = frozenset((int, float))
_FLAG_BACKUP, _FLAG_PROBE, _FLAG_AUDIT = 1, 2, 4


def fates_of(state: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """Fate codes (indices into :data:`FATES`) of copies from their state
    codes (indices into ``COPY_STATES``) and flags: an audit copy is
    ``audit``; else a rejected, late, lost or skipped copy is that; else a
    probe copy ``probe``, a backup copy ``backup``; else its state
    (accepted or duplicate)."""
    by_state = np.array([FATES.index(s) for s in COPY_STATES], dtype=np.int8)
    fate = by_state[state]
    plain = np.isin(state, [_STATE_CODE["accepted"], _STATE_CODE["duplicate"]])
    fate[plain & (flags & _FLAG_BACKUP > 0)] = FATES.index("backup")
    fate[plain & (flags & _FLAG_PROBE > 0)] = FATES.index("probe")
    fate[flags & _FLAG_AUDIT > 0] = FATES.index("audit")
    return fate


class LedgerTap:
    """Reads the records :func:`.ledger.summarize_ledger` streams
    (``stream(records, source)``) into compact arrays and an event list."""

    def __init__(self):
        self.rank = array("i")
        self.seg_from: list[tuple[int, int]] = []   # (first copy, segment): the copies' segments, run-length
        self.start = array("d")      # assigned, seconds since the segment's start
        self.end = array("d")        # finished
        self.state = array("b")      # index into COPY_STATES
        self.flags = array("b")      # backup 1, probe 2, audit 4
        self.cps = array("f")        # compute seconds per sample (nan: none reported)
        self.runs: list[dict] = []   # rank 0's run records: unix_time, collectors, start_step, resumed, clock
        self.segments: list[list] = []   # [run index, seconds after that run's start, clock]
        self.events: list[dict] = []     # {"kind", "seg", "t", "step", "rank", "reason", ...}
        self._kinds: dict[str, int] = {}
        self.skipped = 0             # copy records without rank / times / state

    # -- the stream ---------------------------------------------------------
    def _segment(self, run: int, delta: float) -> int:
        self.segments.append([run, delta, 0.0])
        self.seg_from.append((len(self.rank), len(self.segments) - 1))
        return len(self.segments) - 1

    def stream(self, records, source):
        """Yield ``records`` unchanged, reading each (``source``: None for
        rank 0's ledger, a collector's rank for its ledger)."""
        rank_a, start_a, end_a = self.rank.append, self.start.append, self.end.append
        state_a, flags_a, cps_a = self.state.append, self.flags.append, self.cps.append
        codes, number, nan = _STATE_CODE, _NUMBER, math.nan
        seg = self._current(source)
        clock = 0.0
        for rec in records:
            if rec[EV] != COPY:
                self.segments[seg][2] = max(self.segments[seg][2], clock)
                new = self._other(rec, source, seg)
                if new != seg:
                    seg = new
                    self.seg_from.append((len(self.rank), seg))
                clock = self.segments[seg][2]
                yield rec
                continue
            try:
                r, a, f, st = rec["rank"], rec["assigned"], rec["finished"], codes[rec["state"]]
            except (KeyError, TypeError):
                self.skipped += 1
                yield rec
                continue
            if type(r) is not int or type(a) not in number or type(f) not in number or r < 0:
                self.skipped += 1
                yield rec
                continue
            rank_a(r)
            start_a(a)
            end_a(f)
            state_a(st)
            get = rec.get
            flags_a((get("backup") is True) | (get("probe") is True) << 1 | (get("audit") is True) << 2)
            cs, n = get("compute_s"), get("samples")
            cps_a(cs / n if type(cs) in number and type(n) in number and n > 0 else nan)
            if f > clock:
                clock = f
            yield rec
        self.segments[seg][2] = max(self.segments[seg][2], clock)

    def _current(self, source) -> int:
        """The segment records of ``source`` go to before its first run or collector record."""
        if source is None:
            if not self.runs:     # copies before any run record: an implicit first run
                self.runs.append({"unix_time": None, "collectors": None, "start_step": 0, "resumed": False})
                return self._segment(0, 0.0)
            return len(self.segments) - 1
        return self._segment(max(len(self.runs) - 1, 0), 0.0)

    def _other(self, rec: dict, source, seg: int) -> int:
        """A record other than a copy; returns the segment the next records belong to."""
        ev = rec[EV]
        clock = self.segments[seg][2]
        if ev == RUN and source is None:
            t = rec.get("unix_time")
            start = rec.get("start_step")
            start = start if type(start) is int else 0
            coll = rec.get("collectors")
            run = {"unix_time": t if type(t) in _NUMBER else None, "start_step": start,
                   "resumed": bool(rec.get("resumed")),
                   "collectors": [r for r in coll if type(r) is int] if isinstance(coll, list) else None}
            if len(self.runs) == 1 and self.segments[seg][2] == 0.0 and not self.rank and not self.events:
                self.runs[0] = run     # the implicit first run had nothing: this is it
                return seg
            self.runs.append(run)
            seg = self._segment(len(self.runs) - 1, 0.0)
            self._event({"kind": "resume", "seg": seg, "t": 0.0, "step": start, "rank": None,
                         "reason": f"run {len(self.runs)} starts at step {start:,}"})
            return seg
        if ev == COLLECTOR and source is not None:
            t = rec.get("unix_time")
            t = t if type(t) in _NUMBER else None
            j, _exact = match_run(self.runs, source, t)
            base = self.runs[j]["unix_time"] if self.runs else None
            return self._segment(j, t - base if t is not None and base is not None else 0.0)
        t = rec.get("t")
        if type(t) in _NUMBER and source is None and ev in (STEP, END, ROLLBACK):
            clock = max(clock, t)
            self.segments[seg][2] = clock
        if ev in MEMBER_KINDS:
            r = rec.get("rank")
            if type(r) is int:
                self._event({"kind": ev, "seg": seg, "t": clock, "step": rec.get("step"), "rank": r,
                             "reason": str(rec.get("reason") or ""), "by": source})
        elif ev == ROLLBACK:
            self._event({"kind": ROLLBACK, "seg": seg, "t": clock, "step": rec.get("step"),
                         "to_step": rec.get("to_step"), "rank": None, "reason": str(rec.get("reason") or "")})
        elif ev == AUDIT and rec.get("ok") is False:
            self._event({"kind": "failed audit", "seg": seg, "t": clock, "step": rec.get("step"), "rank": None,
                         "reason": str(rec.get("reason") or "")})
        return seg

    def _event(self, e: dict) -> None:
        n = self._kinds.get(e["kind"], 0)
        self._kinds[e["kind"]] = n + 1
        if n < _MAX_EVENTS:
            self.events.append(e)

    # -- after the stream -----------------------------------------------------
    def arrays(self) -> dict:
        """The copies as numpy arrays (views of the compact buffers)."""
        def view(a, dtype):
            return np.frombuffer(a, dtype=dtype) if len(a) else np.zeros(0, dtype)
        n = len(self.rank)
        last: dict[int, int] = {}
        for first, k in self.seg_from:        # of entries at the same copy, the last one holds
            last[first] = k
        firsts = sorted(last)
        seg = np.repeat(np.array([last[f] for f in firsts], dtype=np.int64),
                        np.diff(np.array(firsts + [n], dtype=np.int64))) if firsts else np.zeros(n, np.int64)
        return {"rank": view(self.rank, np.int32), "seg": seg,
                "start": view(self.start, np.float64), "end": view(self.end, np.float64),
                "state": view(self.state, np.int8), "flags": view(self.flags, np.int8),
                "cps": view(self.cps, np.float32)}

    def offsets(self, metrics_spans: dict[int, float] | None = None) -> np.ndarray:
        """Each segment's start on the run clock: run k starts where run k-1
        ended (its last ledger time, or its last metrics line's ``wall_s``
        from ``metrics_spans`` {run: seconds}, whichever is later)."""
        spans = [0.0] * max(len(self.runs), 1)
        for run, delta, clock in self.segments:
            spans[run] = max(spans[run], delta + clock)
        for run, s in (metrics_spans or {}).items():
            if 0 <= run < len(spans):
                spans[run] = max(spans[run], s)
        starts = np.concatenate([[0.0], np.cumsum(spans)[:-1]])
        return np.array([starts[run] + delta for run, delta, _ in self.segments], dtype=np.float64)


# ----------------------------------------------------------------- metrics --
_STEP_FIELDS = ("step", "epoch", "loss", "train_accuracy", "samples", "wall_s", "samples_per_s", "lr", "grad_norm")
_EPOCH_FIELDS = ("step", "epoch", "wall_s", "loss", "test_accuracy", "test_loss")


def _column(lines: list[dict], key: str) -> np.ndarray:
    return np.array([x[key] if type(x.get(key)) in _NUMBER else np.nan for x in lines], dtype=np.float64)


def _run_of(lines: list[dict], runs: list[dict]) -> np.ndarray:
    """The run each metrics line (steps applied ``step``) belongs to: the
    last run that started before that step (lines stand in step order).
    Without run records: a new run wherever ``wall_s`` goes back."""
    out = np.zeros(len(lines), dtype=np.int64)
    if runs:
        starts = [r["start_step"] for r in runs]
        j = 0
        for i, x in enumerate(lines):
            n = x.get("step")
            while type(n) is int and j + 1 < len(starts) and starts[j + 1] < n:
                j += 1
            out[i] = j
        return out
    j, prev = 0, -math.inf
    for i, x in enumerate(lines):
        w = x.get("wall_s")
        if type(w) in _NUMBER:
            if w < prev:
                j += 1
            prev = w
        out[i] = j
    return out


def metrics_series(hist: dict, runs: list[dict]) -> dict:
    """The step and epoch lines of ``metrics.jsonl`` that stand
    (:func:`.history.read_history` with ``steps``) as arrays, each field
    under its name in ``metrics.jsonl`` (NaN where a line lacks it), with
    ``run`` (the run each line belongs to) and ``spans`` {run: its largest
    ``wall_s``}.  The run clock (``time``) is added by :func:`collect`."""
    steps, epochs = hist["steps"], hist["epochs"]
    merged = sorted([(x.get("step") if type(x.get("step")) is int else -1, 0, i) for i, x in enumerate(steps)]
                    + [(x.get("step") if type(x.get("step")) is int else -1, 1, i) for i, x in enumerate(epochs)])
    lines = [(steps if kind == 0 else epochs)[i] for _, kind, i in merged]
    run = _run_of(lines, runs)
    step_run = np.zeros(len(steps), dtype=np.int64)
    epoch_run = np.zeros(len(epochs), dtype=np.int64)
    for (_, kind, i), j in zip(merged, run):
        (step_run if kind == 0 else epoch_run)[i] = j
    out = {"steps": {k: _column(steps, k) for k in _STEP_FIELDS},
           "epochs": {k: _column(epochs, k) for k in _EPOCH_FIELDS},
           "rollbacks": [{"step": r.get("step"), "to_step": r.get("to_step"), "wall_s": r.get("wall_s"),
                          "reason": str(r.get("reason") or "")} for r in hist["rollbacks"]]}
    out["steps"]["run"] = step_run
    out["epochs"]["run"] = epoch_run
    spans: dict[int, float] = {}
    for series in (out["steps"], out["epochs"]):
        for j, w in zip(series["run"], series["wall_s"]):
            if not math.isnan(w):
                spans[int(j)] = max(spans.get(int(j), 0.0), float(w))
    out["spans"] = spans
    return out


# ---------------------------------------------------------------- timeline --
def timeline(tap: LedgerTap, offsets: np.ndarray, ranks=()) -> dict:
    """One bar per copy: ``rows`` (the ranks, ascending: those with copies
    and ``ranks``), and per copy ``row``, ``start`` / ``end`` on the run
    clock, ``fate`` (index into :data:`FATES`); ``counts`` {rank: {fate:
    copies}}."""
    a = tap.arrays()
    rows = sorted(set(np.unique(a["rank"]).tolist()) | {int(r) for r in ranks})
    index = np.full(max(rows) + 1 if rows else 1, -1, dtype=np.int64)
    index[rows] = np.arange(len(rows))
    off = offsets[a["seg"]] if len(offsets) else np.zeros(len(a["seg"]))
    fate = fates_of(a["state"], a["flags"])
    row = index[a["rank"]]
    counts: dict = {}
    if len(row):
        n = np.bincount(row * len(FATES) + fate, minlength=len(rows) * len(FATES)).reshape(len(rows), len(FATES))
        for i, r in enumerate(rows):
            counts[r] = {FATES[f]: int(n[i, f]) for f in range(len(FATES)) if n[i, f]}
    return {"rows": rows, "row": row, "start": a["start"] + off, "end": a["end"] + off, "fate": fate,
            "counts": counts}


def _runs_of(mask: np.ndarray):
    """(row, first column, end column) of each run of True in a 2-D mask."""
    pad = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    pad[:, 1:-1] = mask
    d = np.diff(pad, axis=1)
    r0, c0 = np.nonzero(d == 1)
    _, c1 = np.nonzero(d == -1)
    return r0, c0, c1


def _lanes(row: np.ndarray, start: np.ndarray, end: np.ndarray, most: int = MAX_LANES) -> tuple:
    """(lane of each bar, lanes of each bar's row): the copies of a rank that
    overlap in time (queued ones, with prefetch) go to separate lanes, the
    first lane free when a copy starts (at most ``most``: beyond, they share)."""
    lane = np.zeros(len(row), dtype=np.int64)
    lanes = {}
    order = np.lexsort((start, row))
    free: list[float] = []
    current = None
    for i in order.tolist():
        r = int(row[i])
        if r != current:
            current, free = r, []
        a = start[i]
        k = next((j for j, t in enumerate(free) if t <= a), None)
        if k is None:
            k = len(free) if len(free) < most else int(np.argmin(free))
            if k == len(free):
                free.append(0.0)
        free[k] = max(end[i], a)
        lane[i] = k
        lanes[r] = max(lanes.get(r, 1), k + 1)
    return lane, np.array([lanes.get(int(r), 1) for r in row], dtype=np.int64)


def timeline_bars(tl: dict, max_bars: int = EXACT_BARS, bins: int = TIMELINE_BINS) -> dict:
    """The rectangles the timeline draws: ``bars`` {fate: {"x", "w", "row",
    "y", "h"}} (left edge, width, the rank's row, bottom, height).

    Up to ``max_bars`` copies (``mode`` "exact"): one rectangle per copy,
    from assigned to finished; copies of a rank that overlap in time share
    its row in lanes.  Beyond (``mode`` "binned"): the run clock is
    cut into ``bins`` cells per rank; a cell takes the first of
    :data:`NOTABLE_FATES` any copy in it had, else the
    :data:`COMMON_FATES` fate most copies in it had; runs of cells of one
    fate become one rectangle.  ``span``: (first start, last end)."""
    start, end, fate, row = tl["start"], tl["end"], tl["fate"], tl["row"]
    n = len(start)
    if n == 0:
        return {"mode": "exact", "bars": {}, "span": (0.0, 1.0), "bins": 0}
    t0, t1 = float(start.min()), float(max(end.max(), start.max()))
    if n <= max_bars:
        lane, lanes = _lanes(row, start, end)
        h = ROW_HEIGHT / lanes
        y = row - ROW_HEIGHT / 2 + lane * h
        bars = {}
        for f, name in enumerate(FATES):
            m = fate == f
            if m.any():
                bars[name] = {"x": start[m], "w": np.maximum(end[m] - start[m], 0.0), "row": row[m], "y": y[m],
                              "h": h[m]}
        return {"mode": "exact", "bars": bars, "span": (t0, t1), "bins": 0}
    nrows = len(tl["rows"])
    bins = max(16, min(bins, _MAX_CELLS // max(1, nrows * len(FATES))))
    dt = (t1 - t0) / bins or 1.0
    b0 = np.clip(((start - t0) / dt).astype(np.int64), 0, bins - 1)
    b1 = np.clip(((end - t0) / dt).astype(np.int64), b0, bins - 1)
    width = bins + 1
    occupied = {}
    for f, name in enumerate(FATES):
        m = fate == f
        if not m.any():
            continue
        d = (np.bincount(row[m] * width + b0[m], minlength=nrows * width)
             - np.bincount(row[m] * width + b1[m] + 1, minlength=nrows * width))
        occupied[name] = np.cumsum(d.reshape(nrows, width), axis=1)[:, :bins]
    cell = np.full((nrows, bins), -1, dtype=np.int16)
    common = [(FATES.index(k), occupied[k]) for k in COMMON_FATES if k in occupied]
    if common:
        stack = np.stack([c for _, c in common])
        best = np.argmax(stack, axis=0)
        codes = np.array([f for f, _ in common], dtype=np.int16)
        cell = np.where(stack.max(axis=0) > 0, codes[best], cell)
    for name in reversed(NOTABLE_FATES):      # the first of NOTABLE_FATES is written last: it wins
        if name in occupied:
            cell[occupied[name] > 0] = FATES.index(name)
    bars = {}
    for f, name in enumerate(FATES):
        r, c0, c1 = _runs_of(cell == f)
        if len(r):
            bars[name] = {"x": t0 + c0 * dt, "w": (c1 - c0) * dt, "row": r, "y": r - ROW_HEIGHT / 2,
                          "h": np.full(len(r), ROW_HEIGHT)}
    return {"mode": "binned", "bars": bars, "span": (t0, t1), "bins": bins}


# ------------------------------------------------------------------- ranks --
def box_stats(keys: np.ndarray, values: np.ndarray, wanted) -> dict:
    """{key: {"med", "q1", "q3", "whislo", "whishi", "n"}} of ``values`` per
    ``key`` (whiskers: the 5th and 95th percentiles), for the keys in
    ``wanted`` that have values (NaN values left out)."""
    ok = ~np.isnan(values)
    keys, values = keys[ok], values[ok].astype(np.float64)
    order = np.lexsort((values, keys))
    keys, values = keys[order], values[order]
    out = {}
    for k in wanted:
        lo, hi = np.searchsorted(keys, k, "left"), np.searchsorted(keys, k, "right")
        if hi > lo:
            v = values[lo:hi]
            p5, q1, med, q3, p95 = np.percentile(v, [5, 25, 50, 75, 95])
            out[k] = {"med": float(med), "q1": float(q1), "q3": float(q3), "whislo": float(p5),
                      "whishi": float(p95), "n": int(hi - lo)}
    return out


def rank_panels(tap: LedgerTap, ledger: dict) -> dict:
    """Per rank and per host, what the ranks figure draws: from the
    report's rows (``ledger["ranks"]``) the share of accepted snippets,
    fastest-three credits, strikes (and those cleared), status and whether
    it is a suspect; from the copies, the distributions of compute
    milliseconds per sample (every copy that reported compute time, as the
    report's median) and of latency (returned copies)."""
    rows = [d for d in ledger["ranks"] if d["copies"] or d["role"] != "master"]
    suspects = {s["rank"] for s in ledger["suspects"]}
    total = sum(d["snippets_accepted"] for d in rows) or 1
    ranks = [d["rank"] for d in rows]
    out = {"ranks": ranks, "host": [d["host"] or "?" for d in rows],
           "share": [d["snippets_accepted"] / total for d in rows],
           "snippets_accepted": [d["snippets_accepted"] for d in rows],
           "credited": [d["credited"] for d in rows], "strikes": [d["strikes"] for d in rows],
           "strikes_cleared": [d["strikes_cleared"] for d in rows], "status": [d["status"] for d in rows],
           "suspect": [d["rank"] in suspects for d in rows], "role": [d["role"] for d in rows]}
    a = tap.arrays()
    out["compute_ms"] = box_stats(a["rank"], a["cps"].astype(np.float64) * 1000.0, ranks)
    returned = np.isin(a["state"], _RETURNED_CODES)
    out["latency_s"] = box_stats(a["rank"][returned], (a["end"] - a["start"])[returned], ranks)
    hosts: dict[str, dict] = {}
    for i, h in enumerate(out["host"]):
        e = hosts.setdefault(h, {"ranks": [], "share": 0.0, "credited": 0, "strikes": 0})
        e["ranks"].append(ranks[i])
        e["share"] += out["share"][i]
        e["credited"] += out["credited"][i]
        e["strikes"] += out["strikes"][i]
    out["hosts"] = hosts
    return out


# ----------------------------------------------------------------- collect --
class PlotData:
    """Everything the figures and the HTML page show (see :func:`collect`)."""

    def __init__(self, report: dict, metrics: dict | None, tap: LedgerTap | None, offsets: np.ndarray):
        self.report = report
        self.metrics = metrics
        self.tap = tap
        self.offsets = offsets
        led = report["ledger"]
        self.timeline = timeline(tap, offsets, [d["rank"] for d in led["ranks"] if d["role"] != "master"]
                                 if led else ()) if tap is not None else None
        self.ranks = rank_panels(tap, led) if led and tap is not None else None
        self.events = [dict(e, time=float(offsets[e["seg"]] + e["t"])) for e in tap.events] if tap else []


def collect(run_dir) -> PlotData:
    """Read a run directory once for the plots: :func:`.ledger.run_report`
    with a :class:`LedgerTap` on its ledger stream, and the metrics lines
    (``metrics.jsonl`` step and epoch lines that stand, on the run clock:
    ``time``)."""
    tap = LedgerTap()
    rep = run_report(run_dir, tap=tap)
    hist = read_history(run_dir, steps=True)
    has_ledger = rep["ledger"] is not None
    runs = tap.runs if has_ledger else []
    met = metrics_series(hist, runs)
    if has_ledger:
        offsets = tap.offsets(met["spans"])
        run_start = {}
        for i, (run, delta, _) in enumerate(tap.segments):
            run_start.setdefault(run, offsets[i] - delta)
        starts = np.array([run_start.get(j, 0.0) for j in range(max(len(tap.runs), 1))])
    else:
        spans = met["spans"]
        n = max(spans) + 1 if spans else 1
        starts = np.concatenate([[0.0], np.cumsum([spans.get(j, 0.0) for j in range(n)])[:-1]])
        offsets = np.zeros(0)
    for series in (met["steps"], met["epochs"]):
        series["time"] = starts[np.minimum(series["run"], len(starts) - 1)] + series["wall_s"]
    met["run_starts"] = starts
    st = met["steps"]
    for rb in met["rollbacks"]:
        # in the run of the last line that stands before it (its step or earlier)
        before = np.nonzero(st["step"] <= rb["to_step"])[0] if type(rb["to_step"]) is int else []
        j = int(st["run"][before[-1]]) if len(before) else 0
        w = rb["wall_s"]
        rb["time"] = float(starts[min(j, len(starts) - 1)] + w) if type(w) in _NUMBER else math.nan
    return PlotData(rep, met, tap if has_ledger else None, offsets)
