"""The shape of the job: which rank leads which (the gradient-collector tree).

Rank 0, the master, leads its *children*.  In a flat job (a star) every
worker is a child of rank 0.  With gradient collectors, workers are cut into
groups; each group's first rank is its *collector*: it leads the others,
sums their accepted results and passes one sum per task up, and takes the
parameters down.  To its parent a collector is one worker (of its group's
measured speed), so the same scheduler runs at every level.  When the
collectors are too many for one leader (more than ``fan_in``), they are
grouped in turn: the first collector of each such group also leads the
others, and so on up to rank 0.

:func:`build_tree` is pure (unit-tested without MPI); :func:`node_keys`
asks MPI which ranks share a node.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..errors import ConfigError

__all__ = ["Tree", "build_tree", "node_keys", "DEFAULT_FAN_IN"]

#: most children one leader takes before "auto" adds collectors or a level
DEFAULT_FAN_IN = 16


@dataclass
class Tree:
    """Parent and children of every rank of a job of ``size`` ranks."""

    size: int
    parent: list = field(default_factory=list)     # parent[r]; -1 for rank 0
    children: dict = field(default_factory=dict)   # rank -> list of child ranks (leaders only)

    @property
    def collectors(self) -> list[int]:
        """Ranks other than 0 that lead others."""
        return sorted(r for r, c in self.children.items() if r != 0 and c)

    @property
    def flat(self) -> bool:
        return not self.collectors

    def children_of(self, rank: int) -> list[int]:
        return list(self.children.get(rank, ()))

    def ancestors(self, rank: int) -> list[int]:
        """``rank``'s parent, its parent's parent ... up to rank 0."""
        out = []
        r = self.parent[rank]
        while r >= 0:
            out.append(r)
            r = self.parent[r]
        return out

    def subtree(self, rank: int) -> list[int]:
        """``rank`` and every rank below it."""
        out, todo = [], [rank]
        while todo:
            r = todo.pop()
            out.append(r)
            todo.extend(self.children.get(r, ()))
        return sorted(out)

    def workers_under(self, rank: int, leaders_compute: bool = False) -> int:
        """Ranks that compute in ``rank``'s subtree (1 for a worker; the
        collectors too with ``leaders_compute``): how much work a leader may
        hand it at once (:meth:`Scheduler.set_slots`)."""
        return sum(1 for r in self.subtree(rank) if leaders_compute or not self.children.get(r))

    def depth(self, rank: int = 0) -> int:
        """Levels below ``rank`` (0: a worker; 1: rank 0 of a star)."""
        kids = self.children.get(rank, ())
        return 1 + max(self.depth(k) for k in kids) if kids else 0

    def describe(self) -> str:
        if self.flat:
            return f"flat: rank 0 leads {self.size - 1} worker{'s' if self.size != 2 else ''}"
        parts = [f"{c} leads {','.join(map(str, self.children[c]))}" for c in self.collectors]
        return f"{len(self.collectors)} collectors, {self.depth()} levels: " + "; ".join(parts)


def _cut(ranks: Sequence[int], parts: int) -> list[list[int]]:
    """``ranks`` in ``parts`` consecutive pieces whose sizes differ by at most one."""
    parts = max(1, min(parts, len(ranks)))
    q, r = divmod(len(ranks), parts)
    out, i = [], 0
    for p in range(parts):
        k = q + (1 if p < r else 0)
        out.append(list(ranks[i:i + k]))
        i += k
    return out


def build_tree(size: int, collectors="auto", fan_in: int = DEFAULT_FAN_IN,
               keys: Sequence | None = None) -> Tree:
    """The tree of a job of ``size`` ranks.

    ``collectors``: ``0`` -- a flat star; an integer ``k`` -- the workers
    (ranks 1..size-1, in order) cut into ``k`` groups; ``"auto"`` -- flat
    while rank 0 has at most ``fan_in`` workers, else one group per node
    (``keys[r]``: any value equal for ranks on the same node), a node with
    more than ``fan_in + 1`` ranks cut into groups of at most that many.
    A group's first rank is its collector; a group of one rank is a plain
    worker of the level above.  While a level has more than ``fan_in``
    leaders they are grouped again the same way.
    """
    if size < 1:
        raise ConfigError("a job needs at least one rank")
    if fan_in < 2:
        raise ConfigError(f"[cluster] fan_in = {fan_in} must be at least 2")
    workers = list(range(1, size))
    tree = Tree(size=size, parent=[-1] + [0] * (size - 1), children={0: list(workers)})
    if collectors == "auto":
        if len(workers) <= fan_in:
            return tree
        keys = list(keys) if keys is not None else [0] * size
        if len(keys) != size:
            raise ValueError(f"node keys for {len(keys)} ranks, the job has {size}")
        order: dict = {}
        for r in workers:
            order.setdefault(keys[r], []).append(r)
        groups = []
        for members in order.values():
            groups.extend(_cut(members, -(-len(members) // (fan_in + 1))))
    elif isinstance(collectors, bool) or not isinstance(collectors, int) or collectors < 0:
        raise ConfigError(f"[cluster] collectors = {collectors!r} must be \"auto\", 0 (a flat star) or the "
                          "number of worker groups")
    elif collectors == 0 or len(workers) < 2:
        return tree
    else:
        if collectors > len(workers) // 2:
            raise ConfigError(f"[cluster] collectors = {collectors}: {len(workers)} workers make at most "
                              f"{len(workers) // 2} groups of two or more ranks")
        groups = _cut(workers, collectors)
    tree.children = {0: []}
    leaders = []
    for g in groups:
        lead = g[0]
        tree.children[lead] = g[1:]
        for r in g[1:]:
            tree.parent[r] = lead
        leaders.append(lead)
    while len(leaders) > fan_in:
        upper = []
        for g in _cut(leaders, -(-len(leaders) // fan_in)):
            lead = g[0]
            tree.children.setdefault(lead, []).extend(g[1:])
            for r in g[1:]:
                tree.parent[r] = lead
            upper.append(lead)
        leaders = upper
    tree.children[0] = leaders
    for r in leaders:
        tree.parent[r] = 0
    tree.children = {r: c for r, c in tree.children.items() if c or r == 0}
    return tree


def node_keys(comm) -> list[int]:
    """For every rank, the lowest rank on its node (ranks that share memory,
    ``MPI_COMM_TYPE_SHARED``): equal keys mean the same node."""
    from mpi4py import MPI

    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    try:
        lowest = local.allreduce(comm.Get_rank(), op=MPI.MIN)
    finally:
        local.Free()
    return comm.allgather(lowest)
