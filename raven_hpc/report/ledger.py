"""The ledger: the streaming reader, the summary and the run report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import RavenError
from ..ledger_schema import COLLECTOR, EV, LEDGER_NAME, RUN
from .collectors import find_group_ledgers, merge_groups
from .common import MAX_LISTED
from ..drain import drain_path, read_drain
from .history import read_history
from .summary import Summary

# ------------------------------------------------------------------- ledger --
#: how a record's line starts (json.dumps writes its kind first)
_RECORD_START = '{' + json.dumps(EV)

def _loads_or_none(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


def iter_ledger(path, warnings: list | None = None, stats: dict | None = None, start: str = RUN,
                name: str = "ledger") -> Iterator[dict]:
    """The ledger's records, one dict per line, streamed.

    Blank lines are skipped; a line that is not a JSON object is skipped and
    reported in ``warnings`` (appended to as the file is read; the note on a
    truncated last line comes when the end is reached).  ``stats``, when
    given, is filled at the end: ``lines``, ``records``, ``bad`` (line numbers
    of damaged lines in the middle), ``torn`` (records a killed run left
    truncated before a resumed run's records: glued to them, or alone on a
    line right before the next ``run`` record) and ``truncated_last``.
    ``start`` is the kind that opens a run's part of the file (a collector's
    ledger: ``collector``) and ``name`` the file's name in the warnings."""
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
                    cut = line.rfind(_RECORD_START)
                    rec = _loads_or_none(line[cut:]) if cut > 0 else None
                    if not (isinstance(rec, dict) and isinstance(rec.get(EV), str)):
                        bad.append(last)
                        prev_bad = True
                        continue
                    salvaged.append(last)
            if type(rec) is dict and type(rec.get(EV)) is str:
                if prev_bad:
                    prev_bad = False
                    if rec[EV] == start:   # a killed run's partial last line, then the resumed run
                        torn.append(bad.pop())
                records += 1
                yield rec
            else:
                bad.append(last)
                prev_bad = True
    truncated = bool(bad) and bad[-1] == last
    middle = bad[:-1] if truncated else bad
    for n in middle[:MAX_LISTED]:
        warnings.append(f"{name} line {n}: not a JSON record with an \"ev\"; skipped")
    if len(middle) > MAX_LISTED:
        warnings.append(f"... and {len(middle) - MAX_LISTED} more such lines skipped")
    for n in salvaged[:MAX_LISTED]:
        warnings.append(f"{name} line {n}: a truncated record (a killed run) followed by a whole one; "
                        "the truncated part skipped")
    for n in torn[:MAX_LISTED]:
        warnings.append(f"{name} line {n}: a truncated record (a killed run) before the next run's start; skipped")
    if truncated:
        warnings.append(f"{name} line {last} (the last): truncated record skipped (the run was killed while "
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


def ledger_summary(records: Iterable[dict], warnings: list[str] | None = None,
                   groups: dict[int, Iterable[dict]] | None = None) -> dict:
    """Per-rank rows, totals, suspects, audits, rollbacks and the integrity
    check of ledger records (any iterable: a list, or :func:`iter_ledger` to
    stream).  ``warnings`` (e.g. from :func:`read_ledger`) are carried into
    the result.  ``groups``: {collector rank: the records of its ledger},
    merged as :mod:`.collectors` says."""
    groups = groups or {}
    acc = Summary(leaders=groups)
    acc.feed(records)
    if groups:
        merge_groups(acc, ((r, recs, f"collector {r}'s ledger", None) for r, recs in sorted(groups.items())))
    return acc.result(list(warnings or []))


def summarize_ledger(path, groups: dict[int, Path] | None = None, tap=None) -> dict:
    """:func:`ledger_summary` of a ledger file, streamed, with the checks on
    the file itself (empty, garbled, damaged, a torn last line).  ``groups``
    ({collector rank: ledger path}) defaults to the collectors' ledgers next
    to a file named ``ledger.jsonl`` (a run directory's).

    ``tap``: an object whose ``stream(records, source)`` yields the records
    it is given, looking at each on the way (``source`` None for this
    ledger, the collector's rank for a collector's), so a caller that needs
    more of the records than the summary (the plots) reads the files in the
    same single pass."""
    path = Path(path)
    if groups is None:
        groups = find_group_ledgers(path.parent) if path.name == LEDGER_NAME else {}
    warnings: list[str] = []
    stats: dict = {}
    acc = Summary(leaders=groups)
    records = iter_ledger(path, warnings, stats)
    acc.feed(records if tap is None else tap.stream(records, None))
    if groups:
        merge_groups(acc, _group_sources(groups, warnings, tap))
    out = acc.result(warnings, stats)
    out["path"] = str(path)
    for g in out["collectors"]:
        g["path"] = str(groups[g["rank"]])
    return out


def _group_sources(groups: dict[int, Path], warnings: list[str], tap=None):
    """(rank, records, name, stats) of each collector's ledger file, streamed
    (through ``tap.stream`` when there is a tap)."""
    for rank, p in sorted(groups.items()):
        stats: dict = {}
        records = iter_ledger(p, warnings, stats, start=COLLECTOR, name=Path(p).name)
        yield rank, records if tap is None else tap.stream(records, rank), Path(p).name, stats


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


def run_report(run_dir, tap=None) -> dict:
    """Everything ``raven-hpc report`` shows: ``summary``, ``epochs``,
    ``ledger`` (:func:`summarize_ledger`, or None without a ledger, its
    integrity cross-checked against ``summary.json``'s and
    ``checkpoint.h5``'s step) and ``drain`` (the drain file's path and the
    ranks it lists now).  ``tap``: as for :func:`summarize_ledger`."""
    run = Path(run_dir)
    if not run.is_dir():
        raise RavenError(f"no run directory at {run}")
    hist = read_history(run)
    lp = run / LEDGER_NAME
    ledger = summarize_ledger(lp, tap=tap) if lp.is_file() else None
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
