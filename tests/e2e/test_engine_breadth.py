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


def test_dropout_model_in_chunks_equals_one_task_at_a_time(tmp_path, small_h5):
    """Dropout masks are drawn per snippet, so a dropout model may be merged
    into chunks: the same parameters with chunks (max_chunk 16) on 1 and 3
    ranks as with every 32-sample task computed alone (max_chunk 1)."""
    cfg = tmp_path / "drop.toml"
    cfg.write_text(config(tmp_path / "tmp.toml", small_h5).read_text()
                   .replace('  {type = "batchnorm"},\n', ""))
    got = {}
    for n, chunk in ((3, 1), (3, 16), (1, 16)):
        rd = tmp_path / f"run{n}-{chunk}"
        res = run(mpiexec_cmd(n) + raven_cmd() + ["train", str(cfg), "--run-dir", str(rd),
                                                  "--set", f"cluster.max_chunk={chunk}"], timeout=TIMEOUT)
        assert res.returncode == 0, res.stdout + res.stderr
        got[(n, chunk)] = params_of(rd)
        ledger = [json.loads(x) for x in (rd / "ledger.jsonl").read_text().splitlines()]
        sizes = {len(e["snippets"]) for e in ledger if e["ev"] == "copy" and e["kind"] == "grad"}
        assert (sizes == {1}) == (chunk == 1), sizes     # chunks were really formed
    np.testing.assert_allclose(got[(3, 16)], got[(3, 1)], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[(1, 16)], got[(3, 1)], rtol=1e-5, atol=1e-6)
