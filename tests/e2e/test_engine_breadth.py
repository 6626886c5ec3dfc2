"""The wider engine through the whole job: batch norm (state summed by the
master), dropout (masks seeded per task), Adam with a schedule and clipping,
a non-sequential graph -- still the same parameters on 1, 2 and 3 ranks."""
from __future__ import annotations

import json

import h5py
import numpy as np

from tests.conftest import mpiexec_cmd, raven_cmd, run

TIMEOUT = 180


def config(path, data):
    path.write_text(f"""
[data]
path = "{data}"
[model]
layers = [
  {{type = "dense", units = 64, activation = "gelu", name = "h"}},
  {{type = "batchnorm"}},
  {{type = "dropout", rate = 0.2, name = "d"}},
  {{type = "dense", units = 64, activation = "tanh", inputs = ["h"], name = "skip"}},
  {{type = "add", inputs = ["d", "skip"]}},
  {{type = "layernorm"}},
  {{type = "dense", units = 10}},
]
loss = {{name = "softmax_cross_entropy", label_smoothing = 0.1}}
seed = 5
[optimizer]
name = "adamw"
lr = 0.003
schedule = "cosine"
warmup_steps = 4
clip_norm = 1.0
[train]
epochs = 1
batch_size = 128
task_snippets = 1
max_steps = 12
log_every = 4
eval_every = 0
[run]
progress = "lines"
""")
    return path


def params_of(run_dir):
    with h5py.File(run_dir / "checkpoint.h5", "r") as f:
        return f["params"][()]


def test_graph_batchnorm_dropout_adamw_same_on_1_2_3_ranks(tmp_path, small_h5):
    cfg = config(tmp_path / "c.toml", small_h5)
    got = {}
    for n in (1, 2, 3):
        rd = tmp_path / f"run{n}"
        res = run(mpiexec_cmd(n) + raven_cmd() + ["train", str(cfg), "--run-dir", str(rd)], timeout=TIMEOUT)
        assert res.returncode == 0, res.stdout + res.stderr
        got[n] = params_of(rd)
        lines = [json.loads(x) for x in (rd / "metrics.jsonl").read_text().splitlines()]
        steps = [x for x in lines if x["event"] == "step"]
        assert steps and all("lr" in x and "grad_norm" in x for x in steps)
    np.testing.assert_allclose(got[2], got[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[3], got[1], rtol=1e-5, atol=1e-6)
    # the batch-norm running statistics moved away from their initial 0 / 1
    from raven_hpc.engine import build_model

    spec = json.loads(h5py.File(tmp_path / "run3" / "checkpoint.h5", "r").attrs["model_spec"])
    model = build_model(spec, (28, 28), 10)
    init = model.params.copy()
    model.params[:] = got[3]
    state = model.params[model.num_trainable:]
    assert model.num_state > 0 and not np.allclose(state, init[model.num_trainable:])
