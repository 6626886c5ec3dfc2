"""The training loop on rank 0: epochs, steps, the update, evaluation,
checkpoints and rollbacks.

:class:`Trainer` owns the optimizer, the learning-rate schedule and the
training position; a :class:`~raven_hpc.protocol.master.Master` runs each
step's tasks on the workers and leaves the step's gradient sum; the trainer
applies it, sends the new parameter version out through the master, and
hands the :class:`~raven_hpc.recorder.Recorder` values to record.
"""
from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np

from ..errors import Interrupted, ProtocolError, RavenError
from ..ledger_schema import EVAL, GRAD
from ..recorder import Snapshot
from .plan import eval_tasks, make_plan
from .state import RollBack, StopRequested, TrainingDiverged, TrainState
from .step import LossWatch

__all__ = ["Trainer"]

#: steps whose snippets rank 0 reads ahead (data.delivery = "scatter")
READ_AHEAD_STEPS = 3


class Trainer:
    """Trains ``master.model`` with ``optimizer`` from ``master.state`` to the end."""

    def __init__(self, master, optimizer, ds):
        self.master = master
        self.cfg = master.cfg
        self.model = master.model
        self.opt = optimizer
        self.ds = ds
        self.splits = master.splits
        self.rec = master.rec
        self.state: TrainState = master.state
        self.loss_watch = LossWatch()
        # Where a step's time goes (seconds, summed over steps): waiting for the
        # last result, the master's own update (mean + optimizer + sending), and
        # the compute time the workers reported.
        self.timing = {"steps": 0, "wait_s": 0.0, "update_s": 0.0, "worker_compute_s": 0.0,
                       "worker_idle_s": 0.0}
        train = self.splits[self.cfg["data"]["train_split"]]
        self._snippet_size = int(ds.attrs.get("snippet_size", int(train.snippets["count"].max())))
        self._plans: dict = {}
        master.want_data(self._upcoming())

    # -- what the recorder is handed ----------------------------------------------
    def snapshot(self) -> Snapshot:
        m = self.master
        return Snapshot(params=self.model.params, param_info=self.model.param_info,
                        optimizer_state=self.opt.state_dict(), train_state=asdict(self.state),
                        model_spec=self.model.spec, vouched=m.sched.vouched_state(),
                        trust_floor=m.sched.trust_floor())

    def facts(self) -> dict:
        """The run's counters for the summary."""
        m = self.master
        return {"workers": self._workers(), "collectors": m.tree.collectors, "master_computes": m.master_computes, "num_params": m.n,
                "hosts": m.hosts, "timing": self.timing, "stats": m.stats,
                "workers_status": m.sched.worker_stats()}

    def _workers(self) -> int:
        """Ranks that compute (every rank but the master, and the collectors
        unless they compute too)."""
        t = self.master.tree
        return t.size - 1 - (0 if self.cfg["cluster"]["collector_computes"] else len(t.collectors))

    # -- the loop ------------------------------------------------------------------
    def train(self) -> TrainState:
        cfg, m = self.cfg, self.master
        tr = cfg["train"]
        train = self.splits[cfg["data"]["train_split"]]
        max_steps = tr["max_steps"]
        from ..engine import make_schedule

        steps_per_epoch = self._plan(0).num_steps
        total_steps = tr["epochs"] * steps_per_epoch
        if max_steps:
            total_steps = min(total_steps, max_steps)
        self.rec.begin(self.state, m.hosts, self._workers(), m.n,
                       {"collectors": m.tree.collectors, "train_snippets": int(train.num_snippets), "steps_per_epoch": steps_per_epoch,
                        "epochs": tr["epochs"], "max_steps": max_steps, "data": self._data_facts()})
        self.lr_schedule = make_schedule(dict(cfg["optimizer"]), total_steps)
        # the state training starts from is kept as a checkpoint: the point a
        # rollback returns to when every later result is in doubt
        self.rec.checkpoint(self.snapshot(), keep_only=True)
        while True:
            try:
                self._train_epochs()
                self._say_data()
                return self.state
            except RollBack as rb:
                self._roll_back(rb)
            except StopRequested as stop:
                self._stop(stop.signum)

    def _stop(self, signum: int) -> None:
        """Told to stop by a signal: checkpoint the last applied step, then
        raise :class:`Interrupted` (every rank exits resumable)."""
        import signal

        name = signal.Signals(signum).name
        path = self.rec.checkpoint(self.snapshot())
        self.master.resumable_stop = True
        raise Interrupted(f"stopped by {name} at step {self.state.step} (epoch {self.state.epoch}); checkpoint "
                          f"written to {path}; continue with --resume (or --resume auto)")

    def _plan(self, epoch: int):
        plan = self._plans.get(epoch)
        if plan is None:
            tr = self.cfg["train"]
            plan = make_plan(self.splits[self.cfg["data"]["train_split"]].num_snippets, epoch, seed=tr["seed"],
                             batch_size=tr["batch_size"], snippet_size=self._snippet_size,
                             task_snippets=tr["task_snippets"])
            if len(self._plans) > 2:
                self._plans.pop(min(self._plans))
            self._plans[epoch] = plan
        return plan

    # -- the data (scatter: what rank 0 reads ahead, what the ledger says) ------------
    def _data_facts(self) -> dict:
        """How the workers get the data, and the size of each split the run
        uses (for the exposure report)."""
        d = self.cfg["data"]
        names = [n for n in (d["train_split"], d["test_split"]) if n]
        return {"delivery": d["delivery"],
                "splits": {n: {"samples": int(self.splits[n].num_samples), "snippets": int(self.splits[n].num_snippets),
                               "snippet_size": self._snippet_size} for n in names}}

    def _upcoming(self, steps: int = READ_AHEAD_STEPS) -> list:
        """(split, snippet ids) of the current step and the next ones, and of
        the evaluation an epoch ends with, in the order they will run: what
        rank 0 reads ahead (the order is fixed by (seed, epoch))."""
        d, tr, st = self.cfg["data"], self.cfg["train"], self.state
        test, max_steps, ev = d["test_split"], tr["max_steps"], tr["eval_every"]
        evaluation = (test, range(self.splits[test].num_snippets)) if test else None
        out: list = []
        epoch, i, step, n = st.epoch, st.step_in_epoch, st.step, 0
        while epoch < tr["epochs"] and n < steps:
            plan = self._plan(epoch)
            while i < plan.num_steps and n < steps:
                if max_steps and step >= max_steps:
                    return out + ([evaluation] if evaluation else [])
                out.append((d["train_split"], plan.step_snippets(i)))
                i, step, n = i + 1, step + 1, n + 1
            if i >= plan.num_steps:
                if evaluation and (epoch + 1 >= tr["epochs"] or (ev and (epoch + 1) % ev == 0)):
                    out.append(evaluation)
                epoch, i = epoch + 1, 0
        return out

    def _say_data(self) -> None:
        """One line at the end (scatter): what went to the workers and
        whether rank 0's reading kept ahead of the schedule."""
        m = self.master
        if m.scatter is None:
            return
        sc, fd = m.scatter.stats, m.feeder.stats
        sent, held = sc["snippets_sent"], sc["snippets_held"]
        bad = m.stats.get("transit_errors", 0)
        self.rec.notice(f"data: {sc['packets']:,} packets, {sc['data_bytes'] / 2 ** 20:.1f} MiB to the workers "
                        f"({sent:,} snippets sent, {held:,} held in their caches); rank 0 read {fd['read_ahead']:,} "
                        f"snippets ahead ({1e3 * fd['read_ahead_s']:.0f} ms) and {fd['read_now']:,} on demand "
                        f"({1e3 * fd['read_now_s']:.0f} ms)" + (f"; {bad} damaged in transit" if bad else ""))

    def _train_epochs(self) -> None:
        """Train from :attr:`state` to the end (raises :class:`RollBack`)."""
        cfg, st, m = self.cfg, self.state, self.master
        tr = cfg["train"]
        train = self.splits[cfg["data"]["train_split"]]
        max_steps = tr["max_steps"]
        while st.epoch < tr["epochs"]:
            plan = self._plan(st.epoch)
            window = {"loss_sum": 0.0, "samples": 0, "correct": 0.0}
            while st.step_in_epoch < plan.num_steps:
                if max_steps and st.step >= max_steps:
                    break
                m.want_data(self._upcoming())
                m.begin_step(st.step)
                tasks = m.new_tasks(plan.step_tasks(st.step_in_epoch), GRAD, train.name)
                t0 = time.perf_counter()
                total = m.run_tasks(tasks)
                self._check_loss(total)
                t1 = time.perf_counter()
                self.apply_update(total["samples"])
                self.rec.step_record(st, total)
                tm = self.timing
                tm["steps"] += 1
                tm["wait_s"] += t1 - t0
                tm["update_s"] += time.perf_counter() - t1
                tm["worker_compute_s"] += total["compute_s"]
                tm["worker_idle_s"] += total.get("idle_s", 0.0)
                for k in window:
                    window[k] += total[k]
                if st.step % tr["log_every"] == 0 or st.step_in_epoch == plan.num_steps:
                    self.rec.on_step(st, window, plan.num_steps,
                                     {"lr": self.opt.last_lr, "grad_norm": self.opt.last_grad_norm})
                    window = {"loss_sum": 0.0, "samples": 0, "correct": 0.0}
                ck = cfg["run"]["checkpoint_every_steps"]
                if ck and st.step % ck == 0 and st.step_in_epoch < plan.num_steps:
                    self.rec.checkpoint(self.snapshot())
            stopped_early = bool(max_steps and st.step >= max_steps and st.step_in_epoch < plan.num_steps)
            if not stopped_early:
                st.epoch += 1
                st.step_in_epoch = 0
            last = stopped_early or st.epoch >= tr["epochs"]
            ev = tr["eval_every"]
            metrics = {"epoch": st.epoch, "step": st.step}
            if last or (ev and st.epoch % ev == 0):
                metrics.update(self.evaluate())
            st.history.append(metrics)
            self.rec.on_epoch(st, metrics)
            self.rec.checkpoint(self.snapshot())
            if stopped_early:
                break

    def _check_loss(self, total: dict) -> None:
        """A step whose loss exploded is audited before it is applied: it is
        redone with every result recomputed by the master (a wrong one rolls
        training back); if they are all right the jump is real."""
        m = self.master
        if not m.worker_ranks or total["samples"] <= 0:
            return
        loss = total["loss_sum"] / total["samples"]
        step = self.state.step
        if not self.loss_watch.exploded(loss, audited=m.audit_step == step):
            return
        if m.audit_step == step:
            raise TrainingDiverged(f"training diverged at step {step}: the loss is {loss:.3g} although the "
                                   "master's audit confirmed every result of the step; lower [optimizer] lr "
                                   "or check the data")
        raise RollBack(step, f"the loss jumped to {loss:.3g} at step {step}: every result of the step is "
                             "audited before it is applied", audit_step=True)

    def _roll_back(self, rb: RollBack) -> None:
        """Go back to ``rb.to_step``: the start of the current step (its
        results are dropped and computed again), or the newest kept
        checkpoint at or before it (parameters, optimizer state and position
        restored).  The master drops its open tasks, moves the parameter
        version on (workers skip the tasks they still hold) and sends every
        live worker the parameters to go on from."""
        from .. import checkpoint as ckpt

        m = self.master
        was = self.state.step
        path = None
        if rb.to_step < was:
            path = self.rec.checkpoint_at_or_before(rb.to_step)
            if path is None:
                raise RavenError(f"{rb.reason}; their unproven results reach back to step {rb.to_step}, and no "
                                 f"checkpoint from before it is kept in {self.rec.dir}: the run stops (raise "
                                 "[run] keep_checkpoints or restart it without those ranks)")
            ck = ckpt.load_checkpoint(path)
            m.writable_params()
            self.model.params[:] = ck["params"]
            self.opt.load_state_dict(ck["optimizer_state"])
            self.state.restore(ck["train_state"])
            self.loss_watch.reset()   # the loss is judged afresh from the restored point
        m.roll_back(rb)
        self.rec.rollback(was, self.state.step, rb.reason, rb.guilty, path, self.state.samples)
        m.send_params()

    def apply_update(self, samples: int) -> None:
        """The optimizer step with the step's gradient sum; the new version goes out."""
        if samples <= 0:
            raise ProtocolError(f"step {self.state.step} finished with no samples")
        m = self.master
        m.writable_params()
        nt = self.model.num_trainable
        grad = self.step_gradient()
        # the optimizer sees the trainable parameters; the rest of the vector
        # is layer state (batch-norm running statistics), updated from the
        # statistics the workers summed into the tail of their gradients
        self.opt.step(self.model.params[:nt], grad[:nt], scale=1.0 / samples,
                      lr=self.lr_schedule.lr_at(self.state.step))
        if self.model.num_state:
            self.model.update_state(self.model.params, grad[nt:], samples)
        m.step_sum.release()
        self.state.step += 1
        self.state.step_in_epoch += 1
        self.state.samples += samples
        m.new_version()
        m.send_params()

    def step_gradient(self) -> np.ndarray:
        """The gradient sum of the step the master just ran: the float64
        accumulator, or the one received buffer when only one result was
        applied."""
        return self.master.step_sum.gradient()

    def evaluate(self) -> dict:
        name = self.cfg["data"]["test_split"]
        if not name:
            return {}
        split = self.splits[name]
        groups = eval_tasks(split.num_snippets, self.cfg["train"]["eval_task_snippets"])
        m = self.master
        m.want_data([(name, range(split.num_snippets))])
        total = m.run_tasks(m.new_tasks(groups, EVAL, name))
        n = max(1, total["samples"])
        return {"test_loss": total["loss_sum"] / n, "test_accuracy": total["correct"] / n,
                "test_samples": total["samples"]}
