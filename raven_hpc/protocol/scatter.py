"""Scattered data: rank 0 reads the prepared file and sends every task's
snippets with the task (``data.delivery = "scatter"``).

A worker then needs no shared filesystem and holds only the data it
computes.  The pieces, all without MPI calls of their own:

* :class:`CacheIndex` -- a least-recently-used set of snippets bounded in
  bytes.  A receiver caches what it was sent within
  ``cluster.worker_cache_mb``; its leader keeps an identical index of that
  cache (a *mirror*) and leaves out of a packet the bytes the receiver
  holds.  Both apply the same operations in the same order (messages
  between two ranks arrive in the order they were sent), so the mirror is
  exact; when a receiver finds it is not (a snippet it should hold is
  missing, or a packet failed its checksums and was dropped), it clears
  its cache and says so, and the leader starts a new *generation* of the
  mirror, empty; every packet names its generation, and a receiver
  clears its cache when the generation changes.  When in doubt, the bytes
  are sent.
* :class:`Inbox` -- the receiver: checks a packet's rows against its task
  and every snippet's checksum on arrival, updates its cache, and hands
  the task its snippets (:class:`~raven_hpc.data.packet.TaskData`).
* :class:`Scatter` -- the leader (rank 0 or a collector): one mirror per
  rank it leads, the packet for each copy it sends, and the record of
  which snippets went to which rank (the ledger's ``sent`` records, for
  the exposure report).
* :class:`Feeder` -- rank 0's reading: snippets are read from the file
  ahead of the schedule (the data order is known from ``(seed, epoch)``)
  in the master's idle moments, into a store bounded in bytes; a snippet
  asked for before it was read ahead is read at once.
* :func:`resolve_delivery` -- ``"auto"``: scatter when some worker cannot
  open ``data.path``, read otherwise (collective, at start-up).
"""
from __future__ import annotations

import time
from collections import OrderedDict, deque

import numpy as np

from ..data.packet import DatasetInfo, PacketError, PacketView, TaskData, pack
from ..errors import ConfigError, DatasetError
from ..ledger_schema import EV, SENT

__all__ = ["CacheIndex", "Inbox", "Delivery", "Scatter", "Feeder", "FeederSplit", "resolve_delivery",
           "dataset_info", "KIND_CODES"]

KIND_CODES = {"grad": 0, "eval": 1}
MIB = 1 << 20
#: rank 0 reads ahead into a store of at least this many bytes
FEEDER_MIN_BYTES = 64 * MIB
#: ... and of at least this many steps' data
FEEDER_STEPS = 8
#: rank 0 keeps a split's labels in memory (one file read per snippet, not two) up to this size
FEEDER_LABELS_BYTES = 64 * MIB


def dataset_info(cfg: dict) -> DatasetInfo:
    """The dataset description rank 0 put into the configuration it handed
    out (``meta.dataset``, see :func:`raven_hpc.train.setup_run`)."""
    d = cfg.get("meta", {}).get("dataset")
    if not d:
        raise ConfigError("data.delivery = \"scatter\" needs the dataset description rank 0 reads at start-up "
                          "(meta.dataset); start the run with `raven-hpc train`")
    return DatasetInfo.from_dict(d)


class CacheIndex:
    """Snippet keys in least-recently-used order, bounded by ``capacity`` bytes."""

    def __init__(self, capacity: int):
        self.capacity = max(0, int(capacity))
        self.used = 0
        self.gen = 0
        self._od: OrderedDict = OrderedDict()

    def __contains__(self, key) -> bool:
        return key in self._od

    def __len__(self) -> int:
        return len(self._od)

    def touch(self, key) -> bool:
        """Is ``key`` held?  If so it becomes the most recently used."""
        if key in self._od:
            self._od.move_to_end(key)
            return True
        return False

    def insert(self, key, nbytes: int) -> tuple[bool, list]:
        """Hold ``key`` (``nbytes``), evicting the least recently used keys
        to make room; returns (held, evicted).  A key larger than the whole
        capacity is not held."""
        if key in self._od:
            self._od.move_to_end(key)
            return True, []
        if nbytes > self.capacity:
            return False, []
        out = []
        while self.used + nbytes > self.capacity:
            k, n = self._od.popitem(last=False)
            self.used -= n
            out.append(k)
        self._od[key] = nbytes
        self.used += nbytes
        return True, out

    def clear(self) -> None:
        self._od.clear()
        self.used = 0


