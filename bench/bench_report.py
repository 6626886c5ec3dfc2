"""`raven-hpc report --plots` on a big synthetic run directory.

    python bench/bench_report.py [--records 1000000] [--ranks 65] [--keep DIR | --reuse DIR]

Synthesizes a run directory whose ledger.jsonl holds ``--records`` records
written the way the master writes them (two runs, the second resumed from a
checkpoint; per step 16 grad tasks of 2 snippets, each with an accepted and a
duplicate copy on 64 workers over 16 hosts; backups, probes, late, rejected
and lost copies; a slow rank, a rank that hangs, one excluded by strikes, one
drained and readmitted, a rollback), a metrics.jsonl (loss, accuracy, lr,
grad_norm, samples/s every 10 steps, test accuracy per epoch) and a
summary.json.  Then times, each in its own process: the text report
(``raven-hpc report DIR``) and ``raven-hpc report DIR --plots``, with the
peak resident memory of each (``ru_maxrss`` of the child).  Writes
``bench/results/report-plots.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"

TASKS = 16            # grad tasks per step
PER_TASK = 2          # snippets per task
SNIPPET = 32          # samples per snippet
STEPS_PER_EPOCH = 400


def _raven() -> list[str]:
    exe = Path(sys.executable).parent / "raven-hpc"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "raven_hpc.cli"]


class Synth:
    """Writes ledger.jsonl and metrics.jsonl of a synthetic job."""

    def __init__(self, run_dir: Path, records: int, ranks: int, seed: int = 0):
        self.dir = run_dir
        self.target = records
        self.ranks = ranks
        self.workers = list(range(1, ranks))
        self.hosts = {r: f"node{r // 4:02d}" for r in range(ranks)}
        self.rng = random.Random(seed)
        # per-sample compute seconds: rank 7 is 3x slower than the rest
        self.speed = {r: (3.0 if r == 7 else 1.0) * 20e-6 * (1 + 0.1 * self.rng.random()) for r in self.workers}
        self.written = 0
        self.pending: list = []   # (time, step, task, samples, ids): a hung rank's copy, lost 60 s after its start
        self.led = open(run_dir / "ledger.jsonl", "w")
        self.met = open(run_dir / "metrics.jsonl", "w")
        self.t = 0.0

    def rec(self, d: dict) -> None:
        self.led.write(json.dumps(d) + "\n")
        self.written += 1

    def run_record(self, start: int, unix_time: float) -> None:
        self.t = 0.0
        self.rec({"ev": "run", "unix_time": unix_time, "start_step": start, "resumed": start > 0,
                  "ranks": self.ranks, "hosts": {str(r): h for r, h in self.hosts.items()},
                  "poc": {"redundancy": 2, "quorum": 1}, "faults": [], "collectors": [],
                  "train_snippets": TASKS * PER_TASK * STEPS_PER_EPOCH, "steps_per_epoch": STEPS_PER_EPOCH,
                  "epochs": 1000, "max_steps": 0})

    def event(self, ev: str, step: int, rank: int, reason: str, **kw) -> None:
        self.rec({"ev": ev, "step": step, "rank": rank, "reason": reason, **kw, "host": self.hosts[rank]})

    def copy(self, step, task, rank, state, assigned, latency, samples, ids, *, backup=False, probe=False,
             credited=True, reason="") -> None:
        compute = None if state in ("lost", "skipped") else round(self.speed[rank] * samples, 6)
        self.rec({"ev": "copy", "step": step, "task": task, "kind": "grad", "snippets": ids, "samples": samples,
                  "rank": rank, "assigned": round(assigned, 6), "finished": round(assigned + latency, 6),
                  "compute_s": compute, "latency_s": round(latency, 6), "state": state, "backup": backup,
                  "probe": probe, "verified": True, "agreed": state != "rejected", "credited": credited,
                  "reason": reason, "host": self.hosts[rank]})

    def step(self, s: int, live: list[int], task0: int, hung: set) -> None:
        """One step: each task accepted on one worker and duplicated on the next."""
        rng = self.rng
        t0 = self.t
        end = t0
        samples = PER_TASK * SNIPPET
        n = len(live)
        for k in range(TASKS):
            a, b = live[(s * TASKS + 2 * k) % n], live[(s * TASKS + 2 * k + 1) % n]
            ids = [((s % STEPS_PER_EPOCH) * TASKS + k) * PER_TASK + j for j in range(PER_TASK)]
            task = task0 + k
            la = self.speed[a] * samples * (1 + 0.2 * rng.random()) + 0.002
            lb = self.speed[b] * samples * (1 + 0.2 * rng.random()) + 0.002
            first, second = (a, b) if la <= lb else (b, a)
            if first in hung:
                first, second = second, first
            if second in hung:        # it never answers: the master gives up on it after 60 s
                self.copy(s, task, first, "accepted", t0, min(la, lb), samples, ids)
                self.pending.append((t0, s, task, second, samples, ids))
                hung.discard(second)
                live.remove(second)
                end = max(end, t0 + min(la, lb))
                continue
            self.copy(s, task, first, "accepted", t0, min(la, lb), samples, ids,
                      backup=rng.random() < 0.01, probe=rng.random() < 0.005)
            r = rng.random()
            state = "late" if r < 0.01 else "rejected" if r < 0.013 else "duplicate"
            self.copy(s, task, second, state, t0, max(la, lb), samples, ids, credited=state == "duplicate")
            end = max(end, t0 + min(la, lb))
        self.t = end + 0.0005
        e, i = divmod(s, STEPS_PER_EPOCH)
        self.rec({"ev": "step", "step": s, "epoch": e, "step_in_epoch": i + 1, "tasks": TASKS,
                  "snippets": TASKS * PER_TASK, "samples": TASKS * samples, "t": round(self.t, 4)})

    def metrics(self, s: int, total_steps: int) -> None:
        """The metrics lines after step index ``s`` (a step line every 10 steps, an epoch line per epoch)."""
        done = s + 1
        if done % 10 == 0:
            frac = done / max(total_steps, 1)
            loss = 2.3 * math.exp(-6 * frac) + 0.05 + 0.02 * self.rng.random()
            self.met.write(json.dumps({
                "event": "step", "step": done, "epoch": s // STEPS_PER_EPOCH, "loss": loss,
                "train_accuracy": 1 - loss / 2.5, "samples": done * TASKS * PER_TASK * SNIPPET,
                "wall_s": round(self.t, 4), "samples_per_s": round(TASKS * PER_TASK * SNIPPET * 10 / 0.25, 1)
                * (0.9 + 0.2 * self.rng.random()),
                "lr": 0.05 * 0.5 * (1 + math.cos(math.pi * frac)), "grad_norm": 3 * loss + self.rng.random()}) + "\n")
        if done % STEPS_PER_EPOCH == 0:
            acc = 0.98 - 0.6 * math.exp(-6 * done / max(total_steps, 1))
            self.met.write(json.dumps({"event": "epoch", "step": done, "epoch": done // STEPS_PER_EPOCH,
                                       "wall_s": round(self.t, 4), "test_accuracy": acc,
                                       "test_loss": 1 - acc}) + "\n")

    def write(self) -> dict:
        per_step = 2 * TASKS + 1
        total_steps = max(10, (self.target - 8) // per_step)
        # run 1 is killed after the checkpoint of this step; the resumed run cut
        # what it wrote after that checkpoint, so its records stop there
        resume_at = (2 * total_steps // 3) // 10 * 10
        resumed = False
        task = 0
        live = list(self.workers)
        hung: set = set()
        self.run_record(0, 1.7e9)
        s = 0
        rolled = False
        while s < total_steps:
            if s == resume_at and not resumed:
                resumed = True
                self.pending.clear()     # what the killed run had not written yet
                self.run_record(resume_at, 1.7e9 + self.t + 30.0)
            if s == total_steps // 5:
                for k in range(3):
                    self.event("strike", s + k, 21, "disagreed with the quorum", strikes=k + 1)
                self.event("exclude", s + 2, 21, "3 strikes")
                live.remove(21)
            if s == total_steps // 3:
                self.event("drain", s, 30, "listed in RUN_DIR/drain")
                live.remove(30)
            if s == total_steps // 3 + total_steps // 20:
                self.event("undrain", s, 30, "readmitted by the operator")
                live.append(30)
            if s == total_steps // 20:
                hung.add(13)          # rank 13 hangs on its next copy
            for p in [p for p in self.pending if p[0] + 60.0 <= self.t]:
                self.pending.remove(p)
                t0, step, tid, r, samples, ids = p
                self.copy(step, tid, r, "lost", t0, 60.0, samples, ids, credited=False, reason="worker lost")
                self.event("lost", s, r, "no result for 60.0 s (hung)")
            if s == total_steps * 3 // 5 and not rolled:
                rolled = True
                self.rec({"ev": "audit", "step": s, "task": task - 20, "rank": 0, "ok": False, "ranks": [21],
                          "reason": "wrong", "host": self.hosts[0]})
                self.rec({"ev": "rollback", "step": s, "to_step": s - 2, "guilty": [21],
                          "reason": "audit of task failed", "checkpoint": None, "t": round(self.t, 4)})
                self.met.write(json.dumps({"event": "rollback", "step": s, "to_step": s - 2,
                                           "reason": "audit of task failed", "wall_s": round(self.t, 4)}) + "\n")
                s -= 2
                continue
            self.step(s, live, task, hung)
            task += TASKS
            self.metrics(s, total_steps)
            s += 1
        self.rec({"ev": "end", "step": total_steps, "t": round(self.t, 3), "status": "finished"})
        self.led.close()
        self.met.close()
        (self.dir / "summary.json").write_text(json.dumps({
            "final_test_accuracy": 0.98, "epochs": total_steps // STEPS_PER_EPOCH, "steps": total_steps,
            "samples_per_s": 60000.0, "ranks": self.ranks, "workers": self.ranks - 1, "wall_s": round(self.t, 3),
            "master_cpu_s": 1.0, "master_cpu_fraction": 0.1, "history": []}))
        return {"records": self.written, "steps": total_steps}


def timed(cmd: list[str]) -> dict:
    """Wall and CPU seconds and the peak RSS (MiB) of ``cmd`` run in its own process."""
    code = ("import resource, subprocess, sys, time, json\n"
            "t = time.perf_counter()\n"
            "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
            "dt = time.perf_counter() - t\n"
            "ru = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
            "print(json.dumps({'rc': p.returncode, 'wall_s': round(dt, 2), "
            "'cpu_s': round(ru.ru_utime + ru.ru_stime, 2), 'peak_rss_mib': round(ru.ru_maxrss / 1024, 1), "
            "'stderr': p.stderr[-2000:]}))\n")
    out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--ranks", type=int, default=65, help="ranks of the synthetic job (rank 0 + workers)")
    ap.add_argument("--keep", type=Path, help="synthesize into this folder and keep it")
    ap.add_argument("--reuse", type=Path, help="time a folder an earlier --keep synthesized (no synthesis)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rd = args.reuse or args.keep or Path(tmp) / "run"
        rd.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        if args.reuse:
            with open(rd / "ledger.jsonl", "rb") as fh:
                info = {"records": sum(1 for _ in fh), "steps": json.loads((rd / "summary.json").read_text())["steps"]}
        else:
            info = Synth(rd, args.records, args.ranks).write()
        info["synth_s"] = round(time.perf_counter() - t, 1)
        info["ledger_mib"] = round((rd / "ledger.jsonl").stat().st_size / 2**20, 1)
        made = "found" if args.reuse else f"synthesized in {info['synth_s']} s"
        print(f"{rd}: {info['records']:,} records, {info['steps']:,} steps ({info['ledger_mib']} MiB), {made}")
        text = timed(_raven() + ["report", str(rd)])
        print(f"report (text):  {text['wall_s']:6.2f} s ({text['cpu_s']:.2f} s CPU), peak RSS "
              f"{text['peak_rss_mib']:7.1f} MiB (rc {text['rc']})")
        plots = timed(_raven() + ["report", str(rd), "--plots"])
        print(f"report --plots: {plots['wall_s']:6.2f} s ({plots['cpu_s']:.2f} s CPU), peak RSS "
              f"{plots['peak_rss_mib']:7.1f} MiB (rc {plots['rc']})")
        if plots["rc"] not in (0, 3):
            print(plots["stderr"], file=sys.stderr)
            return 1
        out = rd / "report"
        files = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
        print("wrote " + ", ".join(f"{k} ({v / 1024:.0f} KiB)" for k, v in files.items()))
        res = {**info, "ranks": args.ranks, "text": text, "plots": plots, "files": files,
               "cpus": os.cpu_count(), "python": sys.version.split()[0]}
        for k in ("text", "plots"):
            res[k].pop("stderr", None)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "report-plots.json").write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
