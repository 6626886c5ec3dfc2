"""Copy states, the transitions allowed between them, and fingerprint
agreement (raven_hpc.protocol.scheduler.states)."""
from __future__ import annotations

import math

import pytest

from raven_hpc import ledger_schema
from raven_hpc.errors import ProtocolError
from raven_hpc.protocol.scheduler import (
    ACCEPTED, ASSIGNED, COPY_STATES, DUPLICATE, HELD, LATE, LOST, REJECTED, SKIPPED, TRANSITIONS, Scheduler,
    agree, check_move,
)

from .scenarios import fp, tasks


def test_transition_table_is_closed_and_final_states_are_terminal():
    assert set(TRANSITIONS) == set(COPY_STATES)
    for src, dsts in TRANSITIONS.items():
        assert dsts <= set(COPY_STATES)
    assert TRANSITIONS[ASSIGNED] == {HELD, ACCEPTED, DUPLICATE, LATE, REJECTED, LOST, SKIPPED}
    assert TRANSITIONS[HELD] == {ACCEPTED, DUPLICATE, REJECTED, LATE}
    # the one way out of a final state: the master's arbitration proves an
    # accepted result wrong before its step is applied
    assert TRANSITIONS[ACCEPTED] == {REJECTED}
    for final in (DUPLICATE, LATE, REJECTED, LOST, SKIPPED):
        assert TRANSITIONS[final] == set()



def test_final_copy_states_are_the_ledger_copy_states():
    """A copy record carries the state a copy ended in: the scheduler's
    states but the two a copy leaves, spelt as the ledger spells them."""
    final = tuple(s for s in COPY_STATES if s not in (ASSIGNED, HELD))
    assert final == ledger_schema.COPY_STATES
    assert all(TRANSITIONS[s] <= {REJECTED} for s in final)


def test_illegal_transition_is_refused():
    s = Scheduler([1])
    (t,) = tasks(1)
    s.submit([t])
    s.assign(0.0)
    s.complete(1, t.task_id, 1.0)
    with pytest.raises(ProtocolError, match="illegal transition"):
        check_move(t.task_id, t.copies[0], LOST)


def test_agree_tolerates_round_off_and_catches_corruption():
    assert agree(fp(), fp(noise=1e-6), 1e-3)[0]
    ok, worst = agree(fp(), fp(scale=-1.0), 1e-3)
    assert not ok and worst > 100
    assert not agree(fp(), fp(scale=1.01), 1e-3)[0]
    assert agree(fp(), fp(scale=1.0001), 1e-3)[0]
    nan = (math.nan,) + fp()[1:]
    assert agree(fp(), nan, 1e-3)[1] == math.inf
    loss_off = fp()[:5] + (5.1, 10.0)
    assert not agree(fp(), loss_off, 1e-3)[0]
