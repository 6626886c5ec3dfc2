"""Scattered data without MPI: the leader's packets and mirror, the
receiver's checks and cache, rank 0's reading ahead, and how "auto" decides."""
from __future__ import annotations

import numpy as np
import pytest

from raven_hpc.data import open_dataset
from raven_hpc.data.packet import DatasetInfo, PacketView
from raven_hpc.errors import ConfigError
from raven_hpc.ledger_schema import SENT, check_record
from raven_hpc.protocol.scatter import CacheIndex, Feeder, Inbox, Scatter, dataset_info, resolve_delivery
from tests.unit.data.datasets import images, write


@pytest.fixture
def ds(tmp_path):
    x, y = images(160)
    tx, ty = images(24, seed=1)
    path = tmp_path / "d.h5"
    write(path, {"train": (x, y), "test": (tx, ty)}, snippet_size=8)
    with open_dataset(path) as d:
        yield d


def feeder(ds, capacity=1 << 20):
    return Feeder({n: ds.split(n) for n in ds.split_names}, DatasetInfo.from_dataset(ds), capacity)


def task(tid, ids, split="train", kind="grad", step=0):
    return {"task": tid, "step": step, "kind": kind, "split": split, "version": 0, "snippets": list(ids)}


def send(sc, fd, ds, rank, msg):
    crc = ds.split(msg["split"]).snippets["checksum"][msg["snippets"]]
    return sc.packet(rank, msg, crc, fd.fetch)


def test_the_cache_index_is_lru_within_its_bytes():
    c = CacheIndex(100)
    assert c.insert("a", 40) == (True, []) and c.insert("b", 40) == (True, [])
    assert c.touch("a")                                  # a is now the most recent
    assert c.insert("c", 40) == (True, ["b"])
    assert "a" in c and "b" not in c and c.used == 80
    assert c.insert("big", 101) == (False, [])           # larger than the whole cache: not held
    assert CacheIndex(0).insert("a", 1) == (False, [])


def test_the_receiver_checks_every_snippet_and_reads_like_the_file(ds):
    info = DatasetInfo.from_dataset(ds)
    sc, fd, inbox = Scatter(info, 1 << 20), feeder(ds), Inbox(info, 1 << 20)
    msg = task(1, [4, 19, 7])
    got = inbox.receive(send(sc, fd, ds, 2, msg), msg)
    assert got.ok
    x, y = got.data.read_snippets([4, 19, 7])
    fx, fy = ds.split("train").read_snippets([4, 19, 7])
    assert np.array_equal(x, fx) and np.array_equal(y, fy)
    # the same snippets again: the leader leaves their bytes out, the receiver has them
    msg2 = task(2, [19, 4])
    buf = send(sc, fd, ds, 2, msg2)
    assert PacketView(buf, info).field("samples") == 0
    got = inbox.receive(buf, msg2)
    assert got.ok and np.array_equal(got.data.read_snippets([19, 4])[0], ds.split("train").read_snippets([19, 4])[0])
    assert inbox.stats["hits"] == 2
    assert sc.stats["snippets_sent"] == 3 and sc.stats["snippets_held"] == 2


def test_mirror_and_cache_stay_exact_under_eviction(ds):
    """A small cache, many tasks in a random order: every snippet the leader
    leaves out is there, and the leader sends again what was evicted."""
    info = DatasetInfo.from_dataset(ds)
    cap = 5 * 8 * info.sample_nbytes                     # five snippets of 8 samples
    sc, fd, inbox = Scatter(info, cap), feeder(ds), Inbox(info, cap)
    rng = np.random.default_rng(0)
    for t in range(200):
        ids = [int(i) for i in rng.choice(info.splits["train"]["snippets"], 3, replace=False)]
        msg = task(t, ids)
        got = inbox.receive(send(sc, fd, ds, 1, msg), msg)
        assert got.ok, (t, got.missing, got.bad)
        assert np.array_equal(got.data.read_snippets(ids)[1], ds.split("train").read_snippets(ids)[1])
        assert list(sc.mirror(1)._od) == list(inbox.index._od)
    assert 0 < sc.stats["snippets_held"] < sc.stats["snippets_sent"]
    assert inbox.index.used <= cap


def test_a_damaged_packet_is_named_and_both_sides_start_afresh(ds):
    info = DatasetInfo.from_dataset(ds)
    sc, fd, inbox = Scatter(info, 1 << 20), feeder(ds), Inbox(info, 1 << 20)
    msg = task(1, [1, 2])
    assert inbox.receive(send(sc, fd, ds, 1, msg), msg).ok
    msg = task(2, [3, 4])
    buf = send(sc, fd, ds, 1, msg)
    PacketView(buf, info).snippet(1)[0][0, 0, 0] ^= 0xFF     # snippet 4 damaged on the way
    got = inbox.receive(buf, msg)
    assert not got.ok and got.bad == [4] and got.reason == "failed the checksum on arrival" and got.gen == 0
    assert len(inbox.index) == 0 and inbox.gen is None
    # a packet the leader built before it heard: it counts on snippets 1, 2
    msg = task(3, [1, 2])
    got = inbox.receive(send(sc, fd, ds, 1, msg), msg)
    assert got.missing == [1, 2] and got.gen == 0
    assert sc.report(1, 0) and not sc.report(1, 0)           # one reset per generation
    msg = task(4, [1, 2])
    buf = send(sc, fd, ds, 1, msg)
    assert PacketView(buf, info).field("gen") == 1 and PacketView(buf, info).field("samples") == 16
    assert inbox.receive(buf, msg).ok