class Delivery:
    """What :meth:`Inbox.receive` made of a packet: the task's snippets
    (``data``), or why it cannot be computed (``bad``: snippets that failed
    their checksum or do not fit the task; ``missing``: snippets the
    leader believed held here)."""

    __slots__ = ("data", "bad", "missing", "reason", "gen")

    def __init__(self, data=None, bad=(), missing=(), reason="", gen=None):
        self.data = data
        self.bad = list(bad)
        self.missing = list(missing)
        self.reason = reason
        self.gen = gen

    @property
    def ok(self) -> bool:
        return not self.bad and not self.missing


class Inbox:
    """A receiving rank's side: packets checked on arrival, its cache."""

    def __init__(self, info: DatasetInfo, capacity: int):
        self.info = info
        self.index = CacheIndex(capacity)
        self.gen: int | None = None          # the generation of the leader's mirror it follows
        self._held: dict = {}                # key -> (features, labels), the cached copies
        self.norm = info.normalizer()
        self.stats = {"packets": 0, "bytes": 0, "hits": 0, "bad": 0, "missing": 0}

    def reset(self) -> None:
        """Forget the cache (a new leader, or a packet that could not be used)."""
        self.index.clear()
        self._held.clear()
        self.gen = None

    def receive(self, buf: np.ndarray, task: dict) -> Delivery:
        """The packet ``buf`` that came with ``task`` (the control message):
        check it, update the cache the way the leader's mirror did, and
        return the task's snippets."""
        self.stats["packets"] += 1
        self.stats["bytes"] += buf.nbytes
        ids = [int(i) for i in task["snippets"]]
        try:
            view = PacketView(buf, self.info)
            gen = view.field("gen")
            bad = view.check_rows(ids)
            why = "its rows do not match the task"
            if not bad and (view.field("task") != int(task["task"]) or view.split != task["split"]):
                bad, why = ids, "it belongs to another task"
            if not bad:
                bad, why = view.verify(), "failed the checksum on arrival"
        except PacketError as exc:
            gen, bad, why = None, ids, str(exc)
        if bad:
            # the leader's mirror counted this packet's snippets as held here
            self.stats["bad"] += 1
            self.reset()
            return Delivery(bad=bad, reason=why, gen=gen)
        if gen != self.gen:
            self.index.clear()
            self._held.clear()
            self.gen = gen
        split = self.info.split_index(task["split"])
        data, missing = {}, []
        per = self.info.sample_nbytes
        for k, sid in enumerate(ids):
            key = (split, sid)
            if view.held(k):
                if self.index.touch(key):
                    data[sid] = self._held[key]
                    self.stats["hits"] += 1
                else:
                    missing.append(sid)
                continue
            x, y = view.snippet(k)
            data[sid] = (x, y)
            held, evicted = self.index.insert(key, per * y.shape[0])
            for e in evicted:
                del self._held[e]
            if held:
                self._held[key] = (x.copy(), y.copy())
        if missing:
            self.stats["missing"] += 1
            self.reset()
            return Delivery(missing=missing, reason="not in its cache", gen=gen)
        crc = {int(r[0]): int(r[2]) for r in view.rows}
        return Delivery(data=TaskData(self.info, task["split"], data, self.norm, checksums=crc), gen=gen)


