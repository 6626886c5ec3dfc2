"""Snippet packets: what rank 0 sends a worker that does not read the file."""
from __future__ import annotations

import numpy as np
import pytest

from raven_hpc.data import open_dataset, snippet_checksum
from raven_hpc.data.packet import HELD, DatasetInfo, PacketError, PacketView, TaskData, pack, packet_nbytes
from tests.unit.data.datasets import images, write


@pytest.fixture
def ds(tmp_path):
    x, y = images(100)
    tx, ty = images(20, seed=1)
    path = tmp_path / "d.h5"
    write(path, {"train": (x, y), "test": (tx, ty)}, snippet_size=8)
    with open_dataset(path) as d:
        yield d


def packet_of(ds, ids, held=None, split="train", task=7, step=3, gen=0):
    sp = ds.split(split)
    info = DatasetInfo.from_dataset(ds)
    held = held or [False] * len(ids)
    send = [i for i, h in zip(ids, held) if not h]
    x, y = sp.read_raw(send) if send else (None, None)
    data, o = {}, 0
    for i in send:
        c = int(sp.snippets["count"][i])
        data[i] = (x[o:o + c], y[o:o + c])
        o += c
    buf = pack(info, step=step, task=task, split=split, gen=gen, kind=0, ids=ids,
               checksums=sp.snippets["checksum"][ids], held=held, data=data)
    return info, buf


def test_info_describes_the_file_and_round_trips(ds):
    info = DatasetInfo.from_dataset(ds)
    assert info.feature_shape == (28, 28) and info.num_classes == 10 and info.stored == np.dtype(np.uint8)
    assert info.splits == {"train": {"samples": 100, "snippets": 13}, "test": {"samples": 20, "snippets": 3}}
    np.testing.assert_array_equal(info.counts("train"), ds.split("train").snippets["count"])
    assert info.sample_nbytes == 28 * 28 + 8
    assert DatasetInfo.from_dict(info.to_dict()) == info


def test_read_raw_is_what_the_checksum_covers(ds):
    sp = ds.split("train")
    x, y = sp.read_raw([3, 12, 4])
    assert x.dtype == np.uint8 and y.dtype == np.dtype("<i8") and x.shape == (8 + 4 + 8, 28, 28)
    assert snippet_checksum(x[:8], y[:8]) == int(sp.snippets["checksum"][3])
    assert snippet_checksum(x[8:12], y[8:12]) == int(sp.snippets["checksum"][12])
    xf, yf = sp.read_snippets([3, 12, 4])
    np.testing.assert_array_equal(yf, y)
    assert sp.enable_cache().read_raw([3, 12, 4])[0].tobytes() == x.tobytes()


def test_a_packet_carries_the_bytes_and_reads_as_the_file_does(ds):
    ids = [5, 12, 0]
    info, buf = packet_of(ds, ids)
    assert buf.nbytes == packet_nbytes(info, 3, 8 + 4 + 8)
    view = PacketView(buf, info)
    assert view.ids == ids and view.field("task") == 7 and view.field("step") == 3 and view.split == "train"
    assert view.check_rows(ids) == [] and view.verify() == []
    data = {i: view.snippet(k) for k, i in enumerate(ids)}
    x, y = TaskData(info, "train", data).read_snippets(ids)
    fx, fy = ds.split("train").read_snippets(ids)
    assert x.dtype == np.float32 and np.array_equal(x, fx) and np.array_equal(y, fy)   # bit for bit
    assert TaskData(info, "train", data).read_snippets([12])[0].shape == (4, 28, 28)


def test_a_flipped_byte_names_its_snippet(ds):
    ids = [1, 2, 3]
    info, buf = packet_of(ds, ids)
    view = PacketView(buf, info)
    x, _ = view.snippet(1)
    x[2, 5] ^= 0xFF                      # a byte of snippet 2
    assert view.verify() == [2]
    _, y = view.snippet(2)
    y[0] += 1                            # a label of snippet 3
    assert view.verify() == [2, 3]


def test_held_snippets_carry_no_bytes(ds):
    info, full = packet_of(ds, [1, 2, 3])
    info, part = packet_of(ds, [1, 2, 3], held=[True, False, True])
    assert part.nbytes == full.nbytes - 2 * 8 * info.sample_nbytes
    view = PacketView(part, info)
    assert [view.held(k) for k in range(3)] == [True, False, True] and view.rows[0, 3] == HELD
    assert view.check_rows([1, 2, 3]) == [] and view.verify() == []
    assert view.field("samples") == 8


def test_rows_that_do_not_fit_the_task_are_named(ds):
    info, buf = packet_of(ds, [1, 2, 3])
    view = PacketView(buf, info)
    assert view.check_rows([1, 4, 3]) == [4]
    assert view.check_rows([1, 2]) == [1, 2]
    view.rows[2, 1] = 7                  # a sample count other than the split's
    assert view.check_rows([1, 2, 3]) == [3]


def test_a_damaged_header_or_length_is_a_packet_error(ds):
    info, buf = packet_of(ds, [1, 2])
    with pytest.raises(PacketError):
        PacketView(buf[:-8], info)
    with pytest.raises(PacketError):
        PacketView(buf[:16], info)
    bad = buf.copy()
    bad[:8] = 0                          # the magic number
    with pytest.raises(PacketError, match="damaged header"):
        PacketView(bad, info)
    bad = buf.copy()
    bad[24:32] = np.frombuffer(np.int64(9).tobytes(), np.uint8)   # the split index
    with pytest.raises(PacketError, match="split index 9"):
        PacketView(bad, info)


def test_float_features_keep_their_dtype(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 5)).astype(np.float32)
    y = rng.integers(0, 3, 30)
    write(tmp_path / "f.h5", {"train": (x, y)}, num_classes=3, normalization={"scale": 1.0, "mean": 0.5, "std": 2.0})
    with open_dataset(tmp_path / "f.h5") as d:
        info, buf = packet_of(d, [3, 0])
        assert info.stored == np.dtype("<f4")
        view = PacketView(buf, info)
        assert view.verify() == []
        got = TaskData(info, "train", {i: view.snippet(k) for k, i in enumerate([3, 0])}).read_snippets([3, 0])
        want = d.split("train").read_snippets([3, 0])
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_labels_kept_in_memory_read_the_same(ds):
    sp = ds.split("train")
    want = sp.read_raw([2, 12, 0])
    got = sp.keep_labels().read_raw([2, 12, 0])
    assert sp._labels_mem is not None
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    sp._labels_mem[17] = (sp._labels_mem[17] + 1) % 10       # what memory says is what is checked
    with pytest.raises(Exception, match="checksum mismatch in snippet 2"):
        sp.read_raw([2])
