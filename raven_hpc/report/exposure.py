"""Exposure: how much of the dataset each rank, and each host, was given.

With ``data.delivery = "scatter"`` a worker sees only the snippets it is
sent; the leaders (rank 0, and each gradient collector for its group)
write a ``sent`` record per rank and split with the snippet ids whose bytes
went out (:data:`raven_hpc.ledger_schema.SENT`).  This module answers what
an operator asks when workers are less trusted than the master: how many
distinct samples did each rank -- and each host, whose ranks share a
machine -- see, absolute and as a percentage of the dataset (the splits
the run uses, from the ``run`` record's ``data``).

A rank of a run segment that read the file itself (``data.delivery =
"read"``, or a ledger written before deliveries were recorded) could read
all of it: it is reported as the whole dataset (``whole``).

Sources: ``ledger.jsonl``, ``ledger.superseded.jsonl`` (a resumed run moves
the records after its checkpoint there; what was sent then was still sent)
and every ``ledger.collector-<rank>.jsonl``.  Rows are per (rank, host):
a resumed run may place a rank number on another host.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from ..ledger_schema import COLLECTOR_LEDGER, EV, LEDGER_NAME, RUN, SENT, SUPERSEDED_NAME

__all__ = ["exposure", "exposure_from_records", "exposure_lines", "ledger_files"]


def ledger_files(run_dir) -> list[Path]:
    """The ledger files of a run directory that may hold ``sent`` records."""
    run = Path(run_dir)
    out = [p for p in (run / LEDGER_NAME, run / SUPERSEDED_NAME) if p.is_file()]
    pattern = COLLECTOR_LEDGER.format(rank="*")
    out += sorted(run.glob(pattern), key=lambda p: (len(p.name), p.name))
    return out


def _records(path: Path):
    """The records of a JSON-lines file; lines that are not a record are skipped."""
    with open(path, "r", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get(EV), str):
                yield rec


def exposure(run_dir) -> dict:
    """:func:`exposure_from_records` of a run directory's ledgers (the
    run records come first: the main ledger is read before the others)."""
    files = ledger_files(run_dir)

    def records():
        for p in files:
            yield from _records(p)

    out = exposure_from_records(records())
    out["files"] = [str(p) for p in files]
    return out


def _count(split: dict, sid: int) -> int:
    """Samples of snippet ``sid`` of a split that ``snippet_size`` snippets tile."""
    n, ss = int(split["samples"]), int(split["snippet_size"])
    return max(0, min(ss, n - sid * ss))


def exposure_from_records(records: Iterable[dict]) -> dict:
    """Per rank and per host, the distinct samples sent.

    Returns ``{"delivery": [...the deliveries of the run segments...],
    "dataset": {"samples": N, "splits": {name: samples}}, "ranks": [...],
    "hosts": [...], "warnings": [...]}``; a rank row is ``{"rank", "host",
    "samples", "percent", "splits": {name: {"snippets", "samples"}},
    "whole"}``, a host row ``{"host", "ranks", "samples", "percent",
    "splits", "whole"}``.  Percentages are of N, the samples of the splits
    the run uses."""
    splits: dict[str, dict] = {}
    deliveries: list[str] = []
    sent: dict[tuple, dict[str, set]] = {}       # (rank, host) -> split -> snippet ids
    whole: set[tuple] = set()                    # (rank, host) that read the file themselves
    warnings: list[str] = []
    for rec in records:
        ev = rec.get(EV)
        if ev == RUN:
            data = rec.get("data") if isinstance(rec.get("data"), dict) else {}
            for name, s in (data.get("splits") or {}).items():
                splits.setdefault(name, s)
            mode = data.get("delivery") or "read"
            deliveries.append(mode)
            if mode != "scatter":
                for r, h in (rec.get("hosts") or {}).items():
                    if str(r) != "0":
                        whole.add((int(r), str(h)))
        elif ev == SENT:
            try:
                key = (int(rec["rank"]), str(rec.get("host", "?")))
                ids = {int(i) for i in rec["snippets"]}
                split = str(rec["split"])
            except (KeyError, TypeError, ValueError):
                warnings.append(f"a sent record without rank, split or snippets skipped: {rec!r}"[:200])
                continue
            sent.setdefault(key, {}).setdefault(split, set()).update(ids)
    total = sum(int(s["samples"]) for s in splits.values())
    unknown = sorted({sp for per in sent.values() for sp in per if sp not in splits})
    if unknown:
        warnings.append(f"sent records name split{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}, which no "
                        "run record describes: their samples are not counted")

    def row(per: dict[str, set], is_whole: bool) -> dict:
        if is_whole:
            out = {name: {"snippets": int(s["snippets"]), "samples": int(s["samples"])} for name, s in splits.items()}
        else:
            out = {}
            for name, ids in sorted(per.items()):
                if name not in splits:
                    continue
                bad = [i for i in ids if not 0 <= i < int(splits[name]["snippets"])]
                note = (f"sent records name snippet {bad[0]} of split {name!r}, which has "
                        f"{splits[name]['snippets']} snippets" if bad else None)
                if note and note not in warnings:     # (once: a host row repeats its ranks')
                    warnings.append(note)
                out[name] = {"snippets": len(ids) - len(bad),
                             "samples": sum(_count(splits[name], i) for i in ids if i not in bad)}
        n = sum(v["samples"] for v in out.values())
        return {"samples": n, "percent": round(100.0 * n / total, 3) if total else None, "splits": out,
                "whole": is_whole}

    ranks = []
    for key in sorted(set(sent) | whole):
        ranks.append({"rank": key[0], "host": key[1], **row(sent.get(key, {}), key in whole)})
    by_host: dict[str, dict[str, set]] = {}
    host_ranks: dict[str, set] = {}
    for (r, h), per in sent.items():
        for name, ids in per.items():
            by_host.setdefault(h, {}).setdefault(name, set()).update(ids)
        host_ranks.setdefault(h, set()).add(r)
    for r, h in whole:
        host_ranks.setdefault(h, set()).add(r)
    whole_hosts = {h for _, h in whole}
    hosts = [{"host": h, "ranks": sorted(rs), **row(by_host.get(h, {}), h in whole_hosts)}
             for h, rs in sorted(host_ranks.items())]
    return {"delivery": deliveries, "dataset": {"samples": total,
                                                "splits": {n: int(s["samples"]) for n, s in splits.items()}},
            "ranks": ranks, "hosts": hosts, "warnings": warnings}


def _pct(p) -> str:
    return "?" if p is None else f"{p:.1f}%"


def exposure_lines(result: dict) -> list[str]:
    """The exposure as lines for a report (the CLI prints them)."""
    ds = result["dataset"]
    modes = sorted(set(result["delivery"])) or ["unknown"]
    lines = [f"exposure (data.delivery = {', '.join(modes)}): distinct samples each rank was given, of "
             f"{ds['samples']:,} in the splits used ({', '.join(f'{n} {k:,}' for n, k in ds['splits'].items())})"]
    if not result["ranks"]:
        lines.append("  no rank was sent any data")

    def detail(r: dict) -> str:
        if r["whole"]:
            return "the whole dataset (it read the file itself)"
        parts = ", ".join(f"{n} {v['samples']:,}" for n, v in r["splits"].items())
        return f"{r['samples']:,} samples ({_pct(r['percent'])})" + (f": {parts}" if parts else "")

    for r in result["ranks"]:
        lines.append(f"  rank {r['rank']} ({r['host']}): {detail(r)}")
    for h in result["hosts"]:
        ranks = ", ".join(map(str, h["ranks"]))
        lines.append(f"  host {h['host']} (rank{'s' if len(h['ranks']) > 1 else ''} {ranks}): {detail(h)}")
    lines += [f"  warning: {w}" for w in result["warnings"]]
    return lines
