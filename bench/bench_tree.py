#!/usr/bin/env python
"""Scale-out benchmarks: what the master costs while it waits, and what the
pure scheduler costs per step flat vs under gradient collectors.

    python bench/bench_tree.py                     # both parts (~3 min on 2 cores)
    python bench/bench_tree.py wait                # one part
    python bench/bench_tree.py scheduler --sizes 64 256 1024 --group 16

Parts (each prints a table and writes bench/results/tree-<part>.json):

wait       ``-n 3``, flat star (``cluster.collectors = 0``), MLP 784-64-10,
           one 32-sample task per worker per step (``max_chunk = 1``), both
           workers sleep ``--sleep`` seconds (default 0.02) before each task
           (``[faults]`` mode ``sleep``), so the master spends most of every
           step waiting.  Reported: ``master_cpu_fraction`` of summary.json
           (master CPU / wall, start-up included) and the steady fraction
           (the difference of a 2N- and an N-step run, so start-up cancels),
           master CPU ms per step, step wall ms (medians over ``--repeats``).  A master that does not spin stays far
           below one core.
scheduler  ``raven_hpc.protocol.scheduler.Scheduler`` alone (no MPI, no
           messages): a fake clock, simulated workers with fixed speeds,
           ``--tasks`` tasks of 32 samples per worker per step, every copy
           completing at its predicted finish.  CPU (``time.process_time``)
           spent in the scheduler's calls per step -- ``begin_step``,
           ``submit``, ``assign``, ``complete``, ``backups`` (while the step's
           tail runs), ``next_expected``, ``record_applied``, ``forget``,
           ``drain_events`` -- for three roles at each size W:
           *flat*: one scheduler over W workers, ``max_chunk`` 16 (the
           master of a star); *root*: one scheduler over W / ``--group``
           collectors, each as fast as its group, ``max_chunk`` 16 x group
           (what the master does with collectors); *collector*: one
           scheduler over ``--group`` workers, ``max_chunk`` 1, given its
           share of the step's tasks (what each collector does).
           The first ``--warm`` steps (speeds being learnt) are not counted.
"""
from __future__ import annotations

import argparse
import heapq
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (data_source, prepare, raven_command, run_raven_cmd, table, write_raven_config,  # noqa: E402
                     write_result)

PARTS = ("wait", "scheduler", "costs")
SNIPPET = 32
HOUSEKEEPING_S = 0.001     # how often the master and collectors look for backups (master.HOUSEKEEPING_S)


# ---------------------------------------------------------------------- wait

