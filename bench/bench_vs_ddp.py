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
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (LAYERS, REPO, SHARED, prepare, run_ddp_procs, run_raven_cmd,  # noqa: E402,F401
                     write_raven_config, write_result)


def raven_config(path: Path, data: Path, args) -> Path:
    return write_raven_config(path, data, batch_size=args.batch * args.workers, task_snippets=args.batch // 32,
                              max_steps=args.steps, lr=args.lr, layers=LAYERS)


def run_raven(data: Path, tmp: Path, args) -> dict:
    cfg = raven_config(tmp / "bench.toml", data, args)
    s = run_raven_cmd(cfg, tmp / f"raven-{time.time_ns()}", args.workers + 1)
    return {"samples_per_s": s["samples_per_s"], "wall_s": s["wall_s"], "master_cpu_s": s["master_cpu_s"],
            "steps": s["steps"]}


def run_ddp(data: Path, tmp: Path, args) -> dict:
    return run_ddp_procs(data, tmp, workers=args.workers, steps=args.steps, batch=args.batch, lr=args.lr,
                         layers=LAYERS)


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
    tag = f"vs_ddp_w{args.workers}"
    write_result(f"{tag}.json", result)


if __name__ == "__main__":
    main()
