"""Reports on a run directory: the metrics history, the Proof-of-Calculation
ledger, and the operator's drain file.

The modules: :mod:`.history` (metrics.jsonl), :mod:`.ledger` (the streaming
reader, the summary, :func:`run_report`), :mod:`.summary` (the one
pass over the records), :mod:`.integrity` (the exactly-once, step, epoch and
rollback checks and the verdict), :mod:`.collectors` (the gradient
collectors' ledgers: their workers' rows and the group-sum check),
:mod:`.common` (constants, a rank's row and whether it is a suspect, words) and
:mod:`.drain` (the drain file). The record kinds and fields live in
:mod:`raven_hpc.ledger_schema`.  ``report --plots``: :mod:`.plotdata` (what
the figures draw, as arrays, read in the report's own pass over the ledger),
:mod:`.plots` (the figures, matplotlib's Agg canvas) and :mod:`.html`
(``report.html``).

Pure in the CLI's sense: functions here read files and return dicts (or
write the one file the operator owns, the drain file); only
:mod:`raven_hpc.cli` prints.

The ledger
----------
``RUN_DIR/ledger.jsonl`` is written by the master: one JSON object per line,
``ev`` one of

``run``
    a start (a resumed run appends a new one): ``start_step``, ``resumed``,
    ``ranks``, ``hosts``, ``poc``, ``faults`` and the plan: ``train_snippets``
    (snippets of the training split), ``steps_per_epoch``, ``epochs``,
    ``max_steps``.
``copy``
    one copy of a task that reached a final state: ``step``, ``task``,
    ``kind`` (grad | eval), ``snippets`` (ids), ``rank``, ``state``
    (accepted | duplicate | late | rejected | lost | skipped), times, flags.
``step``
    one applied step: ``step``, ``epoch``, ``step_in_epoch`` (steps of that
    epoch applied, this one included), ``tasks`` and ``snippets`` (accepted
    grad copies of the step and the snippets in them), ``samples``, ``t``.
    Written after every accepted copy of its step (late and duplicate copies
    of the step may follow it).
``strike``, ``exclude``, ``readmit``, ``drain``, ``undrain``, ``lost``
    membership events of a rank.
``exonerate``
    strikes of a rank cleared because an audit proved the votes that gave
    them wrong (``strikes``: what the rank has left).
``audit``
    the master recomputed an accepted grad result: ``task``, ``ok``, ``ranks``
    (whose copies carried the audited value).
``rollback``
    training went back from step ``step`` to ``to_step`` (K), e.g. after a
    failed audit: ``guilty`` ranks, ``reason``, ``checkpoint``.  Every record
    of steps >= K written before it is void (those steps are redone after it,
    as after a resume at K), except the membership, strike, exonerate and
    audit records, which stay facts.  K equal to ``step`` redoes the current
    step.
``arbitrated``
    a task the master decided or computed itself.
``checkpoint``
    a checkpoint written at ``step`` (``path``).
``end``
    the run stopped: ``step`` (steps applied), ``status`` (finished |
    interrupted | failed).

Step numbers: a ``copy``, ``step``, ``audit`` or ``rollback`` record's
``step`` is the index of the step (0 is the first update); a ``run``
record's ``start_step`` and an ``end`` record's ``step`` count the steps
applied, which is the index of the next step.

Unknown ``ev`` values are counted and otherwise ignored (forward
compatibility); lines that are not JSON are skipped with a warning, and a
truncated last line -- a run killed while writing it -- with a note.
``ledger.superseded.jsonl`` (the tail a resume cut off) is not read.

With gradient collectors, each one's ``ledger.collector-<rank>.jsonl`` next
to ``ledger.jsonl`` is read after it (:mod:`.collectors`): the rows of the
ranks under a collector come from its records.

:func:`summarize_ledger` streams the file (memory grows with the distinct
tasks and snippets of the open run segment and epochs, not with lines) and
returns :func:`ledger_summary`'s dict:

``runs``
    one entry per run record (start step, ranks, hosts, plan, how it ended).
``totals``
    copies by state, backups, verified / disagreed / credited copies, strikes
    (and strikes cleared), and the steps and grad tasks applied (with
    collectors: the sums of the table's rows, so every level's copies).
``ranks``
    one row per rank: copies assigned (every copy), returned (accepted +
    duplicate + late + rejected), accepted, the snippets in its returned and
    in its accepted grad copies (a copy of a chunk holds several), credited
    (fastest three),
    duplicates, late, rejected, lost, skipped, backups issued to it, median
    latency (s), median compute time per sample (ms) and its ratio to the
    median over ranks (``relative_compute``; > 1 is slower), strikes (those
    not cleared by audits; ``strikes_cleared`` apart), and the status from
    its last membership event (active | excluded | drained | lost);
    ``role`` (master | collector | worker), ``leader`` (the rank whose
    ledger holds its copies: 0 or its collector) and ``children`` (a
    collector's workers).  A collector's ``relative_compute`` is None (its
    compute time is its group's) and it is left out of the median.
``suspects``
    ranks with strikes, an exclusion, a loss, or a relative compute time
    >= 2, each with the reasons in words (naming the collector that struck,
    excluded or lost a worker of its group) and its ``leader``.
``collectors``
    one entry per collector's ledger read: ``rank``, ``path``, ``parent``,
    ``children``, ``runs`` (of rank 0's ledger it has a part of), ``copies``
    by state, ``sums``, ``checked_sums``, ``unchecked_sums``, ``problems``.
``audits``, ``rollbacks``, ``arbitrations``, ``checkpoints``
    counts, the failed audits (task, the step it was applied at, the ranks
    found wrong) and every rollback (from step, to step, guilty ranks, reason).
``integrity``
    the check below.

The integrity check
-------------------
A resume at step K (a ``run`` record) and a ``rollback`` to K both start a
new *segment*: records of the earlier segments at steps >= K are void and the
steps are checked as redone.  Over what is left:

* steps: every step from the first run's start to the last applied one has
  its ``step`` record, in order (a ledger without step records, written
  before they existed, has its steps derived from the accepted grad copies,
  and the per-step and per-epoch checks are left out: ``notes`` says so);
* exactly once: every grad task of a closed step has exactly one accepted
  copy (and at most three credited ones); a step record's ``tasks`` and
  ``snippets`` match its accepted copies; a task accepted twice is a
  violation even in an open step;
* snippets: per epoch (from the step records), every snippet id in
  ``range(train_snippets)`` is in exactly one accepted grad copy of a
  completed epoch, and in at most one of the epoch in progress;
* audits and rollbacks: a rollback goes back (``to_step`` <= ``step``) and
  names as guilty only ranks a failed audit proved wrong or that were
  excluded when it came; the result a failed audit found wrong is voided by
  a later rollback or resume to its step or earlier;
* the ledger reads: not empty, not mostly garbage, no damaged line in the
  middle, the last line whole, and the last run ends with an ``end`` record
  whose step follows the last step record;
* collectors: every sum a collector sent up that its parent has a copy of
  counts sub-tasks it accepted exactly once, of that task, in no other sum,
  with the samples of those sub-tasks and of the parent's task; every
  result the parent accepted has its sum; no damaged line in the middle of
  a collector's ledger (:mod:`.collectors` says which sums and why).

``integrity["status"]`` is ``"OK"``, ``"INCOMPLETE"`` (the ledger stops
before the run's end: no end record, an interrupted or failed end, a torn
last line, a failed audit the stopped run has not rolled back yet; and in
:func:`run_report`, ``summary.json`` or ``checkpoint.h5`` at a later step
than the ledger) or ``"FAILED"`` (a violation above, a gap in the middle --
records of later steps exist --, step records out of order, an empty or
garbled ledger).  ``first_missing_step`` is the first step whose records are
missing (None when none is), ``problems`` says what is wrong in short
sentences (the failures first; ``failures`` counts them), ``notes`` what the
check could not cover; ``ok`` is True only for OK.  Also: ``steps``,
``first_step``, ``last_step`` (the steps with their records), ``epochs``
(complete, counted_once, in_progress), ``audits``, ``failed_audits``,
``rollbacks``, ``limited`` (no step records), ``stopped`` (the sentence on a
run without end record), and the exactly-once counts ``checked_tasks``,
``checked_steps``, ``violation_count``, ``violations``, ``open_tasks`` (of
the step in flight when a run stopped) and ``redone_tasks`` (voided by a
resume or rollback), ``collectors`` (None without collectors' ledgers, else
``ledgers``, ``sums``, ``checked_sums``, ``unchecked_sums``, ``problems``);
:func:`run_report` adds ``summary_steps`` and ``checkpoint_step``.

The drain file
--------------
``[poc] drain_file`` (default ``RUN_DIR/drain``) lists ranks, one per line;
the running master polls it and takes those ranks out of the schedule,
and readmits a rank whose line is removed.  :func:`update_drain` edits it
atomically (temporary file + ``os.replace``).
"""
from __future__ import annotations

from ..ledger_schema import COPY_STATES, KNOWN_KINDS, LEDGER_NAME, RETURNED_STATES
from .common import SLOW_FACTOR, STATUSES
from ..drain import drain_path, parse_drain, parse_ranks, read_drain, update_drain
from .history import read_history
from .ledger import check_against, iter_ledger, ledger_summary, read_ledger, run_report, summarize_ledger

__all__ = [
    "LEDGER_NAME",
    "COPY_STATES",
    "RETURNED_STATES",
    "SLOW_FACTOR",
    "KNOWN_KINDS",
    "STATUSES",
    "read_history",
    "iter_ledger",
    "read_ledger",
    "ledger_summary",
    "summarize_ledger",
    "check_against",
    "run_report",
    "drain_path",
    "parse_drain",
    "read_drain",
    "parse_ranks",
    "update_drain",
]
