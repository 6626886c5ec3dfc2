"""Rank 0's live display (raven_hpc.progress.Progress): the line a terminal
sees rewritten in place, and the plain lines of a batch log."""
from __future__ import annotations

import io

from raven_hpc import __version__
from raven_hpc.progress import Progress, progress_line

BEGIN = {"epochs": 2, "workers": 3, "ranks": 4, "num_params": 1234, "run_dir": "runs/x", "resumed_at_step": 0,
         "collectors": []}


def step(n, wall, loss=0.5, sps=12345.0, spe=50):
    return {"event": "step", "step": n, "epoch": n // spe, "loss": loss, "train_accuracy": 0.8,
            "samples": n * 128, "wall_s": wall, "samples_per_s": sps, "lr": 0.1, "steps_per_epoch": spe,
            "step_in_epoch": n % spe or spe}


def test_progress_line_fields_and_width():
    line = progress_line(step=30, total=100, epoch=0, epochs=2, samples_per_s=12345.0, eta_s=75.0, loss=0.25,
                         workers=4, out={3: "excluded", 4: "lost"}, notice="step 21: rank 3 (n3) excluded: 3 strikes",
                         width=200)
    assert line == ("step 30/100 [###.........] 30% | epoch 1/2 | 12.3k samples/s | ETA 1:15 | loss 0.2500 | "
                    "workers 2/4 (1 excluded, 1 lost) | step 21: rank 3 (n3) excluded: 3 strikes")
    # a narrow terminal: the notice is cut first, the line never exceeds the width
    short = progress_line(step=30, total=100, epoch=0, epochs=2, samples_per_s=2.5e6, eta_s=3 * 3600 + 62,
                          loss=None, workers=4, out={}, notice="x" * 80, width=120)
    assert short.startswith("step 30/100 [###.........] 30% | epoch 1/2 | 2.50M samples/s | ETA 3:01:02 | loss ? | "
                            "workers 4/4 | xxx")
    assert short.endswith("...") and len(short) == 120
    # an 80-column terminal: no bar, then short words; never wider than the terminal
    kw = dict(step=30, total=100, epoch=0, epochs=2, samples_per_s=12345.0, eta_s=75.0, loss=0.25, workers=4,
              out={3: "excluded"}, notice="")
    assert progress_line(**kw, width=100) == ("step 30/100 30%  epoch 1/2  12.3k samples/s  ETA 1:15  loss 0.2500  "
                                              "workers 3/4 (1 excluded)")
    core = "30/100 30% ep 1/2 12.3k/s ETA 1:15 loss 0.2500 wk 3/4"
    assert progress_line(**kw, width=80) == core
    line = progress_line(**dict(kw, notice="step 21: rank 3 (n3) excluded: 3 strikes (last: off by 3e3 x)"), width=80)
    assert line == core + " step 21: rank 3 (n3) ex..." and len(line) == 80
    assert len(progress_line(step=1, total=None, epoch=0, epochs=1, samples_per_s=5.0, eta_s=None, loss=1.0,
                             workers=1, out={}, notice="", width=30)) <= 30


