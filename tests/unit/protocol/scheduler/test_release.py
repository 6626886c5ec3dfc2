"""A collector's group released, without MPI: the scheduler side of a
leader removing a child collector (the housekeeper names which), of a
collector letting its children go (``Scheduler.release``), and of ranks
re-attaching to the leader above (recorded as readmitted, with the reason)."""
from __future__ import annotations

import os

from raven_hpc import ledger_schema
from raven_hpc.protocol.housekeeping import Housekeeper
from raven_hpc.protocol.scheduler import ACTIVE, DRAINED, EXCLUDED, LATE, LOST, MOVED, Scheduler

from .scenarios import fp, tasks


def write(path, text: str, mtime: int) -> None:
    """The drain file, with a modification time of its own (the watch re-reads on a change)."""
    path.write_text(text)
    os.utime(path, (mtime, mtime))


def keeper(s: Scheduler, tmp_path, patience=None) -> Housekeeper:
    return Housekeeper(s, backups=False, timeout_s=60.0, drain_file=tmp_path / "drain",
                       remove=lambda r, why: s.remove_worker(r, 0.0, why), patience=patience)


def test_an_excluded_collector_is_named_once_and_becomes_a_worker_of_one_slot(tmp_path):
    s = Scheduler([1, 4], redundancy=1, max_strikes=1)
    s.set_slots(1, 2)
    s.set_slots(4, 2)
    k = keeper(s, tmp_path, patience={1: 2, 4: 2})
    leaders = {1, 4}
    assert k.to_release(leaders) == []
    s.submit(tasks(4))
    s.assign(0.0)
    s.convict(1, 1.0, "its sum was wrong while every part of it was right")
    assert s.status(1) == EXCLUDED
    assert k.to_release(leaders) == [(1, EXCLUDED)]
    leaders.discard(1)
    assert k.to_release(leaders) == []
    assert 1 not in k.patience and s.workers[1].slots == 1 and s.workers[4].slots == 2
    ev = [e for e in s.drain_events() if e[ledger_schema.EV] == ledger_schema.EXCLUDE]
    assert ev and ev[0]["reason"].startswith("proven wrong by a trusted recomputation: its sum was wrong")


def test_a_drained_collector_is_released_once_it_holds_nothing(tmp_path):
    s = Scheduler([1, 4], prefetch=1)
    k = keeper(s, tmp_path)
    s.submit(tasks(4))
    out = s.assign(0.0)
    mine = [t.task_id for r, t in out if r == 4]
    assert mine
    s.drain(4, 0.5)
    assert s.status(4) == DRAINED
    assert k.to_release({1, 4}) == []            # its copy is still out: a drain is graceful
    for tid in mine:
        assert s.complete(4, tid, 1.0, compute_s=0.5).accept
    assert s.workers[4].sec_per_sample is not None
    assert k.to_release({1, 4}) == [(4, DRAINED)]
    assert s.workers[4].sec_per_sample is None and s.workers[4].overhead_s == 0.0   # it was its group's
    s.undrain(4, 2.0)                            # readmitted: a worker of its own
    assert s.status(4) == ACTIVE and s.workers[4].slots == 1


def test_a_released_child_leaves_for_good(tmp_path):
    s = Scheduler([2, 3, 9])
    s.submit(tasks(3))
    out = dict((r, t.task_id) for r, t in s.assign(0.0))
    requeued = s.release(2, 1.0, "re-attached to rank 0: its collector (rank 1) was excluded")
    assert requeued == [out[2]] and s.status(2) == MOVED and 2 not in s.live_workers()
    assert not s.is_lost(2)                      # a late message of it readmits nothing
    assert [c.state for c in s.task(out[2]).copies] == [LOST]
    assert s.complete(2, out[2], 2.0).state == LATE
    # membership moves of others leave it where it is
    k = keeper(s, tmp_path)
    write(tmp_path / "drain", "2\n", 1)
    k.tick(3.0)
    write(tmp_path / "drain", "", 2)
    k.tick(4.0)
    s.begin_step(5, 5.0)
    assert s.status(2) == MOVED and 2 not in s.live_workers()
    assert not [e for e in s.drain_events() if e[ledger_schema.EV] in ledger_schema.MEMBERSHIP_KINDS]


def test_a_rank_that_re_attaches_is_recorded_with_its_reason():
    s = Scheduler([1, 4])
    s.add_worker(2, 3.0, "re-attached: its collector (rank 1) was excluded")
    assert s.status(2) == ACTIVE and 2 in s.live_workers()
    ev = s.drain_events()
    assert [(e[ledger_schema.EV], e["rank"], e["reason"]) for e in ev] == [
        (ledger_schema.READMIT, 2, "re-attached: its collector (rank 1) was excluded")]
    assert not ledger_schema.check_record(dict(ev[0], host="h"))


def test_the_drain_file_is_read_again_when_a_rank_joins(tmp_path):
    s = Scheduler([1, 4])
    k = keeper(s, tmp_path)
    write(tmp_path / "drain", "5\n", 1)
    k.tick(0.0)
    s.add_worker(5, 1.0, "re-attached: its collector (rank 4) was drained")
    k.tick(1.0)
    assert s.status(5) == ACTIVE                 # the file did not change: not read again
    k.joined()
    k.tick(2.0)
    assert s.status(5) == DRAINED


def test_rejected_names_the_ranks_an_arbitration_proved_wrong():
    s = Scheduler([1, 4], redundancy=2, quorum=2)
    s.submit(tasks(1))
    s.assign(0.0)
    assert s.complete(1, 1, 1.0, fp=fp(0.5)).hold
    v = s.complete(4, 1, 1.0, fp=fp(1.0))
    assert v.arbitrate and s.rejected(1) == set()
    s.arbitrate(1, fp(1.0), 2.0)
    assert s.rejected(1) == {1}