def wait_part(args, work: Path) -> dict:
    data = prepare(work, snippet_size=SNIPPET)
    cfg = write_raven_config(work / "wait.toml", data, batch_size=2 * SNIPPET, task_snippets=1,
                             max_steps=args.wait_steps, layers=(64,))
    sets = ["cluster.collectors=0", "cluster.max_chunk=1", "data.cache=false",
            f'faults.rules=[{{rank = [1, 2], mode = "sleep", seconds = {args.sleep!r}}}]']
    print(f"\n== wait: -n 3 flat, MLP 784-64-10, 1 task of {SNIPPET} samples per worker per step, both workers "
          f"sleep {1e3 * args.sleep:g} ms per task; {args.wait_steps} steps x {args.repeats} runs", flush=True)
    # Start-up (kernel compilation or cache loads on the first steps) is paid
    # once; the steady cost of waiting is the difference between a run of
    # 2N steps and one of N: (CPU_2N - CPU_N) / (wall_2N - wall_N).
    runs, rows, commands = [], [], []
    for rep in range(args.repeats):
        got = {}
        for n in (args.wait_steps, 2 * args.wait_steps):
            run_dir = work / f"wait-{rep}-{n}"
            these = sets + [f"train.max_steps={n}"]
            commands.append(" ".join(raven_command(cfg, run_dir, 3, these)))
            got[n] = run_raven_cmd(cfg, run_dir, 3, these)
        s1, s2 = got[args.wait_steps], got[2 * args.wait_steps]
        d_cpu, d_wall = s2["master_cpu_s"] - s1["master_cpu_s"], s2["wall_s"] - s1["wall_s"]
        d_steps = max(1, s2["steps"] - s1["steps"])
        rec = {"master_cpu_fraction": s2["master_cpu_fraction"], "steady_cpu_fraction": d_cpu / max(d_wall, 1e-9),
               "cpu_ms_per_step": 1e3 * d_cpu / d_steps, "step_ms": 1e3 * d_wall / d_steps,
               "runs": {str(k): {"master_cpu_s": v["master_cpu_s"], "wall_s": v["wall_s"], "steps": v["steps"],
                                 "step_ms_parts": v["step_ms"], "messages": v["messages"]} for k, v in got.items()}}
        runs.append(rec)
        rows.append([rep + 1, f"{rec['master_cpu_fraction']:.3f}", f"{rec['steady_cpu_fraction']:.3f}",
                     f"{rec['cpu_ms_per_step']:.2f}", f"{rec['step_ms']:.1f}"])
        print(f"  [{rep + 1}/{args.repeats}] steady master CPU fraction {rec['steady_cpu_fraction']:.3f}", flush=True)
    summary = {k: statistics.median(r[k] for r in runs)
               for k in ("master_cpu_fraction", "steady_cpu_fraction", "cpu_ms_per_step", "step_ms")}
    rows.append(["median", f"{summary['master_cpu_fraction']:.3f}", f"{summary['steady_cpu_fraction']:.3f}",
                 f"{summary['cpu_ms_per_step']:.2f}", f"{summary['step_ms']:.1f}"])
    table(["run", "whole-run CPU fraction", "steady CPU fraction", "steady CPU ms/step", "step ms"], rows,
          f"wait (workers sleep {1e3 * args.sleep:g} ms per task; steady = (CPU_2N - CPU_N) / (wall_2N - wall_N), "
          f"N = {args.wait_steps} steps)")
    return {"config": {"ranks": 3, "model": [784, 64, 10], "sleep_s": args.sleep, "steps": args.wait_steps},
            "summary": summary, "runs": runs, "commands": commands}


# ---------------------------------------------------------------------- scheduler

def simulate(members: int, tasks_per_step: int, *, steps: int, warm: int, max_chunk: int, sec_per_sample: float,
             overhead_s: float = 2e-4, backups: bool = True, spread: float = 0.1, seed: int = 0) -> dict:
    """CPU seconds per step inside one Scheduler over ``members`` simulated
    ranks (speeds ``sec_per_sample`` x (1 + up to ``spread``), fixed by
    ``seed``) driven through ``steps`` steps of ``tasks_per_step`` tasks."""
    import random

    from raven_hpc.protocol.scheduler import Scheduler, Task

    rng = random.Random(seed)
    speed = {r: sec_per_sample * (1 + spread * rng.random()) for r in range(1, members + 1)}
    sched = Scheduler(list(speed), prefetch=2, max_chunk=max_chunk)
    now, next_id, next_backup = 0.0, 1, 0.0
    busy = dict.fromkeys(speed, 0.0)
    cpu, copies, calls = [], [], []
    pt = time.process_time
    for step in range(steps):
        spent = 0.0
        ncalls = 0
        events: list = []
        tasks = []
        for k in range(tasks_per_step):
            tasks.append(Task(next_id, step, (next_id,), samples=SNIPPET))
            next_id += 1
        t = pt()
        sched.begin_step(step, now)
        sched.submit(tasks)
        spent += pt() - t
        open_ids = {x.task_id for x in tasks}
        given = 0
        while open_ids:
            t = pt()
            out = sched.assign(now)
            if backups and now >= next_backup:      # the master looks at most every HOUSEKEEPING_S
                next_backup = now + HOUSEKEEPING_S
                out += sched.backups(now)
                ncalls += 1
            sched.next_expected()
            spent += pt() - t
            ncalls += 2
            for rank, task in out:
                start = max(busy[rank], now)
                busy[rank] = start + task.samples * speed[rank]
                heapq.heappush(events, (busy[rank] + overhead_s, rank, task.task_id, task.samples * speed[rank]))
                given += 1
            if not events:
                raise RuntimeError("the simulated step stalled: nothing out and tasks open")
            now, rank, tid, compute = heapq.heappop(events)
            t = pt()
            task = sched.task(tid)
            verdict = sched.complete(rank, tid, now, compute_s=compute)
            spent += pt() - t
            ncalls += 1
            if verdict.accept:
                open_ids.discard(tid)
                if task is not None:
                    open_ids.difference_update(task.merged)
        ids = [x.task_id for x in tasks]
        t = pt()
        sched.record_applied(ids, step)
        sched.forget(ids)
        sched.drain_events()
        spent += pt() - t
        # copies still out (backups) land before the next step; their workers are busy till then
        while events:
            now, rank, tid, compute = heapq.heappop(events)
            t = pt()
            sched.complete(rank, tid, now, compute_s=compute)
            sched.forget(ids)
            spent += pt() - t
        if step >= warm:
            cpu.append(spent)
            copies.append(given)
            calls.append(ncalls)
    return {"cpu_ms_per_step": 1e3 * statistics.median(cpu), "cpu_ms_per_step_mean": 1e3 * statistics.fmean(cpu),
            "copies_per_step": statistics.median(copies), "calls_per_step": statistics.median(calls),
            "members": members, "tasks_per_step": tasks_per_step, "max_chunk": max_chunk}


