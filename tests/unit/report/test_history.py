"""raven_hpc.report.history: the metrics history."""
from __future__ import annotations

import json

from raven_hpc.report import read_history


def test_read_history_drops_metrics_lines_a_rollback_voids(tmp_path):
    lines = [{"event": "step", "step": 2, "epoch": 0, "loss": 1.0},
             {"event": "epoch", "epoch": 1, "step": 4, "loss": 0.9},
             {"event": "step", "step": 6, "epoch": 1, "loss": 0.8},
             {"event": "epoch", "epoch": 2, "step": 8, "loss": 0.7},        # voided: redone after step 5
             {"event": "rollback", "step": 9, "to_step": 5},
             {"event": "step", "step": 6, "epoch": 1, "loss": 0.75},
             {"event": "epoch", "epoch": 2, "step": 8, "loss": 0.6}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    h = read_history(tmp_path)
    assert [(e["epoch"], e["loss"]) for e in h["epochs"]] == [(1, 0.9), (2, 0.6)]
    assert h["rollbacks"] == [{"event": "rollback", "step": 9, "to_step": 5}]
    # a rollback to an epoch's last step keeps that epoch
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines[:2] + [
        {"event": "rollback", "step": 6, "to_step": 4}]))
    assert [e["epoch"] for e in read_history(tmp_path)["epochs"]] == [1]