class Scatter:
    """A leader's side: the packets for the ranks it leads and a record of
    what each was sent.  ``checksums(split)`` gives a split's checksum
    column (rank 0: the file's snippet table; a collector: the rows its
    own packets carried)."""

    def __init__(self, info: DatasetInfo, capacity: int):
        self.info = info
        self.capacity = int(capacity)
        self.mirrors: dict[int, CacheIndex] = {}
        self._sent: dict[tuple[int, str], list] = {}     # (rank, split) -> ids whose bytes went out
        self.stats = {"packets": 0, "data_bytes": 0, "snippets_sent": 0, "snippets_held": 0}

    def mirror(self, rank: int) -> CacheIndex:
        m = self.mirrors.get(rank)
        if m is None:
            m = self.mirrors[rank] = CacheIndex(self.capacity)
        return m

    def packet(self, rank: int, msg: dict, checksums, fetch) -> np.ndarray:
        """The packet for the copy ``msg`` (a task message) going to ``rank``.
        ``checksums``: the snippets' checksums, in the task's order;
        ``fetch(split, ids)`` gives ``{id: (features, labels)}`` of the
        snippets whose bytes go in."""
        m = self.mirror(rank)
        split = msg["split"]
        ids = [int(i) for i in msg["snippets"]]
        s = self.info.split_index(split)
        counts = self.info.counts(split)
        per = self.info.sample_nbytes
        held = []
        for sid in ids:
            key = (s, sid)
            if m.touch(key):
                held.append(True)
            else:
                m.insert(key, per * int(counts[sid]))
                held.append(False)
        send = [sid for sid, h in zip(ids, held) if not h]
        data = fetch(split, send) if send else {}
        buf = pack(self.info, step=int(msg["step"]), task=int(msg["task"]), split=split, gen=m.gen,
                   kind=KIND_CODES.get(msg["kind"], 0), ids=ids, checksums=checksums, held=held, data=data)
        if send:
            self._sent.setdefault((rank, split), []).extend(send)
        st = self.stats
        st["packets"] += 1
        st["data_bytes"] += buf.nbytes
        st["snippets_sent"] += len(send)
        st["snippets_held"] += len(ids) - len(send)
        return buf

    def reset(self, rank: int) -> None:
        """``rank`` starts with an empty cache (it (re-)attached): a new
        generation of its mirror."""
        m = self.mirrors.get(rank)
        if m is not None:
            m.clear()
            m.gen += 1

    def report(self, rank: int, gen) -> bool:
        """``rank`` dropped its cache (a packet of generation ``gen`` was
        unusable): if that is the current generation, start a new one (a
        report about an older one came after the reset).  True when reset."""
        m = self.mirrors.get(rank)
        if m is None or gen is None or int(gen) != m.gen:
            return False
        self.reset(rank)
        return True

    def drain_sent(self, step: int) -> list[dict]:
        """The ledger's ``sent`` records of what went out since the last
        call: one per rank and split, the snippets whose bytes were sent."""
        out = []
        for (rank, split), ids in sorted(self._sent.items()):
            counts = self.info.counts(split)
            out.append({EV: SENT, "step": int(step), "rank": rank, "split": split, "snippets": ids,
                        "samples": int(sum(int(counts[i]) for i in ids))})
        self._sent = {}
        return out


