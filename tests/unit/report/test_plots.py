"""raven_hpc.report.plotdata / plots / html: what ``report --plots`` draws,
checked against the ledger and metrics.jsonl it is drawn from (synthetic
run directories written the way the master writes them; no MPI)."""
from __future__ import annotations

import base64
import collections
import html
import json
import re

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from raven_hpc.report import iter_ledger  # noqa: E402
from raven_hpc.report.plotdata import (FATES, EXACT_BARS, LedgerTap, collect, timeline, timeline_bars)  # noqa: E402
from raven_hpc.report.plots import (draw_curves, draw_optimizer, draw_ranks, draw_throughput,  # noqa: E402
                                    draw_timeline, write_plots)

from tests.unit.report.ledgers import Run, make_run_dir, rollback_run, scenario, tree_run  # noqa: E402


def expected_fate(c: dict) -> str:
    """A copy's fate, as the timeline colours it (written out independently of plotdata.fates_of)."""
    if c.get("audit"):
        return "audit"
    if c["state"] in ("rejected", "late", "lost", "skipped"):
        return c["state"]
    if c.get("probe"):
        return "probe"
    if c.get("backup"):
        return "backup"
    return c["state"]


def copies_of(path) -> list[dict]:
    return [r for r in iter_ledger(path) if r["ev"] == "copy"]


