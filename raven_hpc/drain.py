"""The operator's drain file: ranks listed in it leave the schedule (they
finish nothing new) and come back when their line is removed.

Written by ``raven-hpc drain`` (:func:`update_drain`), watched by the master
and every collector (:class:`DrainWatch`: each drains the ranks it leads),
listed by ``raven-hpc report``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

from .errors import RavenError

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


class DrainWatch:
    """Watches the drain file for a leader (the master or a collector):
    :meth:`poll` drains the ranks it leads that appear in the file and
    undrains those whose line went away (the file is re-read only when its
    modification time changes)."""

    def __init__(self, path):
        self.path = path
        self._mtime: float | None = None
        self._drained: set[int] = set()

    def poll(self, sched, now: float) -> None:
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError:
            mtime = None
        if mtime == self._mtime:
            return
        self._mtime = mtime
        ranks: set[int] = set()
        if mtime is not None:
            try:
                text = open(self.path).read()
            except OSError:
                text = ""
            ranks = {r for r in parse_drain(text)[0] if sched.is_worker(r)}
        for r in sorted(ranks - self._drained):
            sched.drain(r, now, f"listed in {self.path}")
        for r in sorted(self._drained - ranks):
            sched.undrain(r, now, f"no longer listed in {self.path}")
        self._drained = ranks
