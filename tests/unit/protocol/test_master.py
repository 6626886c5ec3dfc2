"""The recorder's durable ledger and kept checkpoints."""
from __future__ import annotations

import os
from pathlib import Path

from raven_hpc.recorder import cut_back, kept_checkpoints, prune_kept, remove_stale_temporaries


def test_cut_back_keeps_the_tail_aside(tmp_path: Path):
    p = tmp_path / "ledger.jsonl"
    p.write_text('{"a": 1}\n{"b": 2}\n{"c": 3')
    cut_back(p, len('{"a": 1}\n'))
    assert p.read_text() == '{"a": 1}\n'
    assert (tmp_path / "ledger.superseded.jsonl").read_text() == '{"b": 2}\n{"c": 3\n'
    cut_back(p, 100)                            # already shorter: untouched
    assert p.read_text() == '{"a": 1}\n'


def test_prune_keeps_the_newest_and_the_rollback_point(tmp_path: Path):
    d = tmp_path / "checkpoints"
    d.mkdir()
    for s in (0, 4, 8, 12, 16):
        (d / f"step-{s:09d}.h5").write_bytes(b"x")
    prune_kept(d, 2, floor=5)
    assert [s for s, _ in kept_checkpoints(d)] == [4, 12, 16]
    prune_kept(d, 1, floor=16)
    assert [s for s, _ in kept_checkpoints(d)] == [16]


def test_stale_checkpoint_temporaries_are_removed(tmp_path: Path):
    (tmp_path / "checkpoints").mkdir()
    dead = tmp_path / ".checkpoint.h5.tmp-999999"
    mine = tmp_path / f".checkpoint.h5.tmp-{os.getpid()}"
    other = tmp_path / "checkpoints" / ".step-000000004.h5.tmp-424242"
    for p in (dead, mine, other):
        p.write_bytes(b"partial")
    keep = tmp_path / "checkpoint.h5"
    keep.write_bytes(b"good")
    remove_stale_temporaries(tmp_path)
    assert not dead.exists() and not other.exists() and mine.exists() and keep.exists()