def test_bar_rewrites_one_line_and_follows_membership():
    buf = io.StringIO()
    p = Progress("bar", max_steps=80, stream=buf, width=400)
    p("begin", BEGIN)
    p("step", step(10, 1.0))
    p("step", step(20, 2.0))
    text = buf.getvalue()
    assert text.count("\n") == 1                       # the begin line; the steps rewrite one line
    last = text.split("\r")[-1]
    # 80 planned steps (max_steps < 2 x 50), 10 steps a second: 60 steps left = 6 s
    assert last.startswith("step 20/80 [###.........] 25% | epoch 1/2 | 12.3k samples/s | ETA 0:06 | loss 0.5000 | "
                           "workers 3/3")
    p("notice", {"text": "step 21: rank 2 (n2) excluded: 3 strikes (last: disagreed with the quorum)"})
    p("member", {"rank": 2, "event": "exclude"})
    p("notice", {"text": "step 22: rank 3 (n3) drained: listed in RUN_DIR/drain"})
    p("member", {"rank": 3, "event": "drain"})
    p("step", step(30, 3.0))
    last = buf.getvalue().split("\r")[-1]
    assert "workers 1/3 (1 drained, 1 excluded) | step 22: rank 3 (n3) drained" in last
    assert "note: step 21: rank 2 (n2) excluded: 3 strikes" in buf.getvalue()      # notices stay as lines too
    p("member", {"rank": 3, "event": "undrain"})
    p("member", {"rank": 2, "event": "readmit"})
    p("notice", {"text": "collector 1 excluded ranks 5, 6: proven wrong by its recomputation"})
    p("member", {"rank": 5, "event": "exclude"})
    p("member", {"rank": 6, "event": "exclude"})
    p("step", step(40, 4.0))
    assert "workers 1/3 (2 excluded)" in buf.getvalue().split("\r")[-1]
    assert p.gone == {5: "excluded", 6: "excluded"}
    p("epoch", {"epoch": 1, "step": 50, "loss": 0.3, "test_accuracy": 0.9})
    out = buf.getvalue()
    # the epoch line replaces the bar (cleared first), then the bar comes back
    before, after = out.rsplit("epoch 1/2  step 50", 1)
    assert before.endswith("\r") and before.rstrip("\r").endswith(" ")
    assert after.split("\n", 1)[1].startswith("\rstep 40/80")


def test_lines_mode_prints_what_a_batch_log_always_got():
    buf = io.StringIO()
    p = Progress("auto", stream=buf)          # not a terminal: lines
    assert p.mode == "lines"
    p("resume", {"path": "runs/x/checkpoint.h5", "epoch": 1, "step": 50})
    p("begin", dict(BEGIN, resumed_at_step=50))
    p("step", step(60, 1.0))
    p("notice", {"text": "step 61: rank 2 (n2) excluded: 3 strikes"})
    p("epoch", {"epoch": 2, "step": 100, "loss": 0.25, "test_accuracy": 0.9312})
    p("end", {"steps": 100, "samples_this_run": 6400, "wall_s": 5.0, "samples_per_s": 1280.0,
              "master_cpu_s": 0.5, "master_cpu_fraction": 0.1, "final_test_accuracy": 0.9312})
    lines = buf.getvalue().splitlines()
    assert "\r" not in buf.getvalue()
    assert lines[0] == "resuming from runs/x/checkpoint.h5 (epoch 1, step 50)"
    assert lines[1] == (f"raven-hpc {__version__}: 4 rank(s), 3 worker(s), 1,234 parameters, run dir runs/x, "
                        "resuming at step 50")
    assert lines[2] == "note: step 61: rank 2 (n2) excluded: 3 strikes"
    assert lines[3].startswith("epoch 2/2  step 100  loss 0.2500  test_acc 93.12%  ") and lines[3].endswith(" s")
    assert lines[4:] == ["done: 100 steps, 6,400 samples in 5.0 s = 1,280 samples/s; master CPU 0.5 s (10% of wall)",
                         "final test accuracy: 93.12%"]
    quiet = io.StringIO()
    p = Progress("none", stream=quiet)
    p("begin", BEGIN)
    p("step", step(1, 0.1))
    assert quiet.getvalue() == ""


def test_the_recorder_says_membership_as_events_not_only_words(tmp_path):
    """The live line follows membership from the Recorder's ``member``
    events, which the ledger's membership records produce."""
    from raven_hpc.recorder import Recorder

    got = []
    rec = Recorder(tmp_path, {"run": {"dir": str(tmp_path)}}, lambda kind, info: got.append((kind, info)), 3)
    rec.ledger([{"ev": "exclude", "rank": 2, "step": 5, "reason": "3 strikes"},
                {"ev": "strike", "rank": 1, "step": 5, "strikes": 1, "reason": "x"},
                {"ev": "drain", "rank": 1, "step": 6, "reason": "listed"}], {1: "n1", 2: "n2"})
    assert [i for k, i in got if k == "member"] == [{"rank": 2, "event": "exclude"}, {"rank": 1, "event": "drain"}]
    assert len([k for k, _ in got if k == "notice"]) == 3