def scheduler_part(args) -> dict:
    g, k, sps = args.group, args.tasks, args.sec_per_sample
    print(f"\n== scheduler: {k} tasks of {SNIPPET} samples per worker per step, groups of {g}, sizes {args.sizes}, "
          f"{args.sched_steps} steps ({args.warm} not counted), backups {'on' if args.backups else 'off'}", flush=True)
    rows, out = [], []
    for w in args.sizes:
        if w % g:
            raise SystemExit(f"--sizes: {w} workers do not cut into groups of {g}")
        kw = dict(steps=args.sched_steps, warm=args.warm, backups=args.backups)
        flat = simulate(w, k * w, max_chunk=16, sec_per_sample=sps, **kw)
        root = simulate(w // g, k * w, max_chunk=16 * g, sec_per_sample=sps / g, **kw)
        coll = simulate(g, k * g, max_chunk=1, sec_per_sample=sps, **kw)
        rec = {"workers": w, "collectors": w // g, "group": g, "flat": flat, "root": root, "collector": coll}
        out.append(rec)
        rows.append([w, w // g, f"{flat['cpu_ms_per_step']:.3f}", flat["copies_per_step"],
                     f"{root['cpu_ms_per_step']:.3f}", root["copies_per_step"],
                     f"{coll['cpu_ms_per_step']:.3f}", coll["copies_per_step"],
                     f"{flat['cpu_ms_per_step'] / root['cpu_ms_per_step']:.1f}"])
        print(f"  {w} workers: flat {flat['cpu_ms_per_step']:.3f} ms, root {root['cpu_ms_per_step']:.3f} ms, "
              f"collector {coll['cpu_ms_per_step']:.3f} ms per step", flush=True)
    table(["workers", "collectors", "flat ms/step", "flat copies", "root ms/step", "root copies",
           "collector ms/step", "coll. copies", "flat/root"], rows,
          f"scheduler CPU per step (median; copies = copies handed out per step; collector = one group of {g})")
    return {"config": {"tasks_per_worker": k, "group": g, "sizes": args.sizes, "steps": args.sched_steps,
                       "warm": args.warm, "sec_per_sample": sps, "backups": args.backups}, "sizes": out}


# ---------------------------------------------------------------------- costs

def _per_call_ms(fn, repeats: int) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` calls (after one warm call)."""
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(1e3 * (time.perf_counter() - t))
    return statistics.median(out)


def measure_costs(layers=(512, 256), samples: int = 128, repeats: int = 30) -> dict:
    """The per-role CPU costs of one step, on one core, for the MLP
    784-<layers>-10: a worker's gradient of ``samples`` samples; a leader's
    work per received result (the receive copy, the finiteness dot, the
    float64 accumulate, a fingerprint when compared) and per sum it sends up
    (float64 -> float32 cast); the master's optimizer update."""
    import numpy as np

    from raven_hpc.engine import build_model, make_optimizer
    from raven_hpc.kernels.reduce import FP_SIZE, accumulate, fingerprint

    spec = {"layers": [{"type": "dense", "units": u, "activation": "relu"} for u in layers]
            + [{"type": "dense", "units": 10}], "loss": "softmax_cross_entropy", "init": "he", "seed": 0}
    model = build_model(spec, (784,), 10)
    n = model.num_params
    rng = np.random.default_rng(0)
    x = rng.standard_normal((samples, 784)).astype(np.float32)
    y = rng.integers(0, 10, samples).astype(np.int64)
    grads = np.zeros(n, np.float32)
    model.bind_grads(grads)
    compute = _per_call_ms(lambda: model.loss_and_grad(x, y, accumulate=False), repeats)
    g = rng.standard_normal(n).astype(np.float32)
    dst, acc, fp = np.empty_like(g), np.zeros(n), np.zeros(FP_SIZE)
    opt = make_optimizer({"name": "sgd", "lr": 0.05, "momentum": 0.9}, model)
    params = model.params
    costs = {
        "num_params": n, "result_mb": 4 * n / 2**20, "samples": samples,
        "worker_compute_ms": compute,
        "receive_copy_ms": _per_call_ms(lambda: np.copyto(dst, g), repeats),
        "dot_ms": _per_call_ms(lambda: np.dot(g, g), repeats),
        "accumulate_ms": _per_call_ms(lambda: accumulate(acc, g), repeats),
        "fingerprint_ms": _per_call_ms(lambda: fingerprint(g, 1, fp), repeats),
        "cast_ms": _per_call_ms(lambda: np.copyto(dst, acc, casting="same_kind"), repeats),
        "update_ms": _per_call_ms(lambda: opt.step(params[:model.num_trainable], g[:model.num_trainable],
                                                    scale=1.0 / samples, lr=0.05), repeats),
    }
    costs["per_result_ms"] = costs["receive_copy_ms"] + costs["dot_ms"] + costs["accumulate_ms"]
    return costs


def project(c: dict, workers: int, shape: str, fan_in: int = 16, gbps: float = 10.0, latency_us: float = 2.0,
            overlap: float = 0.5) -> dict:
    """Projected step time and efficiency of ``workers`` workers (one per
    core), each computing ``c["samples"]`` samples a step as two tasks.

    ``shape``: ``"star"`` (every result to rank 0), ``"tree"`` (collectors
    with ``fan_in`` children per leader, as built), ``"sharded"`` (a
    bandwidth-optimal summation: every rank sums 1/W of every result and
    sends its slice of the new parameters to all -- not built; the bound a
    reduction that reads each byte once per rank would reach).  A leader's
    work per result is ``per_result_ms`` of CPU and ``bytes / link`` on its
    network link, whichever is longer (they overlap); ``overlap`` of a
    leader's children's results (those of the first task) arrive while the
    second task computes and are absorbed then; the rest queue after the
    last compute.  Parameters go down as one send per child on each level.
    """
    import math

    mb = c["result_mb"] * 2**20
    link_ms = mb / (gbps * 1e9) * 1e3             # one result over one link
    lat = latency_us * 1e-3
    T = c["worker_compute_ms"]
    r = c["per_result_ms"]
    ingest = max(r, link_ms)
    if shape == "star":
        f, levels = workers, 1
    elif shape == "tree":
        f = min(fan_in, workers)
        levels = max(1, math.ceil(math.log(workers) / math.log(f))) if workers > 1 else 1
    elif shape == "sharded":
        # reduce-scatter: each rank takes W slices of n/W (one result's worth
        # of bytes and CPU); all-gather of the updated slices: n out and in
        absorbed = overlap * (ingest + link_ms)
        t = (T + max(0.0, ingest + link_ms - absorbed) + c["update_ms"] / workers + link_ms
             + 2 * workers * lat)
        return {"shape": shape, "workers": workers, "step_ms": t, "efficiency": T / t, "levels": 1}
    else:
        raise ValueError(shape)
    t = T
    # the lowest level absorbs the first task's results while the second computes
    first = f * ingest
    t += max(f * ingest * (1 - overlap), first - T * overlap) + c["cast_ms"] + link_ms + lat
    # higher levels get their children's sums at about the same time
    t += (levels - 1) * (f * ingest + c["cast_ms"] + link_ms + lat)
    t += c["update_ms"]
    t += levels * (f * link_ms + lat)              # parameters down, one send per child
    return {"shape": shape, "workers": workers, "step_ms": t, "efficiency": T / t, "levels": levels}


def costs_part(args) -> dict:
    print(f"\n== costs: per-role CPU of one step on one core (MLP 784-{'-'.join(map(str, args.layers))}-10, "
          f"{args.samples} samples per worker), then the projected efficiency", flush=True)
    c = measure_costs(tuple(args.layers), args.samples)
    rows = [[k, f"{v:.3f}" if isinstance(v, float) else v] for k, v in c.items()]
    table(["cost", "ms (median)"], rows, "measured per-role costs")
    proj, prow = [], []
    for w in args.project:
        cells = [w]
        for shape in ("star", "tree", "sharded"):
            p = project(c, w, shape, fan_in=args.fan_in, gbps=args.gbps, latency_us=args.latency_us)
            proj.append(p)
            cells.append(f"{100 * p['efficiency']:.0f}% ({p['step_ms']:.1f} ms)")
        prow.append(cells)
    table(["workers", "star", f"tree (fan_in {args.fan_in})", "sharded (not built)"], prow,
          f"projected efficiency = compute / step time; {args.gbps:g} GB/s links, {args.latency_us:g} us latency")
    return {"config": {"layers": args.layers, "samples": args.samples, "gbps": args.gbps,
                       "latency_us": args.latency_us, "fan_in": args.fan_in}, "costs": c, "projection": proj}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parts", nargs="*", metavar="PART", help=f"which parts: {', '.join(PARTS)} (default: all)")
    ap.add_argument("--sleep", type=float, default=0.02, help="wait: seconds each worker sleeps per task")
    ap.add_argument("--wait-steps", type=int, default=150, help="wait: steps per run")
    ap.add_argument("--repeats", type=int, default=3, help="wait: runs (medians reported)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024], help="scheduler: simulated workers")
    ap.add_argument("--group", type=int, default=16, help="scheduler: workers per collector")
    ap.add_argument("--tasks", type=int, default=2, help="scheduler: tasks per worker per step")
    ap.add_argument("--sched-steps", type=int, default=12, help="scheduler: simulated steps")
    ap.add_argument("--warm", type=int, default=2, help="scheduler: first steps not counted")
    ap.add_argument("--sec-per-sample", type=float, default=1e-4, help="scheduler: simulated worker speed")
    ap.add_argument("--no-backups", dest="backups", action="store_false", help="scheduler: no backups() calls")
    ap.add_argument("--layers", type=int, nargs="+", default=[512, 256], help="costs: hidden layers of the MLP")
    ap.add_argument("--samples", type=int, default=128, help="costs: samples per worker per step")
    ap.add_argument("--project", type=int, nargs="+", default=[64, 256, 1024], help="costs: workers projected")
    ap.add_argument("--fan-in", type=int, default=16, help="costs: children per leader in the tree")
    ap.add_argument("--gbps", type=float, default=10.0, help="costs: link bandwidth, GB/s")
    ap.add_argument("--latency-us", type=float, default=2.0, help="costs: message latency, microseconds")
    args = ap.parse_args()
    bad = [p for p in args.parts if p not in PARTS]
    if bad:
        ap.error(f"unknown part(s) {', '.join(bad)}; choose from {', '.join(PARTS)}")
    parts = [p for p in PARTS if p in args.parts] or list(PARTS)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-tree-"))
    try:
        for part in parts:
            tp = time.perf_counter()
            if part == "wait":
                print(f"data: {data_source()}", flush=True)
                result = wait_part(args, work)
            elif part == "costs":
                result = costs_part(args)
            else:
                result = scheduler_part(args)
            result.update(part=part, elapsed_s=round(time.perf_counter() - tp, 1),
                          when=time.strftime("%Y-%m-%d %H:%M:%S"))
            path = write_result(f"tree-{part}.json", result)
            print(f"  ({part}: {result['elapsed_s']:.0f} s; wrote {path})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
