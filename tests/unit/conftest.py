"""Shared fixtures of the unit tests (no MPI here)."""
from __future__ import annotations

import os

import pytest


def _torch_or_skip():
    """torch, or skip -- unless RAVEN_REQUIRE_TORCH=1, where its absence fails."""
    if os.environ.get("RAVEN_REQUIRE_TORCH", "") not in ("", "0"):
        import torch  # an ImportError here fails the test, as CI wants

        return torch
    return pytest.importorskip("torch")


@pytest.fixture(scope="session")
def torch():
    """PyTorch CPU, the independent reference (test-only dependency)."""
    t = _torch_or_skip()
    t.set_num_threads(1)
    return t
