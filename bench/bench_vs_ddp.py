#!/usr/bin/env python
"""raven-hpc (1 master + W workers) against PyTorch DDP (gloo, W processes,
1 thread each): same model, same global batch, same data, same optimizer, in
one run.  Prints samples/s of both and the ratio; writes bench/results/*.json.

    python bench/bench_vs_ddp.py                       # full MNIST if ../shared has it
    python bench/bench_vs_ddp.py --steps 600 --repeats 3

Both sides time the training loop only (after start-up and compilation):
raven-hpc's summary.json ``samples_per_s`` is samples / wall from the first
step to the last; DDP's is measured the same way on rank 0 after a barrier.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "mnist"
LAYERS = (512, 256)


def prepare(tmp: Path) -> Path:
    from raven_hpc.data import prepare as prep

    src = SHARED if SHARED.is_dir() else REPO / "data" / "mnist-small"
    out = tmp / "mnist.h5"
    prep(str(src), str(out), kind="mnist", snippet_size=32)
    return out


def raven_config(path: Path, data: Path, args) -> Path:
    layers = ",\n".join(f'  {{type = "dense", units = {u}, activation = "relu"}}' for u in LAYERS)
    path.write_text(f"""
[data]
path = "{data}"
test_split = ""
[model]
layers = [
{layers},
  {{type = "dense", units = 10}},
]
seed = 0
[optimizer]
name = "sgd"
lr = {args.lr}
momentum = 0.9
[train]
epochs = 100
batch_size = {args.batch * args.workers}
task_snippets = {args.batch // 32}
max_steps = {args.steps}
log_every = 100000
eval_every = 0
[run]
progress = "none"
[cluster]
prefetch = 2
""")
    return path


def run_raven(data: Path, tmp: Path, args) -> dict:
    cfg = raven_config(tmp / "bench.toml", data, args)
    run_dir = tmp / f"raven-{time.time_ns()}"
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    bindir = Path(sys.executable).parent
    mpiexec = str(bindir / "mpiexec") if (bindir / "mpiexec").exists() else "mpiexec"
    cmd = [mpiexec, "-n", str(args.workers + 1), str(bindir / "raven-hpc"), "train", str(cfg),
           "--run-dir", str(run_dir)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if res.returncode != 0:
        raise SystemExit(f"raven-hpc failed:\n{res.stdout}\n{res.stderr}")
    s = json.loads((run_dir / "summary.json").read_text())
    return {"samples_per_s": s["samples_per_s"], "wall_s": s["wall_s"], "master_cpu_s": s["master_cpu_s"],
            "steps": s["steps"]}


DDP_WORKER = r'''
import os, sys, time, json
import numpy as np
import torch, torch.distributed as dist
torch.set_num_threads(1)
rank, world = int(sys.argv[1]), int(sys.argv[2])
data, steps, batch, lr, port = sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]), sys.argv[7]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
dist.init_process_group("gloo", rank=rank, world_size=world)
from raven_hpc.data import open_dataset
with open_dataset(data) as ds:
    x, y = ds.split("train").load_all()
x = torch.from_numpy(x.reshape(len(x), -1)); y = torch.from_numpy(y)
torch.manual_seed(0)
layers, d = [], 784
for u in (LAYERS):
    layers += [torch.nn.Linear(d, u), torch.nn.ReLU()]; d = u
layers.append(torch.nn.Linear(d, 10))
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Sequential(*layers))
opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
loss_fn = torch.nn.CrossEntropyLoss()
n = len(y)
def step(i):
    perm_start = ((i * world + rank) * batch) % (n - batch)
    xb, yb = x[perm_start:perm_start + batch], y[perm_start:perm_start + batch]
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(xb), yb)
    loss.backward()
    opt.step()
for i in range(10):
    step(i)
dist.barrier()
t0 = time.perf_counter()
for i in range(steps):
    step(i)
dist.barrier()
wall = time.perf_counter() - t0
if rank == 0:
    print(json.dumps({"samples_per_s": steps * batch * world / wall, "wall_s": wall}))
dist.destroy_process_group()
'''


def run_ddp(data: Path, tmp: Path, args) -> dict:
    script = tmp / "ddp_worker.py"
    script.write_text(DDP_WORKER.replace("(LAYERS)", repr(LAYERS)))
    port = str(29500 + os.getpid() % 1000)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(args.workers), str(data), str(args.steps),
                               str(args.batch), str(args.lr), port],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for r in range(args.workers)]
    outs = [p.communicate(timeout=900) for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit("DDP failed:\n" + "\n".join(o[1][-3000:] for o in outs))
    return json.loads(outs[0][0].strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128, help="samples per worker per step (multiple of 32)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=3, help="alternate raven/DDP this many times; report medians")
    args = ap.parse_args()
    import statistics

    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        data = prepare(tmp)
        rows = []
        for rep in range(args.repeats):
            r = run_raven(data, tmp, args)
            d = run_ddp(data, tmp, args)
            rows.append({"raven": r, "ddp": d})
            print(f"[{rep + 1}/{args.repeats}] raven-hpc {r['samples_per_s']:>9,.0f} samples/s   "
                  f"DDP {d['samples_per_s']:>9,.0f} samples/s   ratio {r['samples_per_s'] / d['samples_per_s']:.2f}",
                  flush=True)
    rv = statistics.median(x["raven"]["samples_per_s"] for x in rows)
    dv = statistics.median(x["ddp"]["samples_per_s"] for x in rows)
    result = {"model": [784, *LAYERS, 10], "workers": args.workers, "batch_per_worker": args.batch,
              "steps": args.steps,
              "raven_samples_per_s": rv, "ddp_samples_per_s": dv, "ratio": rv / dv, "runs": rows,
              "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(f"median: raven-hpc {rv:,.0f} samples/s, PyTorch DDP (gloo) {dv:,.0f} samples/s, ratio {rv / dv:.2f}x")
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    tag = f"vs_ddp_w{args.workers}"
    (out / f"{tag}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
