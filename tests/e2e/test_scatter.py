"""data.delivery = "scatter" under mpiexec: workers that cannot open the
dataset train with the parameters of a run whose workers read it.

The dataset is given as ``/proc/self/fd/197``: a path that exists only in
rank 0's process, which a wrapper starts with the file open on that
descriptor (an MPMD launch: rank 0 through the wrapper, the others
directly).  A worker that tried to open ``data.path`` would fail, so every
run that finishes shows the workers never did.  Every run under a hard
timeout.
"""
from __future__ import annotations

import collections
import json
import re
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from raven_hpc.ledger_schema import SENT, TRANSIT, check_record
from raven_hpc.report.exposure import exposure
from tests.conftest import mpiexec_cmd, raven_cmd, run, write_config

TIMEOUT = 240
STEPS = 12
COMMON = ["--set", f"train.max_steps={STEPS}", "--set", "train.eval_every=0", "--set", "cluster.max_chunk=1"]
FD = 197
ONLY_RANK_0 = Path(f"/proc/self/fd/{FD}")
SCATTER = ["--set", 'data.delivery="scatter"']

WRAPPER = f"""
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.dup2(fd, {FD})          # inheritable: the path /proc/self/fd/{FD} exists in the program it starts
os.close(fd)
os.execv(sys.argv[2], sys.argv[2:])
"""


def train(n, cfg, run_dir, *extra, timeout=TIMEOUT):
    return run(mpiexec_cmd(n) + raven_cmd() + ["train", str(cfg), "--run-dir", str(run_dir), *extra], timeout=timeout)


def train_hidden(n, cfg, run_dir, data, wrapper, *extra, timeout=TIMEOUT):
    """Rank 0 holds ``data`` open as /proc/self/fd/197 (``cfg``'s data.path); ranks 1.. cannot open it."""
    args = ["train", str(cfg), "--run-dir", str(run_dir), *extra]
    rc = raven_cmd()
    exe = rc if Path(rc[0]).name != "raven-hpc" else [rc[0]]
    cmd = mpiexec_cmd(1) + [sys.executable, str(wrapper), str(data), *exe, *args, ":", "-n", str(n - 1), *rc, *args]
    return run(cmd, timeout=timeout)


def ok(res):
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def params_of(run_dir):
    with h5py.File(run_dir / "checkpoint.h5", "r") as f:
        return f["params"][()]


def records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def summary(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def files(tmp_path_factory, small_h5):
    d = tmp_path_factory.mktemp("scatter")
    wrapper = d / "only_rank_0.py"
    wrapper.write_text(WRAPPER)
    return {"read": write_config(d / "read.toml", small_h5, epochs=1, task_snippets=1),
            "hidden": write_config(d / "hidden.toml", ONLY_RANK_0, epochs=1, task_snippets=1),
            "wrapper": wrapper, "data": small_h5}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, files):
    """The same training with every worker reading the file."""
    rd = tmp_path_factory.mktemp("read") / "run"
    ok(train(3, files["read"], rd, *COMMON))
    return rd


def hidden(files, n, rd, *extra):
    return train_hidden(n, files["hidden"], rd, files["data"], files["wrapper"], *COMMON, *extra)


def sent_by_rank(rd: Path) -> dict:
    """(rank, split) -> the snippet ids the ledgers say were sent to it."""
    out = collections.defaultdict(set)
    for p in [rd / "ledger.jsonl", *sorted(rd.glob("ledger.collector-*.jsonl"))]:
        for e in records(p):
            if e["ev"] == SENT:
                assert not check_record({k: v for k, v in e.items() if k != "collector"}), e
                out[(e["rank"], e["split"])].update(e["snippets"])
    return out


def check_exposure(rd: Path, ranks) -> None:
    """The exposure report equals what the ledgers imply, and every copy a
    rank computed came with snippets it was sent."""
    sent = sent_by_rank(rd)
    run0 = records(rd / "ledger.jsonl")[0]
    splits = run0["data"]["splits"]
    total = sum(s["samples"] for s in splits.values())

    def samples(split, ids):
        s = splits[split]
        return sum(min(s["snippet_size"], s["samples"] - i * s["snippet_size"]) for i in ids)

    got = exposure(rd)
    assert sorted(r["rank"] for r in got["ranks"]) == sorted(ranks)
    for r in got["ranks"]:
        want = {sp: samples(sp, ids) for (rank, sp), ids in sent.items() if rank == r["rank"]}
        assert {sp: v["samples"] for sp, v in r["splits"].items()} == want
        assert r["samples"] == sum(want.values()) and not r["whole"]
        assert r["percent"] == pytest.approx(100 * r["samples"] / total, abs=1e-3)
    for p in [rd / "ledger.jsonl", *rd.glob("ledger.collector-*.jsonl")]:
        for e in records(p):
            if e["ev"] == "copy" and e["rank"] in ranks and e["state"] in ("accepted", "duplicate", "rejected"):
                split = "train" if e["kind"] == "grad" else "test"
                assert set(e["snippets"]) <= sent[(e["rank"], split)], e


