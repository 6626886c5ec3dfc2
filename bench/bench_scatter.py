#!/usr/bin/env python
"""data.delivery = "scatter" against "read": samples/s and the master's CPU
per step, 1 master + 2 workers, the MNIST MLP and LeNet-5, one sitting.

    python bench/bench_scatter.py                      # both models, 3 repeats
    python bench/bench_scatter.py --models mlp --steps 300 --repeats 5

Variants, alternated within each repeat (read, scatter, scatter-nocache,
read, ...) and reported as medians:

* ``read``             -- every worker opens the prepared file (data.cache:
                          its split in memory);
* ``scatter``          -- only rank 0 opens it and sends each copy its
                          snippets (default worker cache, 128 MiB: full
                          MNIST's 47.5 MiB of train data fits, so snippets
                          seen in an earlier epoch are not sent again);
* ``scatter-nocache``  -- ``cluster.worker_cache_mb = 0``: every copy's
                          snippets are sent, every time (the cost of the
                          transfers themselves).

samples/s is summary.json's (first step to last); master CPU per step is
``master_cpu_s / steps`` (rank 0's process CPU over the same window).
Target: scatter >= 0.9 x read.  Writes ``results/scatter.json`` with the
exact commands.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import LAYERS, bench_env, prepare, raven_command, write_raven_config, write_result  # noqa: E402

#: the line a scatter run ends with (protocol/training.py: Trainer._say_data)
DATA_LINE = re.compile(r"rank 0 read ([\d,]+) snippets ahead \((\d+) ms\) and ([\d,]+) on demand \((\d+) ms\)")

LENET = """
[data]
path = "{data}"
test_split = ""
[model]
layers = [
  {{type = "reshape", shape = [1, 28, 28]}},
  {{type = "conv2d", filters = 6, kernel_size = 5, padding = 2, activation = "relu"}},
  {{type = "max_pool2d", pool_size = 2}},
  {{type = "conv2d", filters = 16, kernel_size = 5, activation = "relu"}},
  {{type = "max_pool2d", pool_size = 2}},
  {{type = "dense", units = 120, activation = "relu"}},
  {{type = "dense", units = 84, activation = "relu"}},
  {{type = "dense", units = 10}},
]
seed = 0
[optimizer]
name = "sgd"
lr = 0.01
momentum = 0.9
[train]
epochs = 100
batch_size = 128
task_snippets = 2
max_steps = {steps}
log_every = 100000
eval_every = 0
[run]
progress = "none"
"""

VARIANTS = {
    "read": [],
    "scatter": ['data.delivery="scatter"'],
    "scatter-nocache": ['data.delivery="scatter"', "cluster.worker_cache_mb=0"],
}


def config(model: str, tmp: Path, data: Path, steps: int) -> Path:
    if model == "mlp":   # the bench_vs_ddp.py model: 128 samples per worker per step, one task each
        return write_raven_config(tmp / "mlp.toml", data, batch_size=256, task_snippets=4, max_steps=steps,
                                  layers=LAYERS)
    p = tmp / "lenet.toml"        # data/mnist-lenet.toml's model and batch
    p.write_text(LENET.format(data=data, steps=steps))
    return p


def one(cfg: Path, tmp: Path, sets) -> dict:
    rd = tmp / f"run-{time.time_ns()}"
    cmd = raven_command(cfg, rd, 3, [*sets, 'run.progress="lines"'])   # (lines: the notes are printed)
    res = subprocess.run(cmd, capture_output=True, text=True, env=bench_env(), timeout=1800)
    if res.returncode != 0:
        raise SystemExit(f"raven-hpc failed ({' '.join(cmd)}):\n{res.stdout[-5000:]}\n{res.stderr[-5000:]}")
    s = json.loads((rd / "summary.json").read_text())
    steps = max(1, s["steps"])
    out = {"samples_per_s": s["samples_per_s"], "master_cpu_ms_per_step": round(1e3 * s["master_cpu_s"] / steps, 3),
           "wall_s": s["wall_s"], "steps": steps, "bytes_out": s["bytes_out"], "cmd": " ".join(cmd)}
    data = [json.loads(x) for x in (rd / "ledger.jsonl").read_text().splitlines() if '"sent"' in x]
    out["snippets_sent"] = sum(len(e["snippets"]) for e in data if e.get("ev") == "sent")
    m = DATA_LINE.search(res.stdout)
    if m:
        ahead, ahead_ms, now, now_ms = (int(g.replace(",", "")) for g in m.groups())
        out.update(read_ahead=ahead, read_ahead_ms=ahead_ms, read_on_demand=now, read_on_demand_ms=now_ms)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mlp", "lenet"], choices=["mlp", "lenet"])
    ap.add_argument("--steps", type=int, default=400, help="steps per run (MLP); LeNet runs half as many")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = ap.parse_args()
    result = {"ranks": 3, "repeats": args.repeats, "models": {}}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        data = prepare(tmp)
        for model in args.models:
            steps = args.steps if model == "mlp" else max(1, args.steps // 2)
            cfg = config(model, tmp, data, steps)
            runs = {v: [] for v in args.variants}
            for rep in range(args.repeats):
                for v in args.variants:
                    r = one(cfg, tmp, VARIANTS[v])
                    runs[v].append(r)
                    extra = (f"; rank 0 read {r['read_ahead']:,} ahead ({r['read_ahead_ms']} ms), "
                             f"{r['read_on_demand']:,} on demand" if "read_ahead" in r else "")
                    print(f"{model} {v:<16} rep {rep}: {r['samples_per_s']:>9,.0f} samples/s, master "
                          f"{r['master_cpu_ms_per_step']:.3f} ms CPU/step, {r['snippets_sent']:,} snippets sent"
                          f"{extra}", flush=True)
            med = {v: {"samples_per_s": statistics.median(r["samples_per_s"] for r in rs),
                       "master_cpu_ms_per_step": statistics.median(r["master_cpu_ms_per_step"] for r in rs)}
                   for v, rs in runs.items()}
            summary = {"steps": steps, "median": med, "runs": runs}
            if "read" in med:
                base = med["read"]["samples_per_s"]
                for v in med:
                    if v != "read":
                        summary[f"{v}/read"] = round(med[v]["samples_per_s"] / base, 3)
            result["models"][model] = summary
            print(f"\n{model}: median samples/s and master CPU per step ({args.repeats} repeats, {steps} steps)")
            for v, m in med.items():
                ratio = summary.get(f"{v}/read")
                mark = "" if ratio is None else f"  {ratio:.3f} x read" + (
                    ("  (target >= 0.9: MET)" if ratio >= 0.9 else "  (target >= 0.9: MISSED)")
                    if v == "scatter" else "")
                print(f"  {v:<16} {m['samples_per_s']:>9,.0f} samples/s  {m['master_cpu_ms_per_step']:.3f} ms"
                      f"{mark}")
            print(flush=True)
    p = write_result("scatter.json", result)
    print(f"wrote {p}")


if __name__ == "__main__":
    main()
