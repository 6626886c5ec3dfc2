"""raven_hpc.drain: the operator's drain file."""
from __future__ import annotations

import os

import pytest

from raven_hpc.errors import RavenError
from raven_hpc.drain import drain_path, parse_drain, parse_ranks, read_drain, update_drain


# -------------------------------------------------------------------- drain --
def test_drain_path_from_config(tmp_path):
    assert drain_path(tmp_path) == tmp_path / "drain"
    (tmp_path / "config.toml").write_text('[poc]\ndrain_file = "/somewhere/else/drain"\n')
    assert str(drain_path(tmp_path)) == "/somewhere/else/drain"
    (tmp_path / "config.toml").write_text('[poc]\ndrain_file = "ops/drain.txt"\n')
    assert drain_path(tmp_path) == tmp_path / "ops" / "drain.txt"
    (tmp_path / "config.toml").write_text('[poc]\ndrain_file = "{run}/d"\n')
    assert drain_path(tmp_path) == tmp_path / "d"
    (tmp_path / "config.toml").write_text('[train]\nepochs = 1\n')
    assert drain_path(tmp_path) == tmp_path / "drain"


def test_update_drain_adds_removes_atomically(tmp_path, monkeypatch):
    calls = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append((a, b)), real(a, b)))
    res = update_drain(tmp_path, [3, 1])
    assert res["changed"] == [1, 3] and res["ranks"] == [1, 3]
    assert (tmp_path / "drain").read_text() == "1\n3\n"
    assert len(calls) == 1 and os.path.dirname(calls[0][0]) == str(tmp_path)
    res = update_drain(tmp_path, [3, 5])
    assert res["changed"] == [5] and res["unchanged"] == [3] and read_drain(tmp_path / "drain") == [1, 3, 5]
    res = update_drain(tmp_path, [1, 7], undo=True)
    assert res["changed"] == [1] and res["unchanged"] == [7]
    assert (tmp_path / "drain").read_text() == "3\n5\n"
    update_drain(tmp_path, [3, 5], undo=True)
    assert (tmp_path / "drain").read_text() == "" and read_drain(tmp_path / "drain") == []
    assert [p.name for p in tmp_path.iterdir()] == ["drain"]      # no temp files left


def test_update_drain_keeps_comments_and_refuses_garbage(tmp_path):
    (tmp_path / "drain").write_text("# bad node, ticket 42\n2\n")
    update_drain(tmp_path, [4])
    assert (tmp_path / "drain").read_text() == "# bad node, ticket 42\n2\n4\n"
    (tmp_path / "drain").write_text("2\nnode7\n")
    with pytest.raises(RavenError, match="not a rank"):
        update_drain(tmp_path, [4])
    assert (tmp_path / "drain").read_text() == "2\nnode7\n"
    with pytest.raises(RavenError, match="no run directory"):
        update_drain(tmp_path / "nope", [1])


def test_update_drain_uses_the_configured_file(tmp_path):
    (tmp_path / "ops").mkdir()
    (tmp_path / "config.toml").write_text(f'[poc]\ndrain_file = "{tmp_path}/ops/drain"\n')
    res = update_drain(tmp_path, [2])
    assert res["path"] == str(tmp_path / "ops" / "drain") and (tmp_path / "ops" / "drain").read_text() == "2\n"
    (tmp_path / "config.toml").write_text('[poc]\ndrain_file = "missing/dir/drain"\n')
    with pytest.raises(RavenError, match="does not exist"):
        update_drain(tmp_path, [2])


def test_parse_ranks_and_drain_text():
    assert parse_ranks(["3", "1", "3"]) == [1, 3]
    for bad in (["0"], ["-1"], ["x"], ["1.5"], []):
        with pytest.raises(RavenError):
            parse_ranks(bad)
    assert parse_drain("1\n\n# c\n2 3 # note\n4,5\n") == ([1, 2, 3, 4, 5], [])
    assert parse_drain("1\nzero\n0\n")[1] == ["zero", "0"]
