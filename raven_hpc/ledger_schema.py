"""The ledger record schema: RUN_DIR/ledger.jsonl, one JSON object a line,
and each gradient collector's RUN_DIR/ledger.collector-<rank>.jsonl.

The writers (the scheduler's ``_move`` / ``_event`` for copy and membership
records, the master's ``Recorder`` in train.py for run / step / rollback /
checkpoint / end) and the reader (``raven_hpc.report``) share these names, so
a record kind or field has one spelling. Every record carries ``ev`` (its
kind); :data:`FIELDS` lists, per kind, the fields the writers put in it and
what each means, :data:`OPTIONAL` those a record may lack, and
:func:`check_record` says what in a record does not fit. This module
imports nothing (no MPI, no engine), so any side can import it.

A collector's ledger holds its group's scheduler records (copies of
sub-tasks, membership), each with ``collector`` (its rank) and copies with
``parent_task`` (the task of its parent the sub-task belongs to); a
:data:`COLLECTOR` record opens each run's part of the file, and a
:data:`GROUP_SUM` record says which accepted sub-tasks went into a sum it
sent up: the report checks every sub-task was counted exactly once.

With ``data.delivery = "scatter"`` every leader (rank 0, each collector)
also writes :data:`SENT` records: which snippets' bytes it sent each rank
it leads, one record per rank and split per step, so a report can say how
much of the dataset each rank and host saw (``raven_hpc.report.exposure``).
"""
from __future__ import annotations

__all__ = [
    "LEDGER_NAME", "EV", "RUN", "COPY", "STEP", "STRIKE", "EXCLUDE", "READMIT", "EXONERATE", "DRAIN", "UNDRAIN",
    "LOST", "ARBITRATED", "AUDIT", "ROLLBACK", "CHECKPOINT", "END", "KNOWN_KINDS", "MEMBERSHIP_KINDS",
    "ACCEPTED", "DUPLICATE", "LATE", "REJECTED", "LOST_COPY", "SKIPPED", "COPY_STATES", "RETURNED_STATES",
    "GRAD", "EVAL", "SCHEDULER_KINDS", "FIELDS", "OPTIONAL", "check_record",
    "COLLECTOR", "GROUP_SUM", "COLLECTOR_LEDGER", "collector_ledger_name", "COLLECTOR_FIELDS",
    "SENT", "SUPERSEDED_NAME", "TRANSIT",
]

#: the ledger's file name inside a run directory
LEDGER_NAME = "ledger.jsonl"
#: where a resumed run moves the records written after its checkpoint (see recorder.cut_back)
SUPERSEDED_NAME = "ledger.superseded.jsonl"
#: the field every record carries: its kind
EV = "ev"
#: a collector's ledger file name (``str.format`` with ``rank``)
COLLECTOR_LEDGER = "ledger.collector-{rank}.jsonl"


def collector_ledger_name(rank: int) -> str:
    """The ledger file of the collector ``rank`` inside a run directory."""
    return COLLECTOR_LEDGER.format(rank=int(rank))

# -- record kinds (the value of ``ev``) -----------------------------------------
RUN = "run"
COPY = "copy"
STEP = "step"
STRIKE = "strike"
EXCLUDE = "exclude"
READMIT = "readmit"
EXONERATE = "exonerate"
DRAIN = "drain"
UNDRAIN = "undrain"
LOST = "lost"
ARBITRATED = "arbitrated"
AUDIT = "audit"
ROLLBACK = "rollback"
CHECKPOINT = "checkpoint"
END = "end"
COLLECTOR = "collector"     # (collector ledgers) a run's part of the file starts
GROUP_SUM = "group_sum"     # (collector ledgers) a sum of accepted sub-tasks went up
SENT = "sent"               # (data.delivery = "scatter") the snippets whose bytes a leader sent a rank

#: the record kinds the master writes
KNOWN_KINDS = (RUN, COPY, STEP, STRIKE, EXCLUDE, READMIT, DRAIN, UNDRAIN, LOST, EXONERATE,
               AUDIT, ROLLBACK, ARBITRATED, CHECKPOINT, END, SENT)
