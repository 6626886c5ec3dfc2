"""The master/worker protocol in-process under mpiexec (pytest-mpi).

Run as ``mpiexec -n 3 python -m pytest tests/mpi --with-mpi`` (tests/e2e
drives it with a timeout).  Bodies work at any rank count.
"""
from __future__ import annotations

import numpy as np
import pytest

from raven_hpc.config import load_config
from raven_hpc.train import run_training, setup_run
from tests.conftest import EMBEDDED_MNIST, write_config


@pytest.fixture
def shared_data(mpi_tmp_path):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    path = mpi_tmp_path / "small.h5"
    if comm.rank == 0:
        from raven_hpc.data import prepare

        prepare(str(EMBEDDED_MNIST), str(path), kind="mnist", snippet_size=32, limit=1024)
    comm.Barrier()
    return path


def verdict_on_all_ranks(comm, check):
    """Run ``check`` on rank 0 and fail on every rank if it fails (no rank is left waiting)."""
    err = None
    if comm.rank == 0:
        try:
            check()
        except AssertionError as exc:
            err = str(exc)
    err = comm.bcast(err)
    assert err is None, err


def serial_reference(cfg, steps):
    """Single-process SGD over the same global batches (one big batch per step)."""
    from raven_hpc.data import open_dataset
    from raven_hpc.engine import build_model, make_optimizer
    from raven_hpc.protocol.plan import make_plan

    with open_dataset(cfg["data"]["path"]) as ds:
        split = ds.split("train")
        model = build_model(cfg["model"], tuple(ds.feature_shape), int(ds.num_classes))
        opt = make_optimizer(dict(cfg["optimizer"]), model.num_params)
        tr = cfg["train"]
        done = 0
        epoch = 0
        while done < steps:
            plan = make_plan(split.num_snippets, epoch, seed=tr["seed"], batch_size=tr["batch_size"],
                             snippet_size=32, task_snippets=tr["task_snippets"])
            for i in range(plan.num_steps):
                if done >= steps:
                    break
                x, y = split.read_snippets(plan.step_snippets(i))
                model.zero_grad()
                model.loss_and_grad(x, y)
                g = (model.grads / len(y)).astype(np.float32)
                opt.step(model.params, g)
                done += 1
            epoch += 1
        return model.params.copy()


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_distributed_equals_serial_on_the_same_batches(shared_data, mpi_tmp_path):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    cfgfile = mpi_tmp_path / "c.toml"
    if comm.rank == 0:
        write_config(cfgfile, shared_data, epochs=3, task_snippets=1,
                     extra=f'dir = "{mpi_tmp_path / "run"}"')
    comm.Barrier()
    cfg = comm.bcast(setup_run(cfgfile, ["train.max_steps=10", "train.eval_every=0"]) if comm.rank == 0 else None)
    summary = run_training(comm, cfg)

    def check():
        assert summary["steps"] == 10
        from raven_hpc.checkpoint import load_checkpoint

        got = load_checkpoint(mpi_tmp_path / "run")["params"]
        want = serial_reference(cfg, 10)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-6)

    verdict_on_all_ranks(comm, check)


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_every_snippet_counted_once_per_epoch(shared_data, mpi_tmp_path):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    cfgfile = mpi_tmp_path / "c2.toml"
    if comm.rank == 0:
        write_config(cfgfile, shared_data, epochs=2, extra=f'dir = "{mpi_tmp_path / "run2"}"')
    comm.Barrier()
    cfg = comm.bcast(setup_run(cfgfile) if comm.rank == 0 else None)
    summary = run_training(comm, cfg)

    def check():
        from raven_hpc.data import open_dataset

        with open_dataset(cfg["data"]["path"]) as ds:
            n_train = ds.split("train").num_samples
            n_test = ds.split("test").num_samples
        assert summary["samples"] == 2 * n_train
        assert all(h["test_samples"] == n_test for h in summary["history"])

    verdict_on_all_ranks(comm, check)
