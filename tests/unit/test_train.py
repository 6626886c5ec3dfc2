"""Per-rank choices made in train.py before a rank takes its role."""
from __future__ import annotations

from raven_hpc.train import BACKEND_ENV, rank_backend


def test_a_ranks_environment_chooses_its_backend_over_the_config():
    cfg = {"cluster": {"backend": "auto"}}
    assert rank_backend(cfg, {}) == "auto"
    assert rank_backend(cfg, {BACKEND_ENV: "cuda"}) == "cuda"
    assert rank_backend(cfg, {BACKEND_ENV: " cpu "}) == "cpu"
    assert rank_backend(cfg, {BACKEND_ENV: ""}) == "auto"
