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


def _one_clean_error(res, message):
    err = res.stderr
    assert res.returncode != 0, err + res.stdout
    assert message in err, err
    assert err.count("raven-hpc: error:") == 1, err
    for noise in ("Traceback", "unmatched", "MPI_Finalize", "BAD TERMINATION", "Killed"):
        assert noise not in err + res.stdout, err + res.stdout


@pytest.mark.parametrize("case", ["another model", "truncated checkpoint"])
def test_error_after_the_workers_started_is_one_line_and_a_stable_exit_code(tmp_path, small_h5, case):
    """Resuming with another model's checkpoint, or a truncated one, fails in
    the master after the workers started: one message, the workers released,
    exit code 2 on every try (not MPI_Finalize's "unmatched messages" traceback
    and 1 or 9 at random), and the checkpoint is left as it was."""
    cfg = write_config(tmp_path / "c.toml", small_h5, epochs=1)
    rd = tmp_path / "run"
    res = train(3, cfg, rd, "--set", "train.max_steps=3", "--set", "train.eval_every=0")
    assert res.returncode == 0, res.stderr + res.stdout
    ck = rd / "checkpoint.h5"
    if case == "another model":
        extra, message = ["--set", 'model.layers=[{type="dense",units=10}]'], "the [model] section changed"
    else:
        ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
        extra, message = [], "cannot read checkpoint"
    kept = ck.read_bytes()
    codes = []
    for _ in range(4):
        t0 = time.monotonic()
        res = train(3, cfg, rd, "--resume", *extra, timeout=90)
        assert time.monotonic() - t0 < 60
        _one_clean_error(res, message)
        codes.append(res.returncode)
        assert ck.read_bytes() == kept
    assert codes == [2] * len(codes), codes


def test_batch_norm_with_a_one_sample_snippet_is_refused_at_start_up(tmp_path):
    """A 1-sample snippet that can be a task of its own would fail a
    batch-norm model on a worker mid-training; rank 0 refuses it before."""
    from raven_hpc.data import prepare

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=rng.random((97, 6), dtype=np.float32), y_train=rng.integers(0, 3, 97),
             x_test=rng.random((10, 6), dtype=np.float32), y_test=rng.integers(0, 3, 10))
    prepare(tmp_path / "d.npz", tmp_path / "d.h5", snippet_size=32)   # snippets of 32, 32, 32 and 1 samples
    cfg = tmp_path / "bn.toml"
    cfg.write_text(f'[data]\npath = "{tmp_path / "d.h5"}"\n[model]\nlayers = [{{type = "dense", units = 8}}, '
                   '{type = "batchnorm"}, {type = "dense", units = 3}]\n[train]\nepochs = 2\nbatch_size = 64\n'
                   'task_snippets = 1\n[run]\nprogress = "lines"\n')
    t0 = time.monotonic()
    res = train(3, cfg, tmp_path / "run", timeout=60)
    assert time.monotonic() - t0 < 30
    _one_clean_error(res, "model.layers[1] (batchnorm) needs at least 2 samples per task")
    assert "snippet 3 (1 sample)" in res.stderr and "train.task_snippets" in res.stderr, res.stderr
    assert res.returncode == 2 and not (tmp_path / "run" / "metrics.jsonl").exists()
    res = train(3, cfg, tmp_path / "run2", "--set", "train.task_snippets=2", timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr + res.stdout


def test_a_failing_mpi_finalize_is_not_a_traceback(tmp_path):
    """Should MPI_Finalize fail (a message nobody received), the rank leaves
    with the run's exit code, or 1 and one line when the run had succeeded."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from mpi4py import MPI\n"
        "from raven_hpc import cli\n"
        "def boom():\n"
        "    raise MPI.Exception(MPI.ERR_OTHER)\n"
        "MPI.Finalize = boom\n"
        "cli._finalize_mpi(int(sys.argv[1]))\n"
        "sys.exit(int(sys.argv[1]))\n"
    )
    for rc, want, lines in ((0, 1, 1), (2, 2, 0)):
        res = subprocess.run([sys.executable, "-c", script, str(rc)], capture_output=True, text=True, timeout=60)
        assert res.returncode == want, res.stderr
        assert "Traceback" not in res.stderr, res.stderr
        assert res.stderr.count("raven-hpc: error: MPI_Finalize failed on rank 0") == lines, res.stderr
