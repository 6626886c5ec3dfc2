"""Fault injection for Proof-of-Calculation tests and demos.

A run's ``[faults]`` table lists rules; each makes one or more worker ranks
misbehave on purpose -- slow, stalled, crashed, or returning wrong numbers --
so the master's deadlines, redundancy, verification and ledger can be shown
to cope.  The worker loop owns a :class:`FaultInjector` and calls it around
every *gradient* task (evaluation tasks are never faulted)::

    injector.before(step, task)                      # sleep / hang / crash
    ... compute the gradient into grad, measure compute_s ...
        (or: fields = injector.emulate(step, task, snippets, counts, grad))
    compute_s += injector.after(step, task, compute_s)   # slow
    injector.corrupt(step, task, grad)               # scale / bitflip / nan

With ``data.delivery = "scatter"`` the rank also calls
``injector.transit(step, task, payload)`` on the snippet bytes that come
with a gradient task, before checking them (``transit``).

A rule naming a gradient collector (a rank that leads a group, see
:mod:`raven_hpc.protocol.collector`) applies to what that rank itself does:
``before`` when a gradient task arrives from its parent (``sleep``, ``hang``,
``crash``), and ``corrupt`` on the sum of its group it sends up (``scale``,
``bitflip``, ``nan``), with the parent's step and task id, and
``transit`` on the snippet bytes it receives from its parent.  ``slow`` and
``emulate`` describe computing and do not apply to a collector's sum.

This module is pure Python and numpy: no MPI, no files.  Sleeping, killing
and exiting go through callables given to the injector, so tests run
instantly.

Configuration
-------------
::

    [faults]
    rules = [
      {rank = 2, mode = "slow", factor = 4.0},
      {rank = [1, 3], mode = "scale", factor = -1.0, from_step = 10, until_step = 50, probability = 0.5},
      {rank = 1, mode = "bitflip", count = 4},
      {rank = 2, mode = "hang", from_step = 5, seconds = 30.0},
    ]

or on the command line, ``--set 'faults.rules=[{rank = 2, mode = "slow", factor = 4.0}]'``.

Keys every rule takes:

=================  =========  ==============================================
key                default    meaning
=================  =========  ==============================================
``rank``           required   worker rank (int >= 1) or a list of them; rank
                              0 is the master and cannot be faulted
``mode``           required   one of the modes below
``from_step``      0          first step (the parameter version the task is
                              computed on) the rule applies to
``until_step``     0          first step it no longer applies to
                              (exclusive); 0 = forever
``probability``    1.0        chance that the rule fires on a task, in [0, 1]
``seed``           0          seed of the rule's random draws (int >= 0)
=================  =========  ==============================================

Modes and their own keys:

===========  ====================================  ===========================
mode         keys (default)                        effect
===========  ====================================  ===========================
``slow``     ``factor`` (required, >= 1)           the task takes ``factor``
                                                   times as long: after
                                                   computing, sleep
                                                   ``(factor - 1) x`` the
                                                   measured compute time; the
                                                   reported compute time
                                                   includes the delay (a
                                                   slower machine)
``sleep``    ``seconds`` (required, > 0),          sleep before computing
             ``jitter`` (false)                    (network / OS hiccups):
                                                   exactly ``seconds``, or
                                                   uniform in [0, ``seconds``]
                                                   with ``jitter = true``
``hang``     ``seconds`` (1e9 = forever)           the rank stops making
                                                   progress once, at the first
                                                   matching task: one long
                                                   sleep, no MPI calls
``crash``    ``how`` ("kill"), ``exit_code`` (1)   ``"kill"``: SIGKILL itself
                                                   (a node failure);
                                                   ``"exit"``:
                                                   ``os._exit(exit_code)``;
                                                   ``"raise"``: raise
                                                   ``RuntimeError("injected
                                                   crash")``, an ordinary
                                                   error reported to the
                                                   master
``scale``    ``factor`` (required, finite, != 1)   multiply the gradient by
                                                   ``factor``
``bitflip``  ``count`` (1), ``bit`` (30)           flip bit ``bit`` (0..31 of
                                                   the float32 as uint32; 30 =
                                                   the top exponent bit, which
                                                   makes a value huge or tiny,
                                                   or inf / NaN when
                                                   1 <= |x| < 2) of ``count``
                                                   random elements
``nan``      ``count`` (1)                         set ``count`` random
                                                   elements to NaN
``transit``  ``count`` (1)                         ``data.delivery =
                                                   "scatter"``: flip (XOR
                                                   0xFF) ``count`` random
                                                   bytes of the snippets
                                                   (features and labels) the
                                                   rank is sent with a task,
                                                   on arrival, before their
                                                   checksums are checked (a
                                                   transfer that damaged
                                                   them); no effect on a task
                                                   whose snippets the rank
                                                   already held
``emulate``  ``seconds`` (0.0),                    do not run the model: sleep
             ``seconds_per_sample`` (0.0)          ``seconds +
                                                   seconds_per_sample x
                                                   samples`` and return a
                                                   synthetic gradient (below);
                                                   the reported compute time
                                                   is that emulated time
===========  ====================================  ===========================

``emulate`` is for benchmarks of the protocol at scale: a rank that only
sleeps costs no CPU, so many ranks fit on a few cores while the master,
the collectors and the messages do their real work.  The synthetic result
is finite, cheap to produce and additive over snippets: with ``p`` a fixed
pattern of the gradient's size (entries ``((i * 40503) mod 2001 - 1000) x
1e-6``) and ``w(step, s) = 1 + ((step x 1000003 + s x 7919) mod 97) / 970``,
the gradient is ``p x sum_s count_s x w(step, s)`` over the task's snippets
``s`` (``count_s`` samples each), the loss sum ``sum_s count_s x ln 10 x
w(step, s)`` and the correct count ``sum_s count_s // 10``.  Any partition
of a step into tasks, chunks or a collector's sub-tasks therefore sums to
the same values, so copies computed anywhere agree.  The master's own
computations (audits, arbitration) run the real model and disagree with
emulated results: benchmark with ``poc.audit = 0``.  The ``slow`` and
corruption modes still apply to an emulated result.

Randomness
----------
Every decision about a rule on a task comes from its own generator,
``np.random.default_rng([seed, rank, step, task, rule_index])`` (``rule_index``
counts from 0 in the configured list), so a test can predict it:

1. the first draw ``u = rng.random()`` decides whether the rule fires
   (``u < probability``; drawn even when ``probability = 1``);
2. ``sleep`` with ``jitter`` then sleeps ``seconds * rng.random()``;
3. ``bitflip`` and ``nan`` pick their elements (flat indices) with
   ``rng.choice(grad.size, min(count, grad.size), replace=False)``, and
   ``transit`` its bytes with ``rng.choice(payload.size, min(count,
   payload.size), replace=False)``.

Tasks with a negative step or task id (the kernels' warm-up) are never
faulted.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import ConfigError

__all__ = [
    "MODES",
    "COMMON_KEYS",
    "FaultEvent",
    "FaultInjector",
    "validate_faults",
    "describe_rule",
    "emulated_pattern",
    "emulated_weight",
]

_REQUIRED = object()
HANG_FOREVER_S = 1e9

# key -> default, for every mode
COMMON_KEYS: dict[str, Any] = {
    "rank": _REQUIRED,
    "mode": _REQUIRED,
    "from_step": 0,
    "until_step": 0,
    "probability": 1.0,
    "seed": 0,
}

# mode -> {key: default}; the checks live in _check_mode_key
MODES: dict[str, dict[str, Any]] = {
    "slow": {"factor": _REQUIRED},
    "sleep": {"seconds": _REQUIRED, "jitter": False},
    "hang": {"seconds": HANG_FOREVER_S},
    "crash": {"how": "kill", "exit_code": 1},
    "scale": {"factor": _REQUIRED},
    "bitflip": {"count": 1, "bit": 30},
    "nan": {"count": 1},
    "emulate": {"seconds": 0.0, "seconds_per_sample": 0.0},
    "transit": {"count": 1},
}

CRASH_HOWS = ("kill", "exit", "raise")

# Which injector hook applies each mode.
_BEFORE = ("sleep", "hang", "crash")
_EMULATE = ("emulate",)
_AFTER = ("slow",)
_CORRUPT = ("scale", "bitflip", "nan")
_TRANSIT = ("transit",)


# --------------------------------------------------------------------------- validation

class _RuleError(Exception):
    """A problem with one rule; turned into a ConfigError naming the rule."""


def _as_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise _RuleError(f"{key} must be an integer, got {value!r}")
    return int(value)


def _as_float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise _RuleError(f"{key} must be a number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise _RuleError(f"{key} must be a finite number, got {value!r}")
    return out


def _as_bool(key: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise _RuleError(f"{key} must be true or false, got {value!r}")
    return bool(value)


def _check_ranks(value: Any, num_ranks: int | None) -> list[int]:
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise _RuleError("rank is an empty list; give a worker rank (>= 1) or a list of them")
    ranks = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
            raise _RuleError(f"rank must be an integer >= 1 or a list of them, got {value!r}")
        r = int(item)
        if r == 0:
            raise _RuleError("rank 0 is the master and cannot be faulted; name worker ranks (>= 1)")
        if r < 0:
            raise _RuleError(f"rank {r} is negative; name worker ranks (>= 1)")
        if num_ranks is not None and r >= num_ranks:
            raise _RuleError(f"rank {r} does not exist in a run of {num_ranks} ranks "
                             f"(workers are 1..{num_ranks - 1})")
        ranks.append(r)
    return sorted(set(ranks))


def _check_mode_key(mode: str, key: str, value: Any) -> Any:
    if mode == "slow":                                   # factor
        v = _as_float(key, value)
        if v < 1.0:
            raise _RuleError(f"factor = {v} must be >= 1 (the task takes factor times as long)")
        return v
    if mode == "scale":                                  # factor
        v = _as_float(key, value)
        if v == 1.0:
            raise _RuleError("factor = 1.0 leaves the gradient unchanged; use another factor "
                             "(e.g. -1.0 or 10.0), or mode \"nan\" for non-finite values")
        return v
    if mode == "emulate":                                # seconds, seconds_per_sample
        v = _as_float(key, value)
        if v < 0.0:
            raise _RuleError(f"{key} = {v} must be >= 0")
        return v
    if key == "seconds":                                 # sleep, hang
        v = _as_float(key, value)
        if v <= 0.0:
            raise _RuleError(f"seconds = {v} must be > 0")
        return v
    if key == "jitter":
        return _as_bool(key, value)
    if key == "how":
        if not isinstance(value, str) or value not in CRASH_HOWS:
            raise _RuleError(f"how = {value!r} is not one of {', '.join(repr(h) for h in CRASH_HOWS)}")
        return value
    if key == "exit_code":
        v = _as_int(key, value)
        if not 0 <= v <= 255:
            raise _RuleError(f"exit_code = {v} must be in 0..255")
        return v
    if key == "count":
        v = _as_int(key, value)
        if v < 1:
            raise _RuleError(f"count = {v} must be >= 1")
        return v
    if key == "bit":
        v = _as_int(key, value)
        if not 0 <= v <= 31:
            raise _RuleError(f"bit = {v} must be in 0..31 (bit 31 is the sign, 23..30 the exponent)")
        return v
    raise AssertionError(f"no check for {mode}.{key}")  # pragma: no cover - MODES and checks agree


def _normalise_rule(rule: Any, num_ranks: int | None) -> dict:
    if not isinstance(rule, dict):
        raise _RuleError(f"must be a table like {{rank = 1, mode = \"slow\", factor = 2.0}}, got {rule!r}")
    if "mode" not in rule:
        raise _RuleError(f"mode is required; valid modes: {', '.join(MODES)}")
    mode = rule["mode"]
    if not isinstance(mode, str) or mode not in MODES:
        raise _RuleError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    valid = {**COMMON_KEYS, **MODES[mode]}
    unknown = [k for k in rule if k not in valid]
    if unknown:
        raise _RuleError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(str, unknown))}; "
                         f"valid keys for mode \"{mode}\": {', '.join(valid)}")
    missing = [k for k, d in valid.items() if d is _REQUIRED and k not in rule]
    if missing:
        hint = {"rank": "rank is required (a worker rank >= 1, or a list of them)"}
        raise _RuleError(hint.get(missing[0], f"{missing[0]} is required for mode \"{mode}\""))

    out: dict = {"rank": _check_ranks(rule["rank"], num_ranks), "mode": mode}
    out["from_step"] = _as_int("from_step", rule.get("from_step", 0))
    out["until_step"] = _as_int("until_step", rule.get("until_step", 0))
    if out["from_step"] < 0:
        raise _RuleError(f"from_step = {out['from_step']} must be >= 0")
    if out["until_step"] < 0:
        raise _RuleError(f"until_step = {out['until_step']} must be >= 0 (0 = forever)")
    if out["until_step"] and out["until_step"] <= out["from_step"]:
        raise _RuleError(f"until_step = {out['until_step']} must be > from_step = {out['from_step']} "
                         "(it is exclusive; 0 = forever)")
    out["probability"] = _as_float("probability", rule.get("probability", 1.0))
    if not 0.0 <= out["probability"] <= 1.0:
        raise _RuleError(f"probability = {out['probability']} must be in [0, 1]")
    out["seed"] = _as_int("seed", rule.get("seed", 0))
    if out["seed"] < 0:
        raise _RuleError(f"seed = {out['seed']} must be >= 0")
    for key, default in MODES[mode].items():
        out[key] = _check_mode_key(mode, key, rule[key]) if key in rule else default
    if mode == "crash" and out["how"] != "exit" and out["exit_code"] != MODES["crash"]["exit_code"]:
        # (the default is tolerated, so a normalised rule validates again)
        raise _RuleError(f"exit_code = {out['exit_code']} is only used with how = \"exit\" "
                         f"(how = \"{out['how']}\")")
    return out


def validate_faults(rules: Any, *, num_ranks: int | None = None) -> list[dict]:
    """Check the ``[faults] rules`` list and return it normalised.

    ``rules`` is a list of tables (dicts, as read from TOML or a ``--set``
    override) or the same list as JSON text.  Each returned rule is a new
    dict with every key of its mode present (defaults filled) and ``rank``
    a sorted list of distinct ranks; validating the result again returns it
    unchanged.  With ``num_ranks`` (the run's MPI size) ranks beyond it are
    errors too.

    Raises :class:`~raven_hpc.errors.ConfigError` naming the rule, e.g.
    ``[faults] rules[2] (mode "slow"): factor = 0.5 must be >= 1 ...``.
    """
    if isinstance(rules, str):
        try:
            rules = json.loads(rules)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"[faults] rules is not valid JSON ({exc}); write a list of tables, e.g. "
                              "rules = [{rank = 2, mode = \"slow\", factor = 4.0}]") from None
    if not isinstance(rules, (list, tuple)):
        raise ConfigError(f"[faults] rules must be a list of tables, e.g. "
                          f"rules = [{{rank = 2, mode = \"slow\", factor = 4.0}}], got {rules!r}")
    out = []
    for i, rule in enumerate(rules):
        try:
            out.append(_normalise_rule(rule, num_ranks))
        except _RuleError as exc:
            mode = rule.get("mode") if isinstance(rule, dict) else None
            where = f"[faults] rules[{i}]" + (f" (mode {json.dumps(mode)})" if isinstance(mode, str) else "")
            raise ConfigError(f"{where}: {exc}") from None
    return out


def _fmt(x: float) -> str:
    return repr(float(x))


def describe_rule(rule: dict, rank: int | None = None) -> str:
    """One human-readable line for a normalised rule, e.g.
    ``"rank 2: slow x4.0 from step 0"`` (``rank`` picks one of its ranks)."""
    ranks = [rank] if rank is not None else rule["rank"]
    who = f"rank{'s' if len(ranks) > 1 else ''} {', '.join(str(r) for r in ranks)}"
    mode = rule["mode"]
    if mode == "slow":
        what = f"slow x{_fmt(rule['factor'])}"
    elif mode == "sleep":
        what = (f"sleep up to {_fmt(rule['seconds'])} s (jitter)" if rule["jitter"]
                else f"sleep {_fmt(rule['seconds'])} s")
    elif mode == "hang":
        what = ("hang forever (once)" if rule["seconds"] >= HANG_FOREVER_S
                else f"hang {_fmt(rule['seconds'])} s (once)")
    elif mode == "crash":
        what = {"kill": "crash (SIGKILL)", "raise": "crash (raise RuntimeError)",
                "exit": f"crash (exit code {rule['exit_code']})"}[rule["how"]]
    elif mode == "scale":
        what = f"scale gradient x{_fmt(rule['factor'])}"
    elif mode == "bitflip":
        n = rule["count"]
        what = f"bitflip bit {rule['bit']} of {n} element{'s' if n > 1 else ''}"
    elif mode == "transit":
        n = rule["count"]
        what = f"corrupt {n} byte{'s' if n > 1 else ''} of the snippets it is sent (in transit)"
    elif mode == "emulate":
        what = f"emulate compute {_fmt(rule['seconds'])} s + {_fmt(rule['seconds_per_sample'])} s/sample"
    else:
        n = rule["count"]
        what = f"nan in {n} element{'s' if n > 1 else ''}"
    when = f"from step {rule['from_step']}"
    if rule["until_step"]:
        when += f" until step {rule['until_step']}"
    extra = ""
    if rule["probability"] < 1.0:
        extra += f", probability {_fmt(rule['probability'])}"
    if rule["seed"]:
        extra += f", seed {rule['seed']}"
    return f"{who}: {what} {when}{extra}"


# --------------------------------------------------------------------------- injection

def emulated_pattern(size: int) -> np.ndarray:
    """The fixed float32 direction of every emulated gradient of ``size`` values."""
    i = np.arange(size, dtype=np.int64)
    return (((i * 40503) % 2001 - 1000) * 1e-6).astype(np.float32)


def emulated_weight(step: int, snippet: int) -> float:
    """Per-sample weight of snippet ``snippet`` in an emulated result of ``step``."""
    return 1.0 + ((step * 1000003 + snippet * 7919) % 97) / 970.0


def _check_grad(what: str, grad) -> None:
    """The injector writes gradients in place: a float32 numpy array only."""
    if not isinstance(grad, np.ndarray) or grad.dtype != np.float32:
        raise TypeError(f"{what}() needs a float32 numpy array, got {getattr(grad, 'dtype', type(grad).__name__)}")


def _kill_self() -> None:
    """SIGKILL this process: what a node failure looks like to MPI."""
    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


@dataclass(frozen=True)
class FaultEvent:
    """One fault that fired: when (the injector's clock), where, what."""

    time: float
    step: int
    task: int
    rule: int          # index in the configured rules
    mode: str
    detail: str


class FaultInjector:
    """Applies the fault rules of one rank to the gradient tasks it computes.

    ``rules`` are validated here (raw or already normalised); only those that
    name ``rank`` are kept.  ``clock`` stamps :attr:`events`; ``sleep(s)``,
    ``kill()`` and ``exit(code)`` carry out delays and crashes -- tests pass
    recorders so nothing really sleeps or dies.

    Attributes: ``active`` (any rule for this rank), ``fired`` (mode -> how
    many times it fired), ``events`` (the last :attr:`MAX_EVENTS`
    :class:`FaultEvent`, oldest first; :meth:`pop_events` drains them for a
    log).
    """

    MAX_EVENTS = 1000

    def __init__(
        self,
        rules,
        rank: int,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
        kill: Callable[[], None] = _kill_self,
        exit: Callable[[int], None] = os._exit,  # noqa: A002 - the documented name
    ):
        self.rank = int(rank)
        self._clock = clock
        self._sleep = sleep
        self._kill = kill
        self._exit = exit
        self._rules = [(i, r) for i, r in enumerate(validate_faults(rules)) if self.rank in r["rank"]]
        self.active = bool(self._rules)
        self.emulating = any(r["mode"] in _EMULATE for _, r in self._rules)
        self._pattern: np.ndarray | None = None
        self._hung: set[int] = set()
        self.fired: dict[str, int] = {}
        self.events: deque = deque(maxlen=self.MAX_EVENTS)

    # -- decisions

    def _fires(self, index: int, rule: dict, step: int, task: int):
        """The rule's generator if it fires on (step, task), else None."""
        if step < 0 or task < 0 or step < rule["from_step"]:
            return None
        if rule["until_step"] and step >= rule["until_step"]:
            return None
        rng = np.random.default_rng([rule["seed"], self.rank, step, task, index])
        if rng.random() < rule["probability"]:
            return rng
        return None

    def _record(self, step: int, task: int, index: int, mode: str, detail: str) -> None:
        self.fired[mode] = self.fired.get(mode, 0) + 1
        self.events.append(FaultEvent(float(self._clock()), step, task, index, mode, detail))

    def pop_events(self) -> list[FaultEvent]:
        """The events recorded since the last call (oldest first), removed."""
        out = list(self.events)
        self.events.clear()
        return out

    # -- hooks

    def before(self, step: int, task: int) -> None:
        """Before computing gradient task ``task`` of ``step``: sleep, hang or crash.

        Rules are applied in configured order.  A ``hang`` rule fires at most
        once in the injector's life.  ``crash`` with ``how = "raise"`` raises
        ``RuntimeError("injected crash")``; ``"kill"`` / ``"exit"`` call the
        injected ``kill()`` / ``exit(exit_code)`` and, should those return
        (tests), skip the remaining rules.
        """
        if not self.active:
            return
        step, task = int(step), int(task)
        for index, rule in self._rules:
            mode = rule["mode"]
            if mode not in _BEFORE or (mode == "hang" and index in self._hung):
                continue
            rng = self._fires(index, rule, step, task)
            if rng is None:
                continue
            if mode == "sleep":
                seconds = rule["seconds"] * rng.random() if rule["jitter"] else rule["seconds"]
                self._record(step, task, index, mode, f"{seconds:.6g} s")
                self._sleep(seconds)
            elif mode == "hang":
                self._hung.add(index)
                self._record(step, task, index, mode, f"{rule['seconds']:.6g} s")
                self._sleep(rule["seconds"])
            else:  # crash
                how = rule["how"]
                self._record(step, task, index, mode, how)
                if how == "raise":
                    raise RuntimeError("injected crash")
                if how == "exit":
                    self._exit(rule["exit_code"])
                else:
                    self._kill()
                return

    def after(self, step: int, task: int, compute_s: float) -> float:
        """After computing: the ``slow`` rules sleep ``(factor - 1) x compute_s``.

        Returns the extra seconds (0.0 if none fired), which the caller adds
        to the reported compute time.  Several firing ``slow`` rules compound
        (factors 2 and 3 make the task 6x as long) and sleep once.
        """
        if not self.active:
            return 0.0
        step, task = int(step), int(task)
        total = max(0.0, float(compute_s))
        extra = 0.0
        for index, rule in self._rules:
            if rule["mode"] not in _AFTER or self._fires(index, rule, step, task) is None:
                continue
            add = (rule["factor"] - 1.0) * (total + extra)
            extra += add
            self._record(step, task, index, "slow", f"+{add:.6g} s")
        if extra > 0.0:
            self._sleep(extra)
        return extra

    def emulate(self, step: int, task: int, snippets, counts, grad: np.ndarray) -> dict | None:
        """Stand in for computing gradient task ``task`` of ``step`` when an
        ``emulate`` rule fires (the first that does): fill the float32
        ``grad`` in place with the synthetic gradient of ``snippets`` (ids,
        ``counts`` samples each; see the module docstring), sleep what is left
        of the emulated time and return the result's fields ``samples``,
        ``loss_sum``, ``correct`` and ``compute_s`` (the emulated time).
        None when no rule fires: the caller computes as usual."""
        if not self.emulating:
            return None
        _check_grad("emulate", grad)
        step, task = int(step), int(task)
        for index, rule in self._rules:
            if rule["mode"] not in _EMULATE or self._fires(index, rule, step, task) is None:
                continue
            t0 = self._clock()
            counts = [int(c) for c in counts]
            weights = [c * emulated_weight(step, int(s)) for s, c in zip(snippets, counts)]
            np.multiply(self._pattern_for(grad.size).reshape(grad.shape), np.float32(sum(weights)), out=grad)
            samples = sum(counts)
            seconds = rule["seconds"] + rule["seconds_per_sample"] * samples
            self._record(step, task, index, "emulate", f"{seconds:.6g} s")
            left = seconds - (self._clock() - t0)
            if left > 0.0:
                self._sleep(left)
            return {"samples": samples, "loss_sum": math.log(10.0) * sum(weights),
                    "correct": float(sum(c // 10 for c in counts)), "compute_s": seconds}
        return None

    def _pattern_for(self, size: int) -> np.ndarray:
        if self._pattern is None or self._pattern.size != size:
            self._pattern = emulated_pattern(size)
        return self._pattern

    def corrupt(self, step: int, task: int, grad: np.ndarray) -> str | None:
        """Corrupt the float32 gradient ``grad`` in place (scale, bitflip, nan).

        Returns the mode applied, several joined by ``"+"`` in configured
        order (e.g. ``"scale+nan"``), or None when no rule fired.
        """
        if not self.active:
            return None
        _check_grad("corrupt", grad)
        step, task = int(step), int(task)
        applied = []
        for index, rule in self._rules:
            mode = rule["mode"]
            if mode not in _CORRUPT:
                continue
            rng = self._fires(index, rule, step, task)
            if rng is None:
                continue
            if mode == "scale":
                grad *= np.float32(rule["factor"])
                detail = f"x{_fmt(rule['factor'])}"
            else:
                if grad.size == 0:
                    continue
                target = grad if grad.ndim else grad.reshape(1)   # a 0-d array's reshape is a view
                flat = rng.choice(target.size, min(rule["count"], target.size), replace=False)
                where = np.unravel_index(flat, target.shape)
                if mode == "bitflip":
                    bits = target.view(np.uint32)
                    bits[where] ^= np.uint32(1 << rule["bit"])
                    detail = f"bit {rule['bit']} of {len(flat)} element(s)"
                else:
                    target[where] = np.nan
                    detail = f"{len(flat)} element(s)"
            applied.append(mode)
            self._record(step, task, index, mode, detail)
        return "+".join(applied) if applied else None

    def transit(self, step: int, task: int, payload: np.ndarray) -> str | None:
        """Damage the snippet bytes of gradient task ``task`` of ``step`` as
        they arrive (``transit``): XOR 0xFF into ``count`` random bytes of
        the ``uint8`` array ``payload``, in place.  Returns a description of
        what was flipped, or None when no rule fired (or there were no bytes)."""
        if not self.active:
            return None
        step, task = int(step), int(task)
        done = []
        for index, rule in self._rules:
            if rule["mode"] not in _TRANSIT:
                continue
            rng = self._fires(index, rule, step, task)
            if rng is None or payload.size == 0:
                continue
            where = rng.choice(payload.size, min(rule["count"], payload.size), replace=False)
            payload[where] ^= np.uint8(0xFF)
            detail = f"{len(where)} byte(s) at {sorted(int(w) for w in where)[:8]}"
            self._record(step, task, index, "transit", detail)
            done.append(detail)
        return "; ".join(done) if done else None

    def describe(self) -> list[str]:
        """One line per rule of this rank, for the log."""
        return [describe_rule(rule, self.rank) for _, rule in self._rules]