#: the kinds that change a rank's membership (strike only counts towards exclude)
MEMBERSHIP_KINDS = (EXCLUDE, READMIT, DRAIN, UNDRAIN, LOST)
#: the kinds the scheduler writes (the master's recorder adds ``host`` to each)
SCHEDULER_KINDS = (COPY, STRIKE, EXCLUDE, READMIT, EXONERATE, DRAIN, UNDRAIN, LOST, ARBITRATED, AUDIT)

# -- copy states (the value of a copy record's ``state``) ------------------------
ACCEPTED = "accepted"      # the result applied to its step
DUPLICATE = "duplicate"    # a result of a task already accepted
LATE = "late"              # a result that came after its step was applied
REJECTED = "rejected"      # a result that failed verification or arbitration
LOST_COPY = LOST           # a copy on a rank that left ("lost", the same word as the kind)
SKIPPED = "skipped"        # a copy never run (its task closed first)
#: every final state a copy record can carry
COPY_STATES = (ACCEPTED, DUPLICATE, LATE, REJECTED, LOST_COPY, SKIPPED)
#: the states of a copy whose result came back to the master
RETURNED_STATES = (ACCEPTED, DUPLICATE, LATE, REJECTED)

#: how the ``reason`` of a copy rejected because its snippets arrived damaged
#: starts: the bytes were corrupted between the leader and the rank, which
#: computed nothing and gets no strike (the report counts these apart from
#: wrong results)
TRANSIT = "data corrupted in transit"

# -- task kinds (the value of a copy record's ``kind``) --------------------------
GRAD = "grad"   # a gradient task: counts towards exactly-once and the epoch coverage
EVAL = "eval"   # an evaluation task

# -- fields per kind -------------------------------------------------------------
#: the membership / scheduler event fields every ``_event`` record carries
_EVENT = {
    EV: "the record kind",
    "step": "the scheduler's current step",
    "rank": "the rank the event is about (0: the master itself)",
    "reason": "why, in words",
    "host": "the host name of ``rank`` (added by the recorder when it writes the record)",
}

#: kind -> {field: meaning}; the fields each writer puts in a record of that kind
FIELDS: dict[str, dict[str, str]] = {
    RUN: {
        EV: "the record kind",
        "unix_time": "wall-clock start of this run (seconds since the epoch)",
        "start_step": "the step training starts (or resumes) at",
        "resumed": "true when start_step > 0 (a resumed run)",
        "ranks": "the number of MPI ranks",
        "hosts": "{rank (string): host name}",
        "poc": "the config's poc section (the protocol settings)",
        "faults": "the configured fault-injection rules",
        "train_snippets": "the plan: snippets of the training split",
        "steps_per_epoch": "the plan: steps per epoch",
        "epochs": "the plan: epochs",
        "max_steps": "the plan: the step limit",
        "collectors": "the ranks that lead groups (gradient collectors; empty: a flat star)",
        "data": "how workers get the data: {delivery: read | scatter, splits: {name: {samples, snippets, "
                "snippet_size}}} (the splits the run uses)",
    },
    COPY: {
        EV: "the record kind",
        "step": "the step the task belongs to",
        "task": "the task id (int or str)",
        "kind": "the task kind: GRAD | EVAL",
        "snippets": "the snippet ids the task covers",
        "samples": "the samples the task covers",
        "rank": "the rank that ran this copy",
        "assigned": "the scheduler time the copy was assigned",
        "finished": "the scheduler time the copy reached its final state",
        "compute_s": "the compute seconds the worker reports (or null)",
        "latency_s": "finished - assigned",
        "state": "one of COPY_STATES",
        "backup": "true for a backup copy of a slow task",
        "probe": "true for a probe copy",
        "audit": "present and true for an audit copy only",
        "verified": "whether the result was verified against another copy",
        "agreed": "whether the result agreed with the accepted one (or null)",
        "credited": "whether the copy counts towards the rank's credit",
        "reason": "why the copy ended in this state, in words",
        "host": "the host name of ``rank`` (added by the recorder when it writes the record)",
    },
    STEP: {
        EV: "the record kind",
        "step": "the applied step",
        "epoch": "its epoch",
        "step_in_epoch": "its index within the epoch",
        "tasks": "the accepted copies applied",
        "snippets": "the snippets applied",
        "samples": "the samples applied",
        "t": "seconds since the run started",
    },
    STRIKE: {**_EVENT, "strikes": "the rank's strike count after this one"},
    EXCLUDE: dict(_EVENT),
    READMIT: dict(_EVENT),
    EXONERATE: {**_EVENT, "strikes": "the rank's strike count left", "cleared": "the strikes cleared"},
    DRAIN: dict(_EVENT),
    UNDRAIN: dict(_EVENT),
    LOST: dict(_EVENT),
    ARBITRATED: {**_EVENT, "rank": "0 (the master arbitrates)"},
    AUDIT: {**_EVENT, "rank": "the auditing rank", "task": "the audited task id",
            "ok": "whether the accepted result agrees with the recomputation",
            "ranks": "the ranks whose accepted result was audited"},
    ROLLBACK: {
        EV: "the record kind",
        "step": "the step training goes back from",
        "to_step": "the step training goes back to; records of steps >= to_step before this one are void",
        "guilty": "the ranks blamed (sorted)",
        "reason": "why, in words",
        "checkpoint": "the checkpoint restored (path) or null",
        "t": "seconds since the run started",
    },
    CHECKPOINT: {EV: "the record kind", "step": "the step saved", "path": "the checkpoint file"},
    END: {EV: "the record kind", "step": "the last step", "t": "seconds since the run started",
          "status": "how the run ended"},
    SENT: {
        EV: "the record kind",
        "step": "the step (or the evaluation after it) during which they were sent",
        "rank": "the rank they were sent to",
        "split": "the split the snippets belong to",
        "snippets": "the snippet ids whose bytes were sent (a snippet the rank still held was not sent again)",
        "samples": "the samples in those snippets",
        "host": "the host name of ``rank`` (added when the record is written)",
        "collector": "(collector ledgers) the collector that sent them",
    },
}

