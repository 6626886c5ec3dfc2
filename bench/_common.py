"""Shared helpers of the benchmarks in bench/: data preparation, raven-hpc
config writing and launching (``mpiexec ... raven-hpc train``), and the
PyTorch DDP (gloo) reference runner.

Used by ``bench_vs_ddp.py`` and ``bench_poc.py``; not a public API.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "mnist"
LAYERS = (512, 256)
RESULTS = REPO / "bench" / "results"

#: one thread per rank / process on every side
THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"}


def bench_env() -> dict:
    return dict(os.environ, **THREAD_ENV)


def prepare(tmp: Path, snippet_size: int = 32, name: str = "mnist.h5") -> Path:
    """Full MNIST (``../shared/data/mnist``) if present, else the embedded
    subset, prepared into ``tmp`` with ``snippet_size``-sample snippets."""
    from raven_hpc.data import prepare as prep

    src = SHARED if SHARED.is_dir() else REPO / "data" / "mnist-small"
    out = tmp / name
    prep(str(src), str(out), kind="mnist", snippet_size=snippet_size)
    return out


def data_source() -> str:
    return str(SHARED) if SHARED.is_dir() else str(REPO / "data" / "mnist-small")


def write_raven_config(path: Path, data: Path, *, batch_size: int, task_snippets: int, max_steps: int,
                       lr: float = 0.05, layers=LAYERS, prefetch: int = 2, extra: str = "") -> Path:
    """A raven-hpc config for an MLP 784-layers-10 with SGD momentum 0.9,
    no evaluation, no progress output.  ``extra`` is appended verbatim (TOML)."""
    body = ",\n".join(f'  {{type = "dense", units = {u}, activation = "relu"}}' for u in layers)
    path.write_text(f"""
[data]
path = "{data}"
test_split = ""
[model]
layers = [
{body},
  {{type = "dense", units = 10}},
]
seed = 0
[optimizer]
name = "sgd"
lr = {lr}
momentum = 0.9
[train]
epochs = 100
batch_size = {batch_size}
task_snippets = {task_snippets}
max_steps = {max_steps}
log_every = 100000
eval_every = 0
[run]
progress = "none"
[cluster]
prefetch = {prefetch}
{extra}""")
    return path


def _bindir() -> Path:
    return Path(sys.executable).parent


def mpiexec() -> str:
    b = _bindir()
    return str(b / "mpiexec") if (b / "mpiexec").exists() else "mpiexec"


def mpiexec_flags(exe: str) -> list[str]:
    """What Open MPI needs to run more ranks than cores here (MPICH needs nothing)."""
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout.lower()
    except (OSError, subprocess.TimeoutExpired):
        return []
    if not any(k in out for k in ("open mpi", "open-mpi", "openrte")):
        return []
    return ["--oversubscribe", "--bind-to", "none"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])


def raven_command(cfg: Path, run_dir: Path, nranks: int, sets=()) -> list[str]:
    exe = mpiexec()
    cmd = [exe, *mpiexec_flags(exe), "-n", str(nranks), str(_bindir() / "raven-hpc"), "train", str(cfg),
           "--run-dir", str(run_dir)]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def run_raven_cmd(cfg: Path, run_dir: Path, nranks: int, sets=(), timeout: float = 900) -> dict:
    """Run ``mpiexec -n nranks raven-hpc train cfg --run-dir run_dir --set ...``
    and return its summary.json (plus ``run_dir``, ``cmd`` and ``elapsed_s``,
    the wall time of the whole launch)."""
    cmd = raven_command(cfg, run_dir, nranks, sets)
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=bench_env(), timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise SystemExit(f"raven-hpc timed out after {timeout:.0f} s: {' '.join(cmd)}\n"
                         f"{(exc.stdout or '')[-3000:]}\n{(exc.stderr or '')[-3000:]}") from None
    elapsed = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"raven-hpc failed ({' '.join(cmd)}):\n{res.stdout[-5000:]}\n{res.stderr[-5000:]}")
    s = json.loads((run_dir / "summary.json").read_text())
    s["run_dir"] = str(run_dir)
    s["cmd"] = cmd
    s["elapsed_s"] = round(elapsed, 2)
    return s


CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (``/proc/<pid>/stat``); None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()   # after "pid (comm) ": state is field 3
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rank_pids(root: int) -> dict[int, int]:
    """MPI rank -> pid of the processes below ``root`` (the launcher), from
    the rank variable MPICH (``PMI_RANK``) or Open MPI
    (``OMPI_COMM_WORLD_RANK``) puts in each rank's environment."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            text = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = {}, list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for var in (b"PMI_RANK=", b"OMPI_COMM_WORLD_RANK="):
            hit = next((e[len(var):] for e in env if e.startswith(var)), None)
            if hit is not None and hit.isdigit():
                out.setdefault(int(hit), pid)   # a rank that forks keeps its first pid
                break
    return out


