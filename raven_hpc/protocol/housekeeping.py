"""The periodic duties every leader (the master, a collector) has towards
the ranks it leads: backups for stragglers (often), and -- four times a
second -- giving up on hung ranks and following the drain file.

A rank that leads a group itself (a collector) is given up on only after
the timeout has passed once per level below it (its *patience*), so that
its own hung workers are found and replaced first.  A collector this leader
gives no more work to -- excluded, or drained once none of its copies is
out -- is named by :meth:`Housekeeper.to_release`: the leader tells it to
release its group, whose ranks re-attach to the leader.
"""
from __future__ import annotations

from typing import Callable

from ..drain import DrainWatch
from .scheduler import DRAINED, EXCLUDED

__all__ = ["Housekeeper", "BACKUP_CHECK_S", "MEMBER_CHECK_S"]

BACKUP_CHECK_S = 0.001     # backups and stuck tasks are looked at this often (at most)
MEMBER_CHECK_S = 0.25      # hung ranks and the drain file


class Housekeeper:
    """``tick(now)`` returns the copies to send as backups (or ``None`` when
    it is not time yet) and carries out the membership duties on ``sched``;
    ``remove(rank, reason)`` takes a hung rank out."""

    def __init__(self, sched, *, backups: bool, timeout_s: float, drain_file, remove: Callable[[int, str], None],
                 patience: dict | None = None):
        self.sched = sched
        self.backups = backups
        self.timeout_s = timeout_s
        self.remove = remove
        self.patience = dict(patience or {})
        self.drain_watch = DrainWatch(drain_file)
        self._next_backup = 0.0
        self._next_member = 0.0

    def tick(self, now: float):
        if now < self._next_backup:
            return None
        self._next_backup = now + BACKUP_CHECK_S
        out = self.sched.backups(now) if self.backups else []
        if now >= self._next_member:
            self._next_member = now + MEMBER_CHECK_S
            t = self.timeout_s
            for r in self.sched.hung(now, t):
                k = self.patience.get(r, 1)
                if k == 1 or r in self.sched.hung(now, k * t):
                    self.remove(r, f"no result for {k * t:g} s (hung)")
            self.drain_watch.poll(self.sched, now)
        return out

    def to_release(self, leaders) -> list[tuple[int, str]]:
        """The ranks of ``leaders`` (children that lead groups) whose groups
        are to be released now, each with the word why ("excluded",
        "drained").  An excluded one's copies were already taken back; a
        drained one first finishes what it holds (a drain is graceful).
        Each is named once: it is no longer a leader of groups here, and
        readmitted it is a worker of its own (slots 1, its speed learnt
        afresh)."""
        out = []
        for r in sorted(leaders):
            status = self.sched.status(r)
            if status == EXCLUDED or (status == DRAINED and not self.sched.outstanding(r)):
                out.append((r, status))
                self.patience.pop(r, None)
                self.sched.set_slots(r, 1)
                self.sched.relearn(r)    # what was measured of it was its group's speed
        return out

    def joined(self) -> None:
        """A rank joined (re-attached from a collector): the drain file is
        read again at the next check, so a rank listed in it is drained
        here too (the watch re-reads only when the file changes)."""
        self.drain_watch._mtime = None
