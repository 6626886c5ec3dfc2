"""Fixtures of the data tests."""
from __future__ import annotations

import pytest

from raven_hpc.data import write_dataset
from tests.unit.data.datasets import NORM, images


@pytest.fixture
def small(tmp_path):
    x, y = images(1000)
    tx, ty = images(100, seed=1)
    path = tmp_path / "d.h5"
    write_dataset(path, {"train": (x, y), "test": (tx, ty)}, snippet_size=32,
                  source="unit", num_classes=10, normalization=NORM)
    return path, x, y, tx, ty
