"""LeNet-5 (data/mnist-lenet.toml) on full MNIST under mpiexec, as users run it.

The full acceptance run -- 10 epochs, >= 98.5% test accuracy -- takes about
two to three minutes on a 2-core box; this test trains the same
configuration for two epochs (under a minute) and asserts a bound every
healthy run clears (~98% after two epochs).  Skipped when
``../shared/data/mnist`` is absent.
"""
from __future__ import annotations

import json

import pytest

from tests.conftest import REPO, mpiexec_cmd, raven_cmd, run

TIMEOUT = 300
CONFIG = REPO / "data" / "mnist-lenet.toml"


@pytest.mark.slow
def test_lenet_mnist_two_epochs_n3(tmp_path, full_mnist_h5):
    rd = tmp_path / "run"
    res = run(mpiexec_cmd(3) + raven_cmd() + [
        "train", str(CONFIG), "--run-dir", str(rd), "--set", f"data.path={full_mnist_h5}",
        "--epochs", "2", "--progress", "lines"], timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr + res.stdout
    s = json.loads((rd / "summary.json").read_text())
    assert s["ranks"] == 3 and s["workers"] == 2 and s["epochs"] == 2
    assert s["num_params"] == 61706
    assert s["final_test_accuracy"] >= 0.975, s["history"]
    ev = run(raven_cmd() + ["evaluate", str(rd), "--json"], timeout=120, check=True)
    assert abs(json.loads(ev.stdout)["accuracy"] - s["final_test_accuracy"]) < 1e-9
