"""The ledger record schema's check (raven_hpc.ledger_schema.check_record)."""
from __future__ import annotations

from raven_hpc.ledger_schema import (COPY, COPY_STATES, EV, FIELDS, GRAD, OPTIONAL, STRIKE, check_record)


def _full(kind: str) -> dict:
    rec = {f: 0 for f in FIELDS[kind]}
    rec[EV] = kind
    return rec


def test_a_record_with_every_field_of_its_kind_fits():
    for kind in FIELDS:
        rec = _full(kind)
        if kind == COPY:
            rec.update(state=COPY_STATES[0], kind=GRAD)
        assert check_record(rec) == [], kind
        required = {f: v for f, v in rec.items() if f not in OPTIONAL.get(kind, ())}
        assert check_record(required) == [], kind


def test_what_does_not_fit_is_named():
    assert check_record([1]) == ["a record is a JSON object, not list"]
    assert check_record({"step": 1}) == ["unknown record kind None"]
    assert check_record({EV: "nonsense"}) == ["unknown record kind 'nonsense'"]
    rec = _full(STRIKE)
    del rec["strikes"]
    rec["strickes"] = 1
    assert check_record(rec) == ["strike record without 'strikes'", "strike record with unknown field 'strickes'"]
    rec = {**_full(COPY), "state": "held", "kind": "train"}
    assert check_record(rec) == [f"copy record with state 'held', not one of {COPY_STATES}",
                                 "copy record of task kind 'train', not 'grad' or 'eval'"]