#: the fields a collector adds to its scheduler records, and its own kinds
COLLECTOR_FIELDS: dict[str, dict[str, str]] = {
    "added": {
        "collector": "the collector's rank (every record of its ledger)",
        "parent_task": "(copy records) the parent's task the sub-task belongs to",
    },
    COLLECTOR: {
        EV: "the record kind", "collector": "its rank", "parent": "its parent's rank",
        "children": "the ranks it leads", "hosts": "{rank (string): host name} of its group",
        "unix_time": "wall-clock start (seconds since the epoch)",
    },
    GROUP_SUM: {
        EV: "the record kind", "collector": "its rank", "step": "the step", "task": "the parent's task id",
        "kind": "GRAD | EVAL", "subs": "the sub-task ids whose accepted results were summed",
        "samples": "the samples summed", "t": "seconds since the collector started",
    },
}

#: kind -> the fields of :data:`FIELDS` a record of that kind may lack: the
#: plan of a run record the master did not pass, ``audit`` of a copy that is
#: no audit, ``host`` of a scheduler record the recorder has not written yet
OPTIONAL: dict[str, frozenset] = {
    RUN: frozenset({"train_snippets", "steps_per_epoch", "epochs", "max_steps", "collectors", "data"}),
    COPY: frozenset({"audit", "host"}),
    SENT: frozenset({"host", "collector"}),
    **{kind: frozenset({"host"}) for kind in SCHEDULER_KINDS if kind != COPY},
}


def check_record(rec) -> list[str]:
    """What is wrong with ``rec`` as a ledger record; an empty list when
    nothing is.  A record must be a dict whose ``ev`` is a kind of
    :data:`FIELDS`, with every field of that kind but the :data:`OPTIONAL`
    ones and no other; a copy record's ``state`` must be one of
    :data:`COPY_STATES` and its ``kind`` GRAD or EVAL."""
    if not isinstance(rec, dict):
        return [f"a record is a JSON object, not {type(rec).__name__}"]
    kind = rec.get(EV)
    fields = FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        return [f"unknown record kind {kind!r}"]
    optional = OPTIONAL.get(kind, frozenset())
    problems = [f"{kind} record without {f!r}" for f in fields if f not in rec and f not in optional]
    problems += [f"{kind} record with unknown field {f!r}" for f in rec if f not in fields]
    if kind == COPY:
        if "state" in rec and rec["state"] not in COPY_STATES:
            problems.append(f"copy record with state {rec['state']!r}, not one of {COPY_STATES}")
        if "kind" in rec and rec["kind"] not in (GRAD, EVAL):
            problems.append(f"copy record of task kind {rec['kind']!r}, not {GRAD!r} or {EVAL!r}")
    return problems
