"""Graph models shared by the model, spec and builder tests: a residual block
written in TOML and with the builder, and data for it."""
from __future__ import annotations

import tomllib

import numpy as np

from raven_hpc.engine import ModelBuilder, build_model

RESIDUAL_TOML = """
[model]
seed = 5

[[model.layers]]
type = "dense"
units = 16
activation = "relu"
name = "h"

[[model.layers]]
type = "dense"
units = 16
name = "r"
inputs = ["input"]

[[model.layers]]
type = "add"
inputs = ["h", "r"]

[[model.layers]]
type = "dense"
units = 4
"""


def graph_data(n, shape=(12,), classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n,) + shape).astype(np.float32), rng.integers(0, classes, n).astype(np.int64)


def residual():
    return build_model(tomllib.loads(RESIDUAL_TOML)["model"], (12,), 4)


def builder_residual():
    b = ModelBuilder((12,), 4, seed=5)
    x = b.input
    h = b.dense(x, 16, activation="relu", name="h")
    r = b.dense(x, 16, name="r")
    b.dense(b.add(h, r), 4)
    return b
