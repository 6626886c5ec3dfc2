"""Fault injection: rule validation, each mode's effect, windows, determinism.

Nothing here really sleeps, kills or exits: the injector gets recorders.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from raven_hpc.errors import ConfigError
from raven_hpc.protocol.faults import FaultInjector, describe_rule, validate_faults

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib


class Recorder:
    """Stands in for sleep / kill / exit / clock."""

    def __init__(self):
        self.sleeps: list[float] = []
        self.kills = 0
        self.exits: list[int] = []
        self.now = 0.0

    def sleep(self, s):
        self.sleeps.append(s)
        self.now += s

    def kill(self):
        self.kills += 1

    def exit(self, code):
        self.exits.append(code)

    def clock(self):
        return self.now


def injector(rules, rank=1):
    rec = Recorder()
    inj = FaultInjector(rules, rank, clock=rec.clock, sleep=rec.sleep, kill=rec.kill, exit=rec.exit)
    return inj, rec


def grad(n=64, seed=0):
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def rule_rng(seed, rank, step, task, index):
    return np.random.default_rng([seed, rank, step, task, index])


# --------------------------------------------------------------------------- validation

def test_example_from_the_docs_parses_and_fills_defaults():
    text = """
    [faults]
    rules = [
      {rank = 2, mode = "slow", factor = 4.0},
      {rank = [3, 1], mode = "scale", factor = -1.0, from_step = 10, until_step = 50, probability = 0.5},
      {rank = 1, mode = "bitflip", count = 4},
      {rank = 2, mode = "hang", from_step = 5, seconds = 30.0},
      {rank = 1, mode = "sleep", seconds = 2},
      {rank = 1, mode = "crash"},
      {rank = 1, mode = "nan"},
    ]
    """
    rules = validate_faults(tomllib.loads(text)["faults"]["rules"])
    assert rules[0] == {"rank": [2], "mode": "slow", "factor": 4.0, "from_step": 0, "until_step": 0,
                        "probability": 1.0, "seed": 0}
    assert rules[1]["rank"] == [1, 3] and rules[1]["probability"] == 0.5 and rules[1]["until_step"] == 50
    assert rules[2]["bit"] == 30 and rules[2]["count"] == 4
    assert rules[3]["seconds"] == 30.0
    assert rules[4]["seconds"] == 2.0 and isinstance(rules[4]["seconds"], float) and rules[4]["jitter"] is False
    assert rules[5]["how"] == "kill" and rules[5]["exit_code"] == 1
    assert rules[6]["count"] == 1
    assert validate_faults(rules) == rules                # idempotent
    assert validate_faults([]) == []


def test_json_text_and_inputs_are_not_mutated():
    raw = [{"rank": [2, 1, 2], "mode": "nan"}]
    assert validate_faults(json.dumps(raw)) == validate_faults(raw)
    assert validate_faults(raw)[0]["rank"] == [1, 2]
    assert raw == [{"rank": [2, 1, 2], "mode": "nan"}]


@pytest.mark.parametrize("rules, message", [
    # shape of the list and the rules
    ({"rank": 1, "mode": "nan"}, "must be a list of tables"),
    ("[{not json", "not valid JSON"),
    ([3], "rules[0]: must be a table"),
    # mode
    ([{"rank": 1}], "rules[0]: mode is required; valid modes: slow, sleep, hang, crash, scale, bitflip, nan"),
    ([{"rank": 1, "mode": "nan"}, {"rank": 1, "mode": "explode"}],
     "rules[1] (mode \"explode\"): unknown mode 'explode'; valid modes:"),
    ([{"rank": 1, "mode": 3}], "rules[0]: unknown mode 3"),
    # unknown keys, per mode
    ([{"rank": 1, "mode": "slow", "factor": 2.0, "seconds": 1.0}],
     "(mode \"slow\"): unknown key seconds; valid keys for mode \"slow\": "
     "rank, mode, from_step, until_step, probability, seed, factor"),
    ([{"rank": 1, "mode": "nan", "bit": 3, "factor": 2}], "unknown keys bit, factor; valid keys for mode \"nan\""),
    # required keys
    ([{"mode": "nan"}], "(mode \"nan\"): rank is required"),
    ([{"rank": 1, "mode": "slow"}], "(mode \"slow\"): factor is required"),
    ([{"rank": 1, "mode": "sleep"}], "(mode \"sleep\"): seconds is required"),
    ([{"rank": 1, "mode": "scale"}], "(mode \"scale\"): factor is required"),
    # ranks
    ([{"rank": 0, "mode": "nan"}], "rank 0 is the master and cannot be faulted"),
    ([{"rank": [1, 0], "mode": "nan"}], "rank 0 is the master"),
    ([{"rank": -2, "mode": "nan"}], "rank -2 is negative"),
    ([{"rank": [], "mode": "nan"}], "rank is an empty list"),
    ([{"rank": "2", "mode": "nan"}], "rank must be an integer >= 1 or a list of them"),
    ([{"rank": True, "mode": "nan"}], "rank must be an integer"),
    ([{"rank": 1.0, "mode": "nan"}], "rank must be an integer"),
    # wrong types
    ([{"rank": 1, "mode": "slow", "factor": "4"}], "factor must be a number, got '4'"),
    ([{"rank": 1, "mode": "slow", "factor": True}], "factor must be a number"),
    ([{"rank": 1, "mode": "nan", "count": 2.0}], "count must be an integer, got 2.0"),
    ([{"rank": 1, "mode": "nan", "from_step": "3"}], "from_step must be an integer"),
    ([{"rank": 1, "mode": "sleep", "seconds": 1, "jitter": 1}], "jitter must be true or false"),
    ([{"rank": 1, "mode": "crash", "how": "segfault"}], "how = 'segfault' is not one of 'kill', 'exit', 'raise'"),
    ([{"rank": 1, "mode": "nan", "probability": "high"}], "probability must be a number"),
    # bad ranges
    ([{"rank": 1, "mode": "slow", "factor": 0.5}], "factor = 0.5 must be >= 1"),
    ([{"rank": 1, "mode": "scale", "factor": 1}], "factor = 1.0 leaves the gradient unchanged"),
    ([{"rank": 1, "mode": "scale", "factor": float("inf")}], "factor must be a finite number"),
    ([{"rank": 1, "mode": "sleep", "seconds": 0}], "seconds = 0.0 must be > 0"),
    ([{"rank": 1, "mode": "hang", "seconds": -1}], "seconds = -1.0 must be > 0"),
    ([{"rank": 1, "mode": "bitflip", "bit": 32}], "bit = 32 must be in 0..31"),
    ([{"rank": 1, "mode": "bitflip", "count": 0}], "count = 0 must be >= 1"),
    ([{"rank": 1, "mode": "nan", "count": -1}], "count = -1 must be >= 1"),
    ([{"rank": 1, "mode": "crash", "how": "exit", "exit_code": 256}], "exit_code = 256 must be in 0..255"),
    ([{"rank": 1, "mode": "crash", "exit_code": 3}], "exit_code = 3 is only used with how = \"exit\" (how = \"kill\")"),
    ([{"rank": 1, "mode": "crash", "how": "raise", "exit_code": 0}], "exit_code = 0 is only used with how = \"exit\""),
    ([{"rank": 1, "mode": "nan", "from_step": -1}], "from_step = -1 must be >= 0"),
    ([{"rank": 1, "mode": "nan", "until_step": -1}], "until_step = -1 must be >= 0"),
    ([{"rank": 1, "mode": "nan", "from_step": 5, "until_step": 5}], "until_step = 5 must be > from_step = 5"),
    ([{"rank": 1, "mode": "nan", "probability": 1.5}], "probability = 1.5 must be in [0, 1]"),
    ([{"rank": 1, "mode": "nan", "seed": -1}], "seed = -1 must be >= 0"),
])
def test_each_mistake_is_one_clear_config_error(rules, message):
    with pytest.raises(ConfigError) as err:
        validate_faults(rules)
    text = str(err.value)
    assert text.startswith("[faults] rules"), text
    assert message in text, text


def test_error_names_the_rule_index_and_mode():
    rules = [{"rank": 1, "mode": "nan"}, {"rank": 2, "mode": "sleep", "seconds": 1},
             {"rank": 2, "mode": "slow", "factor": 0.5}]
    with pytest.raises(ConfigError, match=r'^\[faults\] rules\[2\] \(mode "slow"\): factor = 0.5 must be >= 1'):
        validate_faults(rules)


def test_num_ranks_rejects_ranks_outside_the_run():
    assert validate_faults([{"rank": 3, "mode": "nan"}], num_ranks=4)[0]["rank"] == [3]
    with pytest.raises(ConfigError, match=r"rank 4 does not exist in a run of 4 ranks \(workers are 1..3\)"):
        validate_faults([{"rank": [1, 4], "mode": "nan"}], num_ranks=4)


def test_injector_validates_its_rules():
    with pytest.raises(ConfigError, match="rank 0 is the master"):
        FaultInjector([{"rank": 0, "mode": "nan"}], 1)


def test_module_does_not_import_mpi():
    code = "import sys, raven_hpc.protocol.faults; print('mpi4py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- modes

def test_no_rules_for_this_rank_is_inactive_and_does_nothing():
    inj, rec = injector([{"rank": 2, "mode": "nan"}, {"rank": 3, "mode": "crash", "how": "raise"}], rank=1)
    assert not inj.active and inj.describe() == []
    g = grad()
    before = g.copy()
    inj.before(0, 0)
    assert inj.after(0, 0, 1.0) == 0.0
    assert inj.corrupt(0, 0, g) is None
    np.testing.assert_array_equal(g, before)
    assert rec.sleeps == [] and rec.kills == 0 and rec.exits == []


def test_bitflip_flips_exactly_the_chosen_bit_of_the_chosen_elements():
    inj, _ = injector([{"rank": 1, "mode": "bitflip", "count": 4, "seed": 7}], rank=1)
    g = grad(100)
    before = g.copy()
    assert inj.corrupt(3, 5, g) == "bitflip"
    diff = g.view(np.uint32) ^ before.view(np.uint32)
    changed = np.flatnonzero(diff)
    assert len(changed) == 4
    assert np.all(diff[changed] == np.uint32(1 << 30))
    rng = rule_rng(7, 1, 3, 5, 0)
    assert rng.random() < 1.0
    np.testing.assert_array_equal(np.sort(changed), np.sort(rng.choice(100, 4, replace=False)))
    # the top exponent bit makes values huge (|x| < 1), inf/NaN (1 <= |x| < 2) or tiny (|x| >= 2)
    a, b = np.abs(before[changed]), np.abs(g[changed])
    assert np.all(np.where(a < 1, b > 1e30, np.where(a < 2, ~np.isfinite(b), b < 1e-30)))


@pytest.mark.parametrize("bit", [0, 22, 31])
def test_bitflip_other_bits(bit):
    inj, _ = injector([{"rank": 1, "mode": "bitflip", "bit": bit, "count": 3}], rank=1)
    g = grad(10)
    before = g.copy()
    inj.corrupt(0, 0, g)
    diff = g.view(np.uint32) ^ before.view(np.uint32)
    assert sorted(set(diff.tolist())) == [0, 1 << bit]
    assert np.count_nonzero(diff) == 3


def test_bitflip_works_in_place_on_a_non_contiguous_array():
    inj, _ = injector([{"rank": 1, "mode": "bitflip", "count": 2, "bit": 31}], rank=1)
    base = grad(24).reshape(4, 6)
    view = base[:, ::2]
    before = base.copy()
    inj.corrupt(0, 0, view)
    flipped = np.argwhere(base != before)
    assert len(flipped) == 2 and np.all(flipped[:, 1] % 2 == 0)
    np.testing.assert_array_equal(base[base != before], -before[base != before])   # bit 31 = sign


def test_count_larger_than_the_gradient_hits_every_element():
    inj, _ = injector([{"rank": 1, "mode": "nan", "count": 50}], rank=1)
    g = grad(8)
    assert inj.corrupt(0, 0, g) == "nan"
    assert np.isnan(g).all()
    assert inj.corrupt(0, 1, np.zeros(0, np.float32)) is None


def test_nan_sets_count_elements():
    inj, _ = injector([{"rank": 1, "mode": "nan", "count": 5, "seed": 3}], rank=1)
    g = grad(64)
    before = g.copy()
    assert inj.corrupt(2, 9, g) == "nan"
    where = np.flatnonzero(np.isnan(g))
    assert len(where) == 5
    rng = rule_rng(3, 1, 2, 9, 0)
    rng.random()
    np.testing.assert_array_equal(np.sort(where), np.sort(rng.choice(64, 5, replace=False)))
    keep = ~np.isnan(g)
    np.testing.assert_array_equal(g[keep], before[keep])


def test_scale_multiplies_in_place():
    inj, _ = injector([{"rank": 1, "mode": "scale", "factor": -2.5}], rank=1)
    g = grad()
    before = g.copy()
    ref = g
    assert inj.corrupt(0, 0, g) == "scale"
    assert ref is g and g.dtype == np.float32
    np.testing.assert_array_equal(g, before * np.float32(-2.5))


def test_several_corruptions_apply_in_order_and_are_named():
    inj, _ = injector([{"rank": 1, "mode": "scale", "factor": 0.0}, {"rank": 1, "mode": "nan", "count": 1}], rank=1)
    g = grad(16)
    assert inj.corrupt(0, 0, g) == "scale+nan"
    assert np.count_nonzero(np.isnan(g)) == 1 and np.all(g[~np.isnan(g)] == 0.0)
    assert inj.fired == {"scale": 1, "nan": 1}


def test_corrupt_needs_float32():
    inj, _ = injector([{"rank": 1, "mode": "nan"}], rank=1)
    with pytest.raises(TypeError, match="float32"):
        inj.corrupt(0, 0, np.zeros(4, np.float64))


def test_slow_sleeps_and_returns_factor_minus_one_times_compute():
    inj, rec = injector([{"rank": 2, "mode": "slow", "factor": 4.0}], rank=2)
    extra = inj.after(0, 0, 0.25)
    assert extra == pytest.approx(0.75)
    assert rec.sleeps == [pytest.approx(0.75)]
    assert 0.25 + extra == pytest.approx(4.0 * 0.25)      # the reported compute time
    # slow acts only after computing
    inj.before(0, 1)
    assert inj.corrupt(0, 1, grad()) is None
    assert len(rec.sleeps) == 1


def test_slow_factors_compound_and_sleep_once():
    inj, rec = injector([{"rank": 1, "mode": "slow", "factor": 2.0}, {"rank": 1, "mode": "slow", "factor": 3.0}])
    assert inj.after(0, 0, 1.0) == pytest.approx(5.0)      # 6x as long in all
    assert rec.sleeps == [pytest.approx(5.0)]


def test_slow_with_factor_one_does_not_sleep():
    inj, rec = injector([{"rank": 1, "mode": "slow", "factor": 1}])
    assert inj.after(0, 0, 0.5) == 0.0 and rec.sleeps == []


def test_sleep_exact_and_jittered():
    inj, rec = injector([{"rank": 1, "mode": "sleep", "seconds": 0.5}])
    inj.before(0, 0)
    inj.before(0, 1)
    assert rec.sleeps == [0.5, 0.5]
    assert inj.after(0, 0, 1.0) == 0.0

    inj, rec = injector([{"rank": 1, "mode": "nan"}, {"rank": 1, "mode": "sleep", "seconds": 2.0,
                                                      "jitter": True, "seed": 5}])
    for task in range(20):
        inj.before(4, task)
    expected = []
    for task in range(20):
        rng = rule_rng(5, 1, 4, task, 1)
        rng.random()
        expected.append(2.0 * rng.random())
    assert rec.sleeps == pytest.approx(expected)
    assert all(0.0 <= s <= 2.0 for s in rec.sleeps) and len(set(rec.sleeps)) == 20


def test_hang_fires_once_at_the_first_matching_task():
    inj, rec = injector([{"rank": 2, "mode": "hang", "from_step": 5, "seconds": 30.0}], rank=2)
    for step in range(10):
        for task in range(3):
            inj.before(step, task)
    assert rec.sleeps == [30.0]
    assert [(e.step, e.task, e.mode) for e in inj.events] == [(5, 0, "hang")]


def test_hang_default_is_forever_and_each_rule_fires_once():
    inj, rec = injector([{"rank": 1, "mode": "hang"}, {"rank": 1, "mode": "hang", "seconds": 2.0, "from_step": 3}])
    for step in range(6):
        inj.before(step, 0)
    assert rec.sleeps == [1e9, 2.0]
    assert inj.describe() == ["rank 1: hang forever (once) from step 0", "rank 1: hang 2.0 s (once) from step 3"]


def test_hang_respects_probability():
    rules = [{"rank": 1, "mode": "hang", "probability": 0.3, "seed": 11, "seconds": 9.0}]
    inj, rec = injector(rules)
    first = next(t for t in range(1000) if rule_rng(11, 1, 0, t, 0).random() < 0.3)
    for task in range(1000):
        inj.before(0, task)
    assert rec.sleeps == [9.0]
    assert inj.events[0].task == first


def test_crash_kill_exit_raise():
    inj, rec = injector([{"rank": 1, "mode": "crash"}])
    inj.before(0, 0)
    assert rec.kills == 1 and rec.exits == []

    inj, rec = injector([{"rank": 1, "mode": "crash", "how": "exit", "exit_code": 7},
                         {"rank": 1, "mode": "sleep", "seconds": 1.0}])
    inj.before(0, 0)
    assert rec.exits == [7] and rec.kills == 0
    assert rec.sleeps == []                                # nothing after a crash

    inj, rec = injector([{"rank": 1, "mode": "crash", "how": "exit"}])
    inj.before(0, 0)
    assert rec.exits == [1]

    inj, rec = injector([{"rank": 1, "mode": "crash", "how": "raise", "from_step": 2}])
    inj.before(1, 0)
    with pytest.raises(RuntimeError, match="^injected crash$"):
        inj.before(2, 0)
    assert rec.kills == 0 and rec.exits == []


def test_crash_only_in_before():
    inj, rec = injector([{"rank": 1, "mode": "crash"}])
    assert inj.after(0, 0, 1.0) == 0.0
    assert inj.corrupt(0, 0, grad()) is None
    assert rec.kills == 0


# --------------------------------------------------------------------------- windows and randomness

def test_from_and_until_step_window():
    inj, _ = injector([{"rank": 1, "mode": "scale", "factor": 2.0, "from_step": 10, "until_step": 50}])
    hit = [step for step in range(60) if inj.corrupt(step, 0, grad(4)) is not None]
    assert hit == list(range(10, 50))

    inj, _ = injector([{"rank": 1, "mode": "nan", "from_step": 3}])   # until_step 0 = forever
    hit = [step for step in (0, 2, 3, 4, 10_000) if inj.corrupt(step, 0, grad(4)) is not None]
    assert hit == [3, 4, 10_000]


def test_warm_up_tasks_are_never_faulted():
    inj, rec = injector([{"rank": 1, "mode": "slow", "factor": 3.0}, {"rank": 1, "mode": "crash"},
                         {"rank": 1, "mode": "nan"}])
    g = grad()
    inj.before(-1, 0)
    assert inj.after(-1, 0, 1.0) == 0.0
    assert inj.corrupt(-1, 0, g) is None and not np.isnan(g).any()
    assert rec.sleeps == [] and rec.kills == 0


def test_probability_follows_the_documented_generator():
    rules = [{"rank": 1, "mode": "nan"}, {"rank": [1, 2], "mode": "scale", "factor": -1.0,
                                          "probability": 0.5, "seed": 42}]
    inj, _ = injector(rules, rank=1)
    got, want = [], []
    for step in range(10):
        for task in range(10):
            got.append(inj.corrupt(step, task, grad(4)) == "nan+scale")
            want.append(rule_rng(42, 1, step, task, 1).random() < 0.5)
    assert got == want
    assert 30 < sum(got) < 70


def test_probability_zero_and_one():
    never, _ = injector([{"rank": 1, "mode": "nan", "probability": 0.0}])
    always, _ = injector([{"rank": 1, "mode": "nan", "probability": 1}])
    assert all(never.corrupt(0, t, grad(4)) is None for t in range(100))
    assert all(always.corrupt(0, t, grad(4)) == "nan" for t in range(100))


def test_same_seed_same_faults_and_other_seed_differs():
    rules = [{"rank": [1, 2], "mode": "bitflip", "count": 3, "probability": 0.5, "seed": 9}]

    def run(rules, rank):
        inj, _ = injector(rules, rank=rank)
        out = []
        for step in range(5):
            for task in range(8):
                g = grad(32, seed=step)
                inj.corrupt(step, task, g)
                out.append(g.view(np.uint32).copy())
        return np.stack(out)

    a, b = run(rules, 1), run(rules, 1)
    np.testing.assert_array_equal(a, b)
    other_rank = run(rules, 2)
    assert not np.array_equal(a, other_rank)               # rank is part of the generator's seed
    other_seed = run([dict(rules[0], seed=10)], 1)
    assert not np.array_equal(a, other_seed)


def test_other_ranks_are_unaffected():
    rules = [{"rank": 2, "mode": "nan", "count": 10}, {"rank": [2, 3], "mode": "slow", "factor": 5.0},
             {"rank": 3, "mode": "crash", "how": "raise"}]
    for rank in (1, 4, 0):
        inj, rec = injector(rules, rank=rank)
        g = grad()
        before = g.copy()
        inj.before(1, 1)
        assert inj.after(1, 1, 1.0) == 0.0
        assert inj.corrupt(1, 1, g) is None
        np.testing.assert_array_equal(g, before)
        assert not inj.active and rec.sleeps == []
    inj, rec = injector(rules, rank=2)
    assert inj.active and inj.after(0, 0, 1.0) == pytest.approx(4.0)
    inj.before(0, 0)                                        # rank 3's crash is not rank 2's
    inj, _ = injector(rules, rank=3)
    with pytest.raises(RuntimeError):
        inj.before(0, 0)


# --------------------------------------------------------------------------- log lines and events

def test_describe_lines():
    rules = [
        {"rank": 2, "mode": "slow", "factor": 4.0},
        {"rank": [1, 2], "mode": "scale", "factor": -1.0, "from_step": 10, "until_step": 50, "probability": 0.5},
        {"rank": 2, "mode": "bitflip", "count": 4},
        {"rank": 2, "mode": "sleep", "seconds": 0.5, "jitter": True, "seed": 3},
        {"rank": 2, "mode": "crash", "how": "exit", "exit_code": 9},
        {"rank": 2, "mode": "nan"},
        {"rank": 1, "mode": "hang"},
    ]
    inj, _ = injector(rules, rank=2)
    assert inj.describe() == [
        "rank 2: slow x4.0 from step 0",
        "rank 2: scale gradient x-1.0 from step 10 until step 50, probability 0.5",
        "rank 2: bitflip bit 30 of 4 elements from step 0",
        "rank 2: sleep up to 0.5 s (jitter) from step 0, seed 3",
        "rank 2: crash (exit code 9) from step 0",
        "rank 2: nan in 1 element from step 0",
    ]
    norm = validate_faults(rules)
    assert describe_rule(norm[1]) == "ranks 1, 2: scale gradient x-1.0 from step 10 until step 50, probability 0.5"
    assert describe_rule(norm[6]) == "rank 1: hang forever (once) from step 0"


def test_events_record_what_fired_with_the_injected_clock():
    inj, rec = injector([{"rank": 1, "mode": "sleep", "seconds": 2.0}, {"rank": 1, "mode": "nan", "count": 2}])
    inj.before(0, 4)
    inj.corrupt(0, 4, grad())
    events = inj.pop_events()
    assert [(e.time, e.step, e.task, e.rule, e.mode) for e in events] == [(0.0, 0, 4, 0, "sleep"),
                                                                        (2.0, 0, 4, 1, "nan")]
    assert events[1].detail == "2 element(s)"
    assert inj.pop_events() == []
    assert inj.fired == {"sleep": 1, "nan": 1}


# --------------------------------------------------------------------------- emulated compute

def test_emulate_validates_like_the_other_modes():
    rule = validate_faults([{"rank": [2, 1], "mode": "emulate", "seconds_per_sample": 0.001}])[0]
    assert rule == {"rank": [1, 2], "mode": "emulate", "seconds": 0.0, "seconds_per_sample": 0.001,
                    "from_step": 0, "until_step": 0, "probability": 1.0, "seed": 0}
    assert validate_faults([rule]) == [rule]
    assert validate_faults([{"rank": 1, "mode": "emulate", "seconds": 2}])[0]["seconds"] == 2.0
    for bad, message in [({"seconds": -0.5}, "seconds = -0.5 must be >= 0"),
                         ({"seconds_per_sample": -1}, "seconds_per_sample = -1.0 must be >= 0"),
                         ({"seconds": "0.02"}, "seconds must be a number, got '0.02'"),
                         ({"seconds": float("nan")}, "seconds must be a finite number"),
                         ({"factor": 2.0}, "unknown key factor; valid keys for mode \"emulate\": rank, mode, "
                                           "from_step, until_step, probability, seed, seconds, seconds_per_sample")]:
        with pytest.raises(ConfigError) as err:
            validate_faults([{"rank": 1, "mode": "emulate", **bad}])
        assert str(err.value).startswith('[faults] rules[0] (mode "emulate"): ') and message in str(err.value)
    assert describe_rule(rule) == "ranks 1, 2: emulate compute 0.0 s + 0.001 s/sample from step 0"


def test_emulate_sleeps_the_emulated_time_and_returns_a_synthetic_result():
    inj, rec = injector([{"rank": 1, "mode": "emulate", "seconds": 0.01, "seconds_per_sample": 0.001}])
    assert inj.active and inj.emulating
    g = np.full(50, np.nan, np.float32)
    got = inj.emulate(3, 7, [4, 9], [32, 16], g)
    w4, w9 = 1.0 + ((3 * 1000003 + 4 * 7919) % 97) / 970.0, 1.0 + ((3 * 1000003 + 9 * 7919) % 97) / 970.0
    assert got == {"samples": 48, "loss_sum": pytest.approx(np.log(10.0) * (32 * w4 + 16 * w9)),
                   "correct": 4.0, "compute_s": pytest.approx(0.058)}
    assert rec.sleeps == [pytest.approx(0.058)]
    i = np.arange(50)
    pattern = (((i * 40503) % 2001 - 1000) * 1e-6).astype(np.float32)
    np.testing.assert_allclose(g, pattern * np.float32(32 * w4 + 16 * w9), rtol=1e-6)
    assert np.isfinite(g).all() and np.abs(g).max() > 0
    assert [(e.step, e.task, e.mode, e.detail) for e in inj.pop_events()] == [(3, 7, "emulate", "0.058 s")]
    assert inj.fired == {"emulate": 1}


def test_emulate_sleeps_only_what_producing_the_result_left():
    ticks = iter(0.002 * k for k in range(10))     # every reading of the clock is 2 ms later
    inj = FaultInjector([{"rank": 1, "mode": "emulate", "seconds": 0.01}], 1, clock=lambda: next(ticks),
                        sleep=(slept := []).append)
    assert inj.emulate(0, 1, [0], [32], np.zeros(8, np.float32))["compute_s"] == 0.01
    assert slept == [pytest.approx(0.006)]


def test_emulated_results_are_additive_over_snippets_and_the_same_on_every_rank():
    rules = [{"rank": [1, 2], "mode": "emulate"}]
    a, _ = injector(rules, rank=1)
    b, _ = injector(rules, rank=2)
    ids, counts = [3, 11, 12, 40], [32, 32, 7, 32]
    whole = np.zeros(1000, np.float32)
    fw = a.emulate(5, 1, ids, counts, whole)
    parts, total = np.zeros(1000, np.float64), {"samples": 0, "loss_sum": 0.0, "correct": 0.0}
    for k in range(len(ids)):
        g = np.zeros(1000, np.float32)
        f = b.emulate(5, 100 + k, ids[k:k + 1], counts[k:k + 1], g)
        parts += g
        for key in total:
            total[key] += f[key]
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-9)
    assert total == {"samples": fw["samples"], "loss_sum": pytest.approx(fw["loss_sum"]), "correct": fw["correct"]}
    other = np.zeros(1000, np.float32)
    a.emulate(6, 1, ids, counts, other)
    assert not np.allclose(other, whole)    # another step weighs the snippets differently


def test_emulate_only_where_its_rule_fires():
    inj, rec = injector([{"rank": 1, "mode": "emulate", "seconds": 0.5, "from_step": 2, "until_step": 4}])
    g = grad()
    before = g.copy()
    for step, task in [(1, 0), (4, 0), (-1, 0), (2, -1)]:
        assert inj.emulate(step, task, [0], [32], g) is None
    np.testing.assert_array_equal(g, before)
    assert rec.sleeps == []
    other, _ = injector([{"rank": 2, "mode": "emulate", "seconds": 0.5}], rank=1)
    assert not other.emulating and other.emulate(0, 0, [0], [32], g) is None
    plain, _ = injector([{"rank": 1, "mode": "nan"}], rank=1)
    assert plain.active and not plain.emulating and plain.emulate(0, 0, [0], [32], g) is None
    with pytest.raises(TypeError, match="float32"):
        inj.emulate(2, 0, [0], [32], np.zeros(4))


def test_slow_and_corruption_still_apply_to_an_emulated_result():
    inj, rec = injector([{"rank": 1, "mode": "emulate", "seconds": 0.02}, {"rank": 1, "mode": "slow", "factor": 3.0},
                         {"rank": 1, "mode": "scale", "factor": -1.0}])
    g = np.zeros(16, np.float32)
    got = inj.emulate(0, 1, [2], [32], g)
    clean = g.copy()
    assert inj.after(0, 1, got["compute_s"]) == pytest.approx(0.04)
    assert inj.corrupt(0, 1, g) == "scale"
    np.testing.assert_array_equal(g, -clean)
    assert rec.sleeps == [pytest.approx(0.02), pytest.approx(0.04)]


def test_task_runner_fills_the_result_buffer_from_an_emulate_rule():
    from raven_hpc.protocol.messages import KIND_GRAD, ResultBuffer
    from raven_hpc.protocol.worker import TaskRunner

    class Split:
        snippets = {"count": np.array([32, 32, 16])}

    runner = TaskRunner(model=None, splits={"train": Split()})
    out = ResultBuffer(10)
    task = {"task": 4, "step": 2, "kind": "grad", "split": "train", "version": 2, "snippets": [1, 2]}
    inj, rec = injector([{"rank": 1, "mode": "emulate", "seconds_per_sample": 0.0005}])
    assert runner.emulate(task, out, inj)
    expect = np.zeros(10, np.float32)
    fields = inj.emulate(2, 4, [1, 2], [32, 16], expect)
    np.testing.assert_array_equal(out.grad, expect)
    assert [out.get(k) for k in ("kind", "step", "task", "version", "samples", "finite")] == [KIND_GRAD, 2, 4, 2, 48, 1]
    assert out.get("compute_s") == pytest.approx(0.024) and out.get("loss_sum") == pytest.approx(fields["loss_sum"])
    assert out.get("correct") == 4
    plain, _ = injector([{"rank": 1, "mode": "nan"}])
    assert not runner.emulate(task, out, plain)
    assert not runner.emulate(dict(task, split="test"), out, inj)


def test_transit_flips_bytes_of_the_payload_it_is_given():
    rule = {"rank": 2, "mode": "transit", "count": 3, "from_step": 1}
    assert validate_faults([rule])[0] == {"rank": [2], "mode": "transit", "from_step": 1, "until_step": 0,
                                          "probability": 1.0, "seed": 0, "count": 3}
    assert describe_rule(validate_faults([rule])[0]) == (
        "rank 2: corrupt 3 bytes of the snippets it is sent (in transit) from step 1")
    with pytest.raises(ConfigError, match="count = 0 must be >= 1"):
        validate_faults([dict(rule, count=0)])
    inj, _ = injector([rule], rank=2)
    payload = np.zeros(100, np.uint8)
    assert inj.transit(0, 5, payload) is None and not payload.any()     # before from_step
    assert inj.transit(1, 5, payload) is not None
    where = rule_rng(0, 2, 1, 5, 0)
    where.random()
    expect = np.zeros(100, np.uint8)
    expect[where.choice(100, 3, replace=False)] = 0xFF
    np.testing.assert_array_equal(payload, expect)
    assert inj.fired == {"transit": 1} and inj.events[-1].mode == "transit"
    assert inj.transit(2, 5, np.zeros(0, np.uint8)) is None             # nothing was sent: nothing to damage
    other, _ = injector([rule], rank=1)
    assert other.transit(1, 5, payload) is None