def write_metrics(rd, lines) -> None:
    (rd / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


#: scenario(): run 1 logs steps 5, 10, 15 (its checkpoint at 18 cut the rest), run 2 resumes at 18
SCENARIO_METRICS = [
    {"event": "step", "step": 5, "epoch": 0, "loss": 2.0, "train_accuracy": 0.3, "samples": 640, "wall_s": 1.0,
     "samples_per_s": 640.0, "lr": 0.1, "grad_norm": 5.0},
    {"event": "step", "step": 10, "epoch": 0, "loss": 1.5, "train_accuracy": 0.5, "samples": 1280, "wall_s": 2.0,
     "samples_per_s": 700.0, "lr": 0.1, "grad_norm": 4.0},
    {"event": "epoch", "step": 12, "epoch": 1, "samples": 1536, "wall_s": 2.5, "test_accuracy": 0.71,
     "test_loss": 1.2, "loss": 1.4},
    {"event": "step", "step": 15, "epoch": 1, "loss": 1.1, "train_accuracy": 0.6, "samples": 1920, "wall_s": 3.0,
     "samples_per_s": 720.0, "lr": 0.05, "grad_norm": 3.0},
    {"event": "step", "step": 20, "epoch": 1, "loss": 0.9, "train_accuracy": 0.7, "samples": 2560, "wall_s": 0.5,
     "samples_per_s": 650.0, "lr": 0.05, "grad_norm": 2.5},
    {"event": "epoch", "step": 25, "epoch": 2, "samples": 3200, "wall_s": 1.4, "test_accuracy": 0.83,
     "test_loss": 0.8, "loss": 0.7},
    {"event": "step", "step": 25, "epoch": 2, "loss": 0.7, "train_accuracy": 0.8, "samples": 3200, "wall_s": 1.2,
     "samples_per_s": 690.0, "lr": 0.01, "grad_norm": 2.0},
]


@pytest.fixture()
def scenario_dir(tmp_path):
    L = scenario()
    # a probe copy and an audit copy, so every fate has a bar
    L.copy(23, 900, 1, "duplicate")
    L.lines[-1] = json.dumps({**json.loads(L.lines[-1]), "probe": True})
    L.copy(23, 901, 2, "accepted", backup=True)
    L.copy(23, 902, 2, "accepted")
    L.lines[-1] = json.dumps({**json.loads(L.lines[-1]), "audit": True})
    end = L.lines.pop(next(i for i, x in enumerate(L.lines) if x.startswith('{"ev": "end"')))
    L.lines.append(end)
    rd = make_run_dir(tmp_path / "run", L)
    write_metrics(rd, SCENARIO_METRICS)
    return rd


# ------------------------------------------------------------------ the data --
def test_timeline_has_one_bar_per_copy_with_its_fate(scenario_dir):
    pd = collect(scenario_dir)
    copies = copies_of(scenario_dir / "ledger.jsonl")
    want = collections.Counter((c["rank"], expected_fate(c)) for c in copies)
    got = collections.Counter({(r, f): n for r, by in pd.timeline["counts"].items() for f, n in by.items()})
    assert got == want
    assert set(f for _, f in want) == set(FATES)          # the fixture has every fate
    tl = pd.timeline
    assert len(tl["start"]) == len(copies)
    # the per-copy arrays keep the ledger's order and times (run 1 from 0 on the run clock)
    c0 = copies[0]
    assert (tl["rows"][tl["row"][0]], tl["start"][0], tl["end"][0]) == (c0["rank"], c0["assigned"], c0["finished"])


def test_resumed_run_starts_where_the_first_ended(scenario_dir):
    pd = collect(scenario_dir)
    tl = pd.timeline
    seg = pd.tap.arrays()["seg"]
    run_of_seg = np.array([run for run, _, _ in pd.tap.segments])
    run = run_of_seg[seg]
    assert set(run.tolist()) == {0, 1}
    # run 2 starts after run 1's last ledger time and after its last metrics line (wall_s 3.0)
    first_end = max(tl["end"][run == 0].max(), 3.0)
    assert tl["start"][run == 1].min() >= first_end
    assert pd.metrics["run_starts"][1] == pytest.approx(first_end)
    resume = [e for e in pd.events if e["kind"] == "resume"]
    assert [(e["step"], e["time"]) for e in resume] == [(18, pytest.approx(first_end))]
    kinds = [(e["kind"], e["rank"]) for e in pd.events if e["rank"] is not None]
    assert kinds == [("exclude", 2), ("drain", 1), ("undrain", 1), ("lost", 3)]


def test_metrics_series_are_the_lines_that_stand_on_the_run_clock(scenario_dir):
    pd = collect(scenario_dir)
    st, ep = pd.metrics["steps"], pd.metrics["epochs"]
    steps = [x for x in SCENARIO_METRICS if x["event"] == "step"]
    np.testing.assert_array_equal(st["step"], [x["step"] for x in steps])
    np.testing.assert_array_equal(st["loss"], [x["loss"] for x in steps])
    np.testing.assert_array_equal(st["run"], [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(ep["run"], [0, 1])
    start2 = pd.metrics["run_starts"][1]
    np.testing.assert_allclose(st["time"], [1.0, 2.0, 3.0, start2 + 0.5, start2 + 1.2])
    np.testing.assert_allclose(ep["time"], [2.5, start2 + 1.4])


def test_a_rollback_voids_the_curves_it_redid_and_is_marked(tmp_path):
    rd = make_run_dir(tmp_path / "run", rollback_run())
    write_metrics(rd, [
        {"event": "step", "step": 2, "epoch": 0, "loss": 1.0, "wall_s": 0.2, "samples_per_s": 100.0},
        {"event": "step", "step": 4, "epoch": 0, "loss": 0.9, "wall_s": 0.4, "samples_per_s": 100.0},   # voided
        {"event": "step", "step": 6, "epoch": 1, "loss": 0.8, "wall_s": 0.6, "samples_per_s": 100.0},   # voided
        {"event": "rollback", "step": 6, "to_step": 3, "reason": "audit of task failed", "wall_s": 0.7},
        {"event": "step", "step": 4, "epoch": 0, "loss": 0.85, "wall_s": 0.8, "samples_per_s": 90.0},
        {"event": "step", "step": 8, "epoch": 1, "loss": 0.7, "wall_s": 1.0, "samples_per_s": 95.0}])
    pd = collect(rd)
    st = pd.metrics["steps"]
    assert list(zip(st["step"], st["loss"])) == [(2, 1.0), (4, 0.85), (8, 0.7)]
    rb = [e for e in pd.events if e["kind"] == "rollback"]
    assert [(e["step"], e["to_step"]) for e in rb] == [(6, 3)]
    fig = draw_throughput(pd)
    ax = fig.axes[0]
    vlines = [ln for ln in ax.lines if ln.get_label() == "rollback" or ln.get_color() == "#d62728"]
    assert [ln.get_xdata()[0] for ln in vlines] == [pytest.approx(rb[0]["time"])]


def test_rank_panels_are_the_reports_rows(scenario_dir):
    pd = collect(scenario_dir)
    led = pd.report["ledger"]
    rows = {d["rank"]: d for d in led["ranks"]}
    rk = pd.ranks
    copies = copies_of(scenario_dir / "ledger.jsonl")
    accepted_snippets = collections.Counter()
    for c in copies:
        if c["state"] == "accepted" and c["kind"] == "grad":
            accepted_snippets[c["rank"]] += len(c["snippets"])
    total = sum(accepted_snippets.values())
    assert rk["ranks"] == [1, 2, 3]
    for i, r in enumerate(rk["ranks"]):
        assert rk["share"][i] == pytest.approx(accepted_snippets[r] / total)
        assert rk["credited"][i] == sum(1 for c in copies if c["rank"] == r and c["credited"] is True)
        assert rk["strikes"][i] == rows[r]["strikes"]
        assert rk["latency_s"][r]["med"] == pytest.approx(rows[r]["median_latency_s"], abs=1e-5)
        assert rk["compute_ms"][r]["med"] == pytest.approx(rows[r]["compute_ms_per_sample"], rel=1e-5)
        assert rk["suspect"][i] == (r in {s["rank"] for s in led["suspects"]})
    assert rk["hosts"]["n3"]["ranks"] == [3]


def test_collectors_ledgers_give_their_workers_rows(tmp_path):
    T = tree_run()
    rd = make_run_dir(tmp_path / "tree", T.root)
    T.write(rd)
    pd = collect(rd)
    counts = pd.timeline["counts"]
    want = collections.Counter()
    for p in [rd / "ledger.jsonl", *sorted(rd.glob("ledger.collector-*.jsonl"))]:
        want.update(c["rank"] for c in copies_of(p))
    assert {r: sum(by.values()) for r, by in counts.items()} == dict(want)
    assert set(pd.timeline["rows"]) == {1, 2, 3, 4, 5, 6}


# ---------------------------------------------------------------- the drawing --
def test_curves_draw_the_metrics_points(scenario_dir):
    pd = collect(scenario_dir)
    fig = draw_curves(pd)
    loss_step, acc_step, loss_time = fig.axes[0], fig.axes[2], fig.axes[1]
    steps = [x for x in SCENARIO_METRICS if x["event"] == "step"]
    epochs = [x for x in SCENARIO_METRICS if x["event"] == "epoch"]
    train = loss_step.lines[0]
    assert list(train.get_xdata()) == [x["step"] for x in steps]
    assert list(train.get_ydata()) == [x["loss"] for x in steps]
    test = loss_step.lines[1]
    assert list(zip(test.get_xdata(), test.get_ydata())) == [(x["step"], x["test_loss"]) for x in epochs]
    acc = acc_step.lines[0]
    assert list(acc.get_ydata()) == pytest.approx([100 * x["test_accuracy"] for x in epochs])
    np.testing.assert_allclose(loss_time.lines[0].get_xdata(), pd.metrics["steps"]["time"])
    opt = draw_optimizer(pd)
    assert list(opt.axes[0].lines[0].get_ydata()) == [x["lr"] for x in steps]
    assert list(opt.axes[1].lines[0].get_ydata()) == [x["grad_norm"] for x in steps]


def test_timeline_draws_one_rectangle_per_copy(scenario_dir):
    pd = collect(scenario_dir)
    fig = draw_timeline(pd)
    assert fig.geo["mode"] == "exact"
    drawn = collections.Counter()
    rows = pd.timeline["rows"]
    for pc in fig.axes[0].collections:
        for path in pc.get_paths():
            y = path.vertices[:, 1].mean()
            drawn[(rows[int(round(y))], pc.fate)] += 1
    copies = copies_of(scenario_dir / "ledger.jsonl")
    assert drawn == collections.Counter((c["rank"], expected_fate(c)) for c in copies)
    assert len(fig.axes[0].collections) == len({expected_fate(c) for c in copies})    # one artist per fate
    # overlapping copies of a rank stack in lanes inside its row
    for name, b in fig.geo["bars"].items():
        assert ((b["y"] >= b["row"] - 0.4 - 1e-9) & (b["y"] + b["h"] <= b["row"] + 0.4 + 1e-9)).all()


def binned_ledger(tmp_path, steps=600):
    """A ledger of 3,601 copies, a rejected one at step 300 on rank 2."""
    L = Run(tasks=3, per_task=1, steps_per_epoch=steps, epochs=1)
    L.run(0)
    L.steps(0, steps)
    L.copy(300, 10**6, 2, "rejected", snippets=[0], credited=False)
    L.end(steps)
    rd = make_run_dir(tmp_path / "big", L)
    return rd


def test_a_long_ledger_is_binned_and_every_copy_is_covered(tmp_path):
    rd = binned_ledger(tmp_path)
    pd = collect(rd)
    tl = pd.timeline
    n = len(tl["start"])
    assert timeline_bars(tl)["mode"] == "exact" and n <= EXACT_BARS
    geo = timeline_bars(tl, max_bars=1000, bins=400)    # more copies than it draws one by one
    assert geo["mode"] == "binned" and geo["bins"] == 400
    t0, t1 = geo["span"]
    dt = (t1 - t0) / 400
    cover = np.zeros((len(tl["rows"]), 400), dtype=bool)
    cells = {}
    for name, b in geo["bars"].items():
        for x, w, r in zip(b["x"], b["w"], b["row"]):
            c0, c1 = int(round((x - t0) / dt)), int(round((x + w - t0) / dt))
            assert not cover[r, c0:c1].any()          # rectangles of a row do not overlap
            cover[r, c0:c1] = True
            for c in range(c0, c1):
                cells[(r, c)] = name
    b0 = np.clip(((tl["start"] - t0) / dt).astype(int), 0, 399)
    b1 = np.clip(((tl["end"] - t0) / dt).astype(int), 0, 399)
    for r, a, b in zip(tl["row"], b0, b1):
        assert cover[r, a:b + 1].all()
    k = int(np.nonzero(tl["fate"] == FATES.index("rejected"))[0][0])
    assert cells[(int(tl["row"][k]), int(b0[k]))] == "rejected"
    assert sum(len(b["x"]) for b in geo["bars"].values()) < n / 5
    fig = draw_timeline(pd, max_bars=1000)
    assert fig.geo["mode"] == "binned" and len(fig.axes[0].collections) <= len(FATES)


def test_ranks_figure_draws_the_panels(scenario_dir):
    pd = collect(scenario_dir)
    fig = draw_ranks(pd)
    share, credits = fig.axes[0], fig.axes[1]
    assert [p.get_height() for p in share.patches] == pytest.approx([100 * s for s in pd.ranks["share"]])
    assert [p.get_height() for p in credits.patches] == pd.ranks["credited"]
    red = [t.get_text() for t in share.get_xticklabels() if t.get_color() == "#d62728"]
    assert red == [str(s["rank"]) for s in pd.report["ledger"]["suspects"]]


# -------------------------------------------------------------------- output --
def test_write_plots_writes_pngs_and_a_self_contained_page(scenario_dir, tmp_path):
    out = tmp_path / "out"
    res = write_plots(scenario_dir, out)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["curves.png", "optimizer.png", "ranks.png", "report.html", "throughput.png", "timeline.png"]
    page = (out / "report.html").read_text()
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    pngs = {base64.b64decode(u) for u in uris}
    assert pngs == {(out / n).read_bytes() for n in names if n.endswith(".png")}
    assert all(p.startswith(b"\x89PNG") for p in pngs)
    assert "<script" not in page and not re.search(r'(src|href)="(https?:)?//', page)
    # the suspects with the report's own reasons
    led = res["report"]["ledger"]
    assert led["suspects"]
    for s in led["suspects"]:
        assert html.escape("; ".join(s["reasons"])) in page
    assert f'class="status {led["integrity"]["status"]}"' in page
    assert res["html"] == str(out / "report.html")


def test_write_plots_defaults_to_run_dir_report_and_without_ledger(tmp_path):
    rd = tmp_path / "old"
    rd.mkdir()
    write_metrics(rd, SCENARIO_METRICS[:3])
    res = write_plots(rd)
    assert sorted(p.name for p in (rd / "report").iterdir()) == ["curves.png", "optimizer.png", "report.html",
                                                                 "throughput.png"]
    assert "no ledger" in (rd / "report" / "report.html").read_text()
    assert res["report"]["ledger"] is None


def test_tap_skips_copies_without_times():
    tap = LedgerTap()
    recs = [{"ev": "run", "start_step": 0, "unix_time": 1.0},
            {"ev": "copy", "rank": 1, "state": "accepted", "assigned": 0.1, "finished": 0.2},
            {"ev": "copy", "rank": 1, "state": "accepted"},
            {"ev": "copy", "rank": "x", "state": "accepted", "assigned": 0.1, "finished": 0.2}]
    assert list(tap.stream(iter(recs), None)) == recs
    assert len(tap.rank) == 1 and tap.skipped == 2
    tl = timeline(tap, tap.offsets())
    assert tl["counts"] == {1: {"accepted": 1}}


def test_a_ledger_without_copies_still_draws(tmp_path):
    L = Run()
    L.run(0)
    L.end(0)
    rd = make_run_dir(tmp_path / "idle", L)
    res = write_plots(rd)
    assert len(res["files"]) == 5
    fig = draw_timeline(res["data"])
    assert [t.get_text() for t in fig.axes[0].texts] == ["no task copies in the ledger"]
    assert not fig.axes[0].collections
