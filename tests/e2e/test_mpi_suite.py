"""Runs the pytest-mpi suite (tests/mpi) under mpiexec -n 1 and -n 3 with a hard timeout."""
from __future__ import annotations

import sys

import pytest

from tests.conftest import REPO, mpiexec_cmd, run


@pytest.mark.parametrize("n", [1, 3])
def test_pytest_mpi_suite(n):
    res = run(mpiexec_cmd(n) + [sys.executable, "-m", "pytest", "tests/mpi", "--with-mpi", "-q", "-p",
                                "no:cacheprovider", "--color=no"], timeout=400, cwd=REPO)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