def test_scattered_data_gives_the_parameters_of_a_read_run(tmp_path, files, reference):
    rd = tmp_path / "scatter"
    res = ok(hidden(files, 3, rd, *SCATTER))
    out = res.stdout
    assert out.count("data delivery: scatter: only rank 0 opens data.path") == 1
    # rank 0 read 12 steps of 4 snippets and the 63 of the evaluation, each once, the steps' ahead of the
    # schedule (but maybe the first step's, when every worker said hello before rank 0 read anything); the
    # evaluation's that the last two steps left no time for are read when it starts
    ahead, now = (int(g) for g in re.search(r"rank 0 read (\d+) snippets ahead \(\d+ ms\) and (\d+) on demand",
                                            out).groups())
    assert ahead + now == 12 * 4 + 63 and ahead >= 11 * 4, out
    np.testing.assert_allclose(params_of(rd), params_of(reference), rtol=1e-6, atol=1e-7)
    # the evaluation ran on scattered test snippets too
    assert summary(rd)["final_test_accuracy"] == summary(reference)["final_test_accuracy"]
    assert records(rd / "ledger.jsonl")[0]["data"]["delivery"] == "scatter"
    check_exposure(rd, [1, 2])
    sent = sent_by_rank(rd)
    assert sent[(1, "test")] | sent[(2, "test")] == set(range(records(rd / "ledger.jsonl")[0]["data"]["splits"]
                                                              ["test"]["snippets"]))


def test_a_snippet_damaged_in_transit_is_named_and_computed_elsewhere(tmp_path, files, reference):
    """Every task goes to both workers (redundancy 2); in steps 2 and 3 the
    snippets sent to rank 2 are damaged on arrival: rank 2 names them, its
    copies are rejected without a strike, rank 1's are applied."""
    rd = tmp_path / "damaged"
    res = ok(hidden(files, 3, rd, *SCATTER, "--set", "poc.redundancy=2",
                    "--set", 'faults.rules=[{rank = 2, mode = "transit", count = 2, from_step = 2, until_step = 4}]'))
    led = records(rd / "ledger.jsonl")
    bad = [e for e in led if e["ev"] == "copy" and e["state"] == "rejected"]
    assert bad and {e["rank"] for e in bad} == {2} and {e["step"] for e in bad} == {2, 3}
    for e in bad:
        assert e["reason"].startswith(f"{TRANSIT}: snippet {e['snippets'][0]} failed the checksum on arrival at "
                                      "rank 2"), e
        assert f"snippet {e['snippets'][0]} of task {e['task']} failed the checksum on arrival" in res.stdout
        accepted = [c for c in led if c["ev"] == "copy" and c["task"] == e["task"] and c["state"] == "accepted"]
        assert [c["rank"] for c in accepted] == [1]
    assert not [e for e in led if e["ev"] in ("strike", "exclude")]
    np.testing.assert_allclose(params_of(rd), params_of(reference), rtol=1e-6, atol=1e-7)
    check_exposure(rd, [1, 2])


def test_collectors_are_fed_by_rank_0(tmp_path, files, reference):
    """Two groups (1 leads 2, 3; 4 leads 5, 6): rank 0 sends each collector
    its tasks' snippets, the collector sends each piece's on to the worker
    that computes it.  Every packet rank 3 gets is damaged (its pieces are
    computed by rank 2), collector 4's in step 5 (its task goes to the other
    group, when it had one then)."""
    rd = tmp_path / "tree"
    rules = ('faults.rules=[{rank = 3, mode = "transit"}, '
             '{rank = 4, mode = "transit", from_step = 5, until_step = 6}]')
    res = ok(hidden(files, 7, rd, *SCATTER, "--set", "cluster.collectors=2", "--set", rules))
    np.testing.assert_allclose(params_of(rd), params_of(reference), rtol=1e-6, atol=1e-7)
    assert summary(rd)["final_test_accuracy"] == summary(reference)["final_test_accuracy"]
    root = records(rd / "ledger.jsonl")
    assert {e["rank"] for e in root if e["ev"] == SENT} == {1, 4}       # rank 0 feeds its collectors
    g1 = records(rd / "ledger.collector-1.jsonl")
    assert {e["rank"] for e in g1 if e["ev"] == SENT} <= {2, 3}
    damaged = [e for e in g1 if e["ev"] == "copy" and e["state"] == "rejected"]
    assert damaged and {e["rank"] for e in damaged} == {3}
    assert all(e["reason"].startswith(f"{TRANSIT}: snippet {e['snippets'][0]} ") for e in damaged)
    assert not [e for e in g1 if e["ev"] == "copy" and e["rank"] == 3 and e["state"] == "accepted"]
    assert res.stdout.count("on its way from collector 1: the piece is rejected and computed again") == len(damaged)
    to4 = [e for e in root if e["ev"] == "copy" and e["rank"] == 4 and e["state"] == "rejected"]
    assert all(e["reason"].startswith(TRANSIT) and e["step"] == 5 for e in to4)
    assert not [e for e in root + g1 if e["ev"] in ("strike", "exclude")]
    check_exposure(rd, [1, 2, 3, 4, 5, 6])


def test_auto_scatters_when_workers_cannot_open_the_file_and_resumes_on_another_n(tmp_path, files, reference):
    rd = tmp_path / "auto"
    auto = ["--set", 'data.delivery="auto"']
    res = ok(hidden(files, 3, rd, *auto, "--set", "train.max_steps=6"))
    assert res.stdout.count("data delivery: scatter (auto): rank 1 on ") == 1
    assert "cannot open data.path (and 1 more rank)" in res.stdout
    res = ok(hidden(files, 4, rd, *auto, "--resume"))     # steps 6..12 on 3 workers
    assert summary(rd)["steps"] == STEPS
    np.testing.assert_allclose(params_of(rd), params_of(reference), rtol=1e-6, atol=1e-7)
    runs = [e for e in records(rd / "ledger.jsonl") if e["ev"] == "run"]
    assert [r["data"]["delivery"] for r in runs] == ["scatter", "scatter"]
    check_exposure(rd, [1, 2, 3])
    # with the file readable by every rank, auto reads
    res = ok(train(3, files["read"], tmp_path / "auto-read", *COMMON, *auto))
    assert "data delivery: read (auto): every rank opens data.path" in res.stdout