def _cpu_of(pids: dict[int, int]) -> dict[int, float | None]:
    return {r: proc_cpu_s(p) for r, p in pids.items()}


def run_raven_sampled(cfg: Path, run_dir: Path, nranks: int, sets=(), warm_steps: int = 10,
                      timeout: float = 900, poll_s: float = 0.02) -> dict:
    """Like :func:`run_raven_cmd`, and every rank's CPU over a training
    window read from ``/proc`` by this process (no product code measures
    itself): the window opens when the master's ``metrics.jsonl`` shows step
    ``warm_steps`` (``train.log_every`` is set to it, so start-up, kernel
    loading and the first steps stay outside) and closes when
    ``summary.json`` appears (training done, before the ranks stop).
    Adds ``rank_cpu_s`` (rank -> CPU seconds in the window), ``window_steps``,
    ``window_wall_s`` and ``window_from_step``."""
    sets = [*sets, f"train.log_every={warm_steps}"]
    cmd = raven_command(cfg, run_dir, nranks, sets)
    metrics, summary = run_dir / "metrics.jsonl", run_dir / "summary.json"
    t0 = time.perf_counter()
    with open(run_dir.parent / f"{run_dir.name}.out", "w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=bench_env(),
                                start_new_session=True)
        pids: dict[int, int] = {}
        begin = end = None
        try:
            while proc.poll() is None:
                if time.perf_counter() - t0 > timeout:
                    os.killpg(proc.pid, 9)
                    proc.wait()
                    out.seek(0)
                    raise SystemExit(f"raven-hpc timed out after {timeout:.0f} s: {' '.join(cmd)}\n"
                                     f"{out.read()[-3000:]}")
                if begin is None and metrics.exists():
                    step = next((r["step"] for r in read_jsonl(metrics) if r.get("event") == "step"), None)
                    if step is not None:
                        pids = rank_pids(proc.pid)
                        begin = (time.perf_counter(), step, _cpu_of(pids))
                if begin is not None and end is None and summary.exists():
                    end = (time.perf_counter(), _cpu_of(pids))
                time.sleep(poll_s)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
        elapsed = time.perf_counter() - t0
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise SystemExit(f"raven-hpc failed ({' '.join(cmd)}):\n{text[-5000:]}")
    s = json.loads(summary.read_text())
    s.update(run_dir=str(run_dir), cmd=cmd, elapsed_s=round(elapsed, 2))
    if begin is None or end is None or len(pids) != nranks:
        s.update(rank_cpu_s=None, window_steps=None, window_wall_s=None, window_from_step=None)
        return s
    s["rank_cpu_s"] = {r: (None if end[1][r] is None or begin[2][r] is None else end[1][r] - begin[2][r])
                       for r in sorted(pids)}
    s.update(window_steps=s["steps"] - begin[1], window_wall_s=end[0] - begin[0], window_from_step=begin[1])
    return s


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSONL file; a truncated or broken line is skipped."""
    out = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"note: skipped a broken line of {path}", file=sys.stderr)
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# PyTorch DDP (gloo), one process per rank, one thread each.  argv: rank world
# data steps batch lr port [slow_rank slow_factor].  The slow rank makes every
# step take slow_factor times as long: a DDP communication hook on it sleeps
# (slow_factor - 1) x the step's measured compute time (zero_grad + forward +
# backward, up to the moment the last gradient bucket is ready) before that
# bucket's allreduce is launched -- "after backward, before the allreduce",
# the same definition as raven-hpc's ``slow`` fault (the task takes factor x
# as long).  The slow rank prints its mean compute and sleep per step.
DDP_WORKER = r'''
import os, sys, time, json
import numpy as np
import torch, torch.distributed as dist
torch.set_num_threads(1)
rank, world = int(sys.argv[1]), int(sys.argv[2])
data, steps, batch, lr, port = sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]), sys.argv[7]
slow_rank = int(sys.argv[8]) if len(sys.argv) > 8 else -1
slow_factor = float(sys.argv[9]) if len(sys.argv) > 9 else 1.0
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
t_step = [0.0]
slow = {"compute_s": 0.0, "sleep_s": 0.0, "steps": 0, "timed": False}
if slow_factor > 1.0 and 0 <= slow_rank < world:
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    def hook(state, bucket):
        if rank == slow_rank and bucket.is_last():
            c = time.perf_counter() - t_step[0]
            s = (slow_factor - 1.0) * c
            time.sleep(s)
            if slow["timed"]:
                slow["compute_s"] += c; slow["sleep_s"] += s; slow["steps"] += 1
        return default_hooks.allreduce_hook(None, bucket)
    model.register_comm_hook(None, hook)
opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
loss_fn = torch.nn.CrossEntropyLoss()
n = len(y)
def step(i):
    t_step[0] = time.perf_counter()
    perm_start = ((i * world + rank) * batch) % (n - batch)
    xb, yb = x[perm_start:perm_start + batch], y[perm_start:perm_start + batch]
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(xb), yb)
    loss.backward()
    opt.step()
for i in range(10):
    step(i)
dist.barrier()
slow["timed"] = True
t0 = time.perf_counter()
for i in range(steps):
    step(i)
dist.barrier()
wall = time.perf_counter() - t0
if rank == 0:
    print(json.dumps({"samples_per_s": steps * batch * world / wall, "wall_s": wall}))
elif rank == slow_rank and slow["steps"]:
    print(json.dumps({"slow_compute_ms": 1e3 * slow["compute_s"] / slow["steps"],
                      "slow_sleep_ms": 1e3 * slow["sleep_s"] / slow["steps"]}))
dist.destroy_process_group()
'''


def run_ddp_procs(data: Path, tmp: Path, *, workers: int, steps: int, batch: int, lr: float, layers=LAYERS,
                  slow_rank: int = -1, slow_factor: float = 1.0, timeout: float = 900) -> dict:
    """PyTorch DDP (gloo), ``workers`` processes x 1 thread, ``batch`` samples
    per process per step; rank 0's samples/s over ``steps`` timed steps.
    With ``slow_factor > 1`` rank ``slow_rank`` is slowed (see DDP_WORKER);
    its mean compute / sleep per step come back as ``slow_compute_ms`` /
    ``slow_sleep_ms``."""
    script = tmp / "ddp_worker.py"
    script.write_text(DDP_WORKER.replace("(LAYERS)", repr(tuple(layers))))
    port = str(free_port())
    extra = [str(slow_rank), str(slow_factor)] if slow_factor > 1.0 else []
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(workers), str(data), str(steps),
                               str(batch), str(lr), port, *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=bench_env())
             for r in range(workers)]
    outs = [p.communicate(timeout=timeout) for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit("DDP failed:\n" + "\n".join(o[1][-3000:] for o in outs))
    res = json.loads(outs[0][0].strip().splitlines()[-1])
    if slow_factor > 1.0 and 0 < slow_rank < workers and outs[slow_rank][0].strip():
        res.update(json.loads(outs[slow_rank][0].strip().splitlines()[-1]))
    return res


def table(headers: list[str], rows: list[list], title: str = "") -> None:
    """Print a plain aligned table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if title:
        print(f"\n{title}")
    for k, r in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if k == 0:
            print("  " + "  ".join("-" * w for w in widths))


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    p = RESULTS / name
    p.write_text(json.dumps(result, indent=2) + "\n")
    return p
