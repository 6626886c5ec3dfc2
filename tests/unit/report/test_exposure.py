"""Exposure: the distinct samples each rank and host was sent, from the ledgers."""
from __future__ import annotations

import json

import pytest

from raven_hpc.ledger_schema import check_record
from raven_hpc.report.exposure import exposure, exposure_from_records, exposure_lines

#: train: 100 samples in snippets of 32 (32, 32, 32, 4); test: 40 (32, 8)
DATA = {"delivery": "scatter", "splits": {"train": {"samples": 100, "snippets": 4, "snippet_size": 32},
                                          "test": {"samples": 40, "snippets": 2, "snippet_size": 32}}}


def run(hosts, data=DATA, step=0):
    rec = {"ev": "run", "unix_time": 0.0, "start_step": step, "resumed": step > 0, "ranks": len(hosts),
           "hosts": {str(r): h for r, h in hosts.items()}, "poc": {}, "faults": [], "data": data}
    assert not check_record(rec)
    return rec


def sent(rank, host, split, ids, step=0, **extra):
    counts = {s: [min(32, d["samples"] - 32 * i) for i in range(d["snippets"])] for s, d in DATA["splits"].items()}
    rec = {"ev": "sent", "step": step, "rank": rank, "split": split, "snippets": list(ids),
           "samples": sum(counts[split][i] for i in ids), "host": host, **extra}
    assert not check_record(rec)
    return rec


def row(result, rank):
    return next(r for r in result["ranks"] if r["rank"] == rank)


def test_distinct_samples_per_rank_and_host():
    recs = [run({0: "m", 1: "a", 2: "a", 3: "b"}),
            sent(1, "a", "train", [0, 3]), sent(2, "a", "train", [3, 1]), sent(3, "b", "train", [2]),
            sent(1, "a", "train", [0]),                       # sent again (evicted): counted once
            sent(1, "a", "test", [1]), sent(3, "b", "test", [0, 1])]
    out = exposure_from_records(recs)
    assert out["dataset"] == {"samples": 140, "splits": {"train": 100, "test": 40}}
    assert out["delivery"] == ["scatter"]
    r1 = row(out, 1)
    assert r1["splits"] == {"test": {"snippets": 1, "samples": 8}, "train": {"snippets": 2, "samples": 36}}
    assert (r1["samples"], r1["percent"], r1["whole"]) == (44, round(100 * 44 / 140, 3), False)
    assert row(out, 2)["samples"] == 36 and row(out, 3)["samples"] == 32 + 40
    a = next(h for h in out["hosts"] if h["host"] == "a")
    assert a["ranks"] == [1, 2] and a["samples"] == 32 + 32 + 4 + 8     # train 0, 1, 3 and test 1
    assert [h["host"] for h in out["hosts"]] == ["a", "b"]
    assert not any(r["rank"] == 0 for r in out["ranks"])
    assert out["warnings"] == []


def test_collectors_rows_and_a_resumed_rank_on_another_host_are_apart():
    recs = [run({0: "m", 1: "a", 2: "a"}), sent(1, "a", "train", [0]),
            sent(2, "a", "train", [1], collector=1),          # from collector 1's ledger
            run({0: "m", 1: "c"}, step=5), sent(1, "c", "train", [2])]
    out = exposure_from_records(recs)
    assert [(r["rank"], r["host"], r["samples"]) for r in out["ranks"]] == [(1, "a", 32), (1, "c", 32), (2, "a", 32)]
    assert [(h["host"], h["samples"]) for h in out["hosts"]] == [("a", 64), ("c", 32)]


def test_ranks_that_read_the_file_could_read_all_of_it():
    recs = [run({0: "m", 1: "a", 2: "b"}, data=dict(DATA, delivery="read")),
            run({0: "m", 1: "a", 2: "b"}, step=3), sent(2, "b", "train", [1])]
    out = exposure_from_records(recs)
    assert out["delivery"] == ["read", "scatter"]
    assert row(out, 1)["whole"] and row(out, 1)["samples"] == 140 and row(out, 1)["percent"] == 100.0
    assert row(out, 2)["whole"]                               # it read the file in the first segment
    lines = exposure_lines(out)
    assert lines[0].startswith("exposure (data.delivery = read, scatter): distinct samples each rank was given, "
                               "of 140 in the splits used (train 100, test 40)")
    assert "  rank 1 (a): the whole dataset (it read the file itself)" in lines


def test_bad_records_are_named_not_counted():
    recs = [run({0: "m", 1: "a"}), sent(1, "a", "train", [0]),
            {"ev": "sent", "step": 0, "rank": 1, "split": "other", "snippets": [0], "samples": 1, "host": "a"},
            {"ev": "sent", "step": 0, "rank": 1, "split": "train", "snippets": [9], "samples": 1, "host": "a"},
            {"ev": "sent", "step": 0, "host": "a"}]
    out = exposure_from_records(recs)
    assert row(out, 1)["samples"] == 32
    assert len(out["warnings"]) == 3
    assert any("split other" in w for w in out["warnings"]) and any("snippet 9" in w for w in out["warnings"])


def test_the_run_directory_is_read_with_its_superseded_and_collector_ledgers(tmp_path):
    def write(name, recs, tail=""):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in recs) + tail)

    write("ledger.jsonl", [run({0: "m", 1: "a", 4: "b", 5: "b"}), sent(1, "a", "train", [0])], tail='{"ev": "se')
    write("ledger.superseded.jsonl", [sent(1, "a", "train", [1])])
    write("ledger.collector-4.jsonl", [{"ev": "collector", "collector": 4}, sent(5, "b", "test", [1], collector=4)])
    out = exposure(tmp_path)
    assert [p.rsplit("/", 1)[-1] for p in out["files"]] == ["ledger.jsonl", "ledger.superseded.jsonl",
                                                            "ledger.collector-4.jsonl"]
    assert row(out, 1)["samples"] == 64 and row(out, 5)["samples"] == 8
    assert exposure_lines(out)[1:] == ["  rank 1 (a): 64 samples (45.7%): train 64",
                                       "  rank 5 (b): 8 samples (5.7%): test 8",
                                       "  host a (rank 1): 64 samples (45.7%): train 64",
                                       "  host b (rank 5): 8 samples (5.7%): test 8"]


def test_an_empty_run_directory():
    out = exposure_from_records([])
    assert out["ranks"] == [] and out["dataset"]["samples"] == 0
    assert exposure_lines(out)[1] == "  no rank was sent any data"


@pytest.mark.parametrize("field", ["rank", "split", "snippets", "samples"])
def test_sent_records_are_checked_by_the_schema(field):
    rec = sent(1, "a", "train", [0])
    del rec[field]
    assert check_record(rec) == [f"sent record without {field!r}"]