class Feeder:
    """Rank 0's snippets, read ahead of the schedule.

    :meth:`want` says which snippets come next (in order); :meth:`read_ahead`
    reads the next of them (the master calls it when it would otherwise
    sleep); :meth:`fetch` returns snippets, reading at once those not read
    ahead (counted in :attr:`stats`).  The store keeps the most recently read
    snippets within ``capacity`` bytes (oldest first out)."""

    def __init__(self, splits: dict, info: DatasetInfo, capacity: int, clock=time.perf_counter):
        self.splits = splits
        self.info = info
        self.capacity = int(capacity)
        self.clock = clock
        for sp in splits.values():
            if sp.num_samples * 8 <= FEEDER_LABELS_BYTES:
                sp.keep_labels()
        self._store: OrderedDict = OrderedDict()     # (split, id) -> (features, labels)
        self._used = 0
        self._queue: deque = deque()
        self.stats = {"read_ahead": 0, "read_now": 0, "read_ahead_s": 0.0, "read_now_s": 0.0}

    def want(self, units) -> None:
        """``units``: (split, snippet ids) in the order they will be needed;
        replaces what was wanted before.  Snippets beyond half the store's
        capacity are not read ahead (they would push out what is needed
        first)."""
        q, seen, budget = deque(), set(), self.capacity // 2
        per = self.info.sample_nbytes
        for split, ids in units:
            counts = self.info.counts(split)
            for sid in ids:
                key = (split, int(sid))
                if key in seen:
                    continue
                seen.add(key)
                budget -= per * int(counts[key[1]])
                if budget < 0:
                    self._queue = q
                    return
                if key not in self._store:
                    q.append(key)
        self._queue = q

    def read_ahead(self) -> bool:
        """Read the next wanted snippet; False when none is left."""
        while self._queue:
            key = self._queue.popleft()
            if key in self._store:
                continue
            t = self.clock()
            x, y = self.splits[key[0]].read_raw([key[1]])
            self._put(key, x, y)
            self.stats["read_ahead"] += 1
            self.stats["read_ahead_s"] += self.clock() - t
            return True
        return False

    def _put(self, key, x, y) -> None:
        self._store[key] = (x, y)
        self._used += x.nbytes + y.nbytes
        while self._used > self.capacity and len(self._store) > 1:
            _, (ox, oy) = self._store.popitem(last=False)
            self._used -= ox.nbytes + oy.nbytes

    def fetch(self, split: str, ids) -> dict:
        """``{id: (features, labels)}`` of ``split``'s snippets ``ids``."""
        out, need = {}, []
        for sid in ids:
            v = self._store.get((split, int(sid)))
            if v is None:
                need.append(int(sid))
            else:
                out[int(sid)] = v
        if need:
            t = self.clock()
            x, y = self.splits[split].read_raw(need)
            counts = self.info.counts(split)
            o = 0
            for sid in need:
                c = int(counts[sid])
                out[sid] = (x[o:o + c], y[o:o + c])
                self._put((split, sid), *out[sid])
                o += c
            self.stats["read_now"] += len(need)
            self.stats["read_now_s"] += self.clock() - t
        return out

    def split(self, name: str) -> "FeederSplit":
        return FeederSplit(self, name)


class FeederSplit:
    """A split read through the :class:`Feeder` (the master's own
    computations: arbitration, audits), normalised like the reader."""

    def __init__(self, feeder: Feeder, name: str):
        self.feeder = feeder
        self.name = name
        self.snippets = feeder.splits[name].snippets
        self._norm = feeder.info.normalizer()

    def read_snippets(self, ids):
        ids = [int(i) for i in np.atleast_1d(np.asarray(ids))]
        return TaskData(self.feeder.info, self.name, self.feeder.fetch(self.name, ids), self._norm).read_snippets(ids)


def resolve_delivery(comm, cfg: dict) -> str:
    """Settle ``data.delivery`` on every rank (collective): ``"auto"``
    becomes ``"scatter"`` when some worker cannot open ``data.path`` and
    ``"read"`` otherwise.  A job of one rank reads.  The choice and its
    reason go to ``meta.delivery_note`` (rank 0 logs it once)."""
    from ..data import open_dataset
    from .transport import hostname

    mode = cfg["data"]["delivery"]
    size, rank = comm.Get_size(), comm.Get_rank()
    note = None
    if size > 1 and mode == "auto":
        why = None
        if rank != 0:
            try:
                open_dataset(cfg["data"]["path"]).close()
            except (DatasetError, OSError) as exc:
                why = str(exc)
        got = comm.allgather((why, hostname()))
        denied = [(r, w, h) for r, (w, h) in enumerate(got) if w is not None]
        if denied:
            mode = "scatter"
            r, w, h = denied[0]
            more = f" (and {len(denied) - 1} more rank{'s' if len(denied) > 2 else ''})" if len(denied) > 1 else ""
            note = f"data delivery: scatter (auto): rank {r} on {h} cannot open data.path{more}: {w}"
        else:
            mode = "read"
            note = "data delivery: read (auto): every rank opens data.path"
    elif size == 1 or mode == "auto":
        mode = "read"
    cfg["data"]["delivery"] = mode
    cfg.setdefault("meta", {})["delivery_note"] = note
    return mode