def test_a_packet_of_another_task_or_split_is_refused(ds):
    info = DatasetInfo.from_dataset(ds)
    sc, fd, inbox = Scatter(info, 0), feeder(ds), Inbox(info, 0)
    buf = send(sc, fd, ds, 1, task(1, [1, 2]))
    assert inbox.receive(buf, task(2, [1, 2])).reason == "it belongs to another task"
    assert inbox.receive(buf, task(1, [1, 3])).bad == [3]
    assert inbox.receive(buf[:-8], task(1, [1, 2])).bad == [1, 2]
    buf = send(sc, fd, ds, 1, task(5, [0, 2], split="test", kind="eval"))
    got = inbox.receive(buf, task(5, [0, 2], split="test", kind="eval"))
    assert got.ok and np.array_equal(got.data.read_snippets([0, 2])[0], ds.split("test").read_snippets([0, 2])[0])


def test_sent_records_list_what_each_rank_was_sent(ds):
    info = DatasetInfo.from_dataset(ds)
    sc, fd = Scatter(info, 1 << 20), feeder(ds)
    send(sc, fd, ds, 1, task(1, [3, 19]))
    send(sc, fd, ds, 2, task(2, [3]))
    send(sc, fd, ds, 1, task(3, [19, 5]))                 # 19 is held by rank 1: not sent again
    send(sc, fd, ds, 1, task(4, [2], split="test", kind="eval"))
    recs = sc.drain_sent(step=6)
    assert [(r["rank"], r["split"], r["snippets"], r["samples"]) for r in recs] == [
        (1, "test", [2], 8), (1, "train", [3, 19, 5], 8 + 8 + 8), (2, "train", [3], 8)]
    assert all(r["ev"] == SENT and r["step"] == 6 and not check_record(dict(r, host="h")) for r in recs)
    assert sc.drain_sent(step=7) == []
    sc.reset(1)                                           # it re-attached: everything is sent again
    send(sc, fd, ds, 1, task(5, [19]))
    assert sc.drain_sent(7)[0]["snippets"] == [19]


def test_the_feeder_reads_ahead_in_order_within_its_store(ds):
    info = DatasetInfo.from_dataset(ds)
    per = 8 * info.sample_nbytes
    fd = feeder(ds, capacity=6 * per)
    fd.want([("train", [4, 9]), ("train", [9, 1]), ("test", [0]), ("train", [2, 3, 5])])
    got = []
    while fd.read_ahead():
        got.append(list(fd._store)[-1])
    assert got == [("train", 4), ("train", 9), ("train", 1)]        # half the store: the rest waits
    out = fd.fetch("train", [9, 4, 7])
    assert fd.stats["read_ahead"] == 3 and fd.stats["read_now"] == 1  # 7 was not read ahead
    x, y = ds.split("train").read_raw([9])
    assert np.array_equal(out[9][0], x) and np.array_equal(out[9][1], y)
    for i in range(10, 20):
        fd.fetch("train", [i])
    assert fd._used <= 6 * per and ("train", 4) not in fd._store    # oldest out first


def test_the_masters_own_reads_go_through_the_feeder(ds):
    fd = feeder(ds)
    x, y = fd.split("train").read_snippets([3, 1])
    fx, fy = ds.split("train").read_snippets([3, 1])
    assert np.array_equal(x, fx) and np.array_equal(y, fy)


class Comm:
    def __init__(self, rank, size, others):
        self.rank, self.size, self.others = rank, size, others

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def allgather(self, mine):
        return [mine if r == self.rank else self.others.get(r, (None, f"host{r}")) for r in range(self.size)]


def test_auto_scatters_when_a_worker_cannot_open_the_file(ds, tmp_path):
    cfg = {"data": {"delivery": "auto", "path": str(ds.path)}, "meta": {}}
    assert resolve_delivery(Comm(0, 3, {}), cfg) == "read"
    assert cfg["meta"]["delivery_note"] == "data delivery: read (auto): every rank opens data.path"
    cfg = {"data": {"delivery": "auto", "path": str(ds.path)}, "meta": {}}
    assert resolve_delivery(Comm(0, 3, {2: ("no such file", "n2")}), cfg) == "scatter"
    assert cfg["data"]["delivery"] == "scatter"
    assert cfg["meta"]["delivery_note"] == "data delivery: scatter (auto): rank 2 on n2 cannot open data.path: no such file"
    # a worker that cannot open it finds out itself
    cfg = {"data": {"delivery": "auto", "path": str(tmp_path / "absent.h5")}, "meta": {}}
    assert resolve_delivery(Comm(1, 2, {}), cfg) == "scatter"
    assert "absent.h5: no such file" in cfg["meta"]["delivery_note"]
    # explicit choices stand; one rank alone reads
    for mode in ("read", "scatter"):
        assert resolve_delivery(Comm(0, 3, {}), {"data": {"delivery": mode, "path": "x"}, "meta": {}}) == mode
    assert resolve_delivery(Comm(0, 1, {}), {"data": {"delivery": "auto", "path": "x"}, "meta": {}}) == "read"


def test_scatter_needs_the_dataset_description():
    with pytest.raises(ConfigError, match="meta.dataset"):
        dataset_info({"meta": {}})
