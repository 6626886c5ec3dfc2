"""The CLI under mpiexec, as users run it; every run under a hard timeout."""
from __future__ import annotations

import json
import time

import h5py
import numpy as np
import pytest

from tests.conftest import mpiexec_cmd, raven_cmd, run, write_config

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

TIMEOUT = 240


def train(n, cfg, run_dir, *extra, timeout=TIMEOUT):
    return run(mpiexec_cmd(n) + raven_cmd() + ["train", str(cfg), "--run-dir", str(run_dir), *extra],
               timeout=timeout)


def params_of(run_dir):
    with h5py.File(run_dir / "checkpoint.h5", "r") as f:
        return f["params"][()]


def test_train_n3_writes_every_output_and_learns(tmp_path, small_h5):
    cfg = write_config(tmp_path / "c.toml", small_h5, epochs=3)
    rd = tmp_path / "run"
    res = train(3, cfg, rd)
    assert res.returncode == 0, res.stderr + res.stdout
    assert "final test accuracy" in res.stdout
    assert "master CPU" in res.stdout
    lines = [json.loads(x) for x in (rd / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if x["event"] == "step"]
    epochs = [x for x in lines if x["event"] == "epoch"]
    assert steps and len(epochs) == 3
    for rec in steps:
        assert {"step", "epoch", "loss", "samples", "wall_s"} <= set(rec)
    assert "test_accuracy" in epochs[-1]
    s = json.loads((rd / "summary.json").read_text())
    for key in ("final_test_accuracy", "epochs", "steps", "samples_per_s", "ranks", "wall_s", "master_cpu_s"):
        assert s[key] is not None, key
    assert s["ranks"] == 3 and s["workers"] == 2 and s["epochs"] == 3
    assert s["final_test_accuracy"] > 0.80
    # The master sleeps while it waits: far from a full core.
    assert s["master_cpu_s"] < 0.9 * s["wall_s"]
    back = tomllib.loads((rd / "config.toml").read_text())
    assert back["train"]["epochs"] == 3
    ev = run(raven_cmd() + ["evaluate", str(rd), "--json"], timeout=120, check=True)
    assert abs(json.loads(ev.stdout)["accuracy"] - s["final_test_accuracy"]) < 1e-9
    rep = run(raven_cmd() + ["report", str(rd)], timeout=60, check=True)
    assert "final_test_accuracy" in rep.stdout


@pytest.mark.parametrize("n", [1, 2])
def test_train_with_one_or_no_worker(tmp_path, small_h5, n):
    cfg = write_config(tmp_path / "c.toml", small_h5, epochs=1)
    res = train(n, cfg, tmp_path / "run")
    assert res.returncode == 0, res.stderr + res.stdout
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["ranks"] == n and s["steps"] > 0


def test_invariant_2_same_parameters_on_1_2_and_3_ranks(tmp_path, small_h5):
    """Redundancy 1, no faults: N ranks give the parameters of 1 rank."""
    cfg = write_config(tmp_path / "c.toml", small_h5, epochs=1, task_snippets=1)
    got = {}
    for n in (1, 2, 3):
        rd = tmp_path / f"run{n}"
        res = train(n, cfg, rd, "--set", "train.max_steps=12", "--set", "train.eval_every=0")
        assert res.returncode == 0, res.stderr + res.stdout
        got[n] = params_of(rd)
    np.testing.assert_allclose(got[2], got[1], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got[3], got[1], rtol=1e-6, atol=1e-7)


def test_resume_on_a_different_number_of_ranks_loses_and_repeats_nothing(tmp_path, small_h5):
    cfg = write_config(tmp_path / "c.toml", small_h5, epochs=2)
    full = tmp_path / "full"
    assert train(3, cfg, full).returncode == 0
    part = tmp_path / "part"
    res = train(3, cfg, part, "--set", "train.max_steps=20")
    assert res.returncode == 0, res.stderr
    s = json.loads((part / "summary.json").read_text())
    assert s["steps"] == 20
    # Without --resume an existing run is refused (no silent overwrite).
    res = train(2, cfg, part)
    assert res.returncode != 0 and "--resume" in res.stderr
    res = train(2, cfg, part, "--resume")
    assert res.returncode == 0, res.stderr + res.stdout
    s2 = json.loads((part / "summary.json").read_text())
    s_full = json.loads((full / "summary.json").read_text())
    assert s2["steps"] == s_full["steps"] and s2["samples"] == s_full["samples"]
    np.testing.assert_allclose(params_of(part), params_of(full), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("override, message", [
    ("train.epohcs=3", "unknown key epohcs in [train]"),
    ("train.epochs=\"x\"", "[train] epochs must be int"),
    ("data.path=\"/nonexistent/x.h5\"", "/nonexistent/x.h5"),
    ("model.layers=[{type=\"dense\",units=7}]", "layer"),
])
def test_bad_config_ends_every_rank_quickly_with_one_message(tmp_path, small_h5, override, message):
    cfg = write_config(tmp_path / "c.toml", small_h5)
    t0 = time.monotonic()
    res = train(3, cfg, tmp_path / "run", "--set", override, timeout=60)
    assert res.returncode != 0
    assert time.monotonic() - t0 < 30
    assert message in res.stderr, res.stderr
    assert res.stderr.count("raven-hpc: error:") == 1, res.stderr
    assert "Traceback" not in res.stderr


def test_worker_error_is_reported_once_with_rank_and_host(tmp_path, small_h5):
    """A corrupted snippet is found by the workers' checksum: clear error, every rank exits."""
    bad = tmp_path / "bad.h5"
    bad.write_bytes(small_h5.read_bytes())
    with h5py.File(bad, "r+") as f:
        feats = f["train/features"]
        row = feats[5]
        row.flat[100] ^= 0xFF
        feats[5] = row
    cfg = write_config(tmp_path / "c.toml", bad)
    t0 = time.monotonic()
    res = train(3, cfg, tmp_path / "run", timeout=90)
    assert res.returncode != 0
    assert time.monotonic() - t0 < 60
    assert "worker rank" in res.stderr and "checksum" in res.stderr.lower(), res.stderr
    assert res.stderr.count("raven-hpc: error:") == 1, res.stderr


def test_diverging_training_stops_with_a_clear_message(tmp_path, small_h5):
    cfg = write_config(tmp_path / "c.toml", small_h5, lr=1e6)
    res = train(3, cfg, tmp_path / "run", timeout=90)
    assert res.returncode != 0
    assert "diverged" in res.stderr, res.stderr
