#!/usr/bin/env python3
"""Build the embedded demo dataset data/mnist-small/ from the full MNIST IDX files.

Selection (deterministic, no randomness): for each digit class c, take the
first k_c examples of that class in the original file order, where k_c is
the class's share of the requested total (largest-remainder rounding), and
keep the chosen examples in their original order.  Train subset from the
MNIST training set, test subset from the MNIST test (t10k) set.

Output: the four MNIST IDX files, gzip-compressed reproducibly (level 9,
mtime 0, no file name in the header), and PROVENANCE.md with checksums and
per-class counts.

    python data/make_mnist_small.py [--source ../shared/data/mnist] [--out data/mnist-small]
                                    [--train 8000] [--test 2000]
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from raven_hpc.data import read_idx  # noqa: E402

# From ../shared/data/README.md (checked on arrival against the published set).
SOURCE_SHA256 = {
    "train-images-idx3-ubyte.gz": "0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971",
    "train-labels-idx1-ubyte.gz": "1787548bbe0bff1ec2ecdc0ef292b02df999e2d1a6002d27500982c652b17203",
    "t10k-images-idx3-ubyte.gz": "1a1a05eab793c14bb050b398624a11b0ffd1a2953baed553b1b9bd079e2a20be",
    "t10k-labels-idx1-ubyte.gz": "b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b",
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def quotas(labels: np.ndarray, total: int) -> np.ndarray:
    counts = np.bincount(labels, minlength=10)
    exact = counts * total / counts.sum()
    k = np.floor(exact).astype(int)
    for c in np.argsort(-(exact - k), kind="stable")[: total - k.sum()]:
        k[c] += 1
    return k


def select(labels: np.ndarray, total: int) -> np.ndarray:
    k = quotas(labels, total)
    idx = [np.flatnonzero(labels == c)[: k[c]] for c in range(10)]
    return np.sort(np.concatenate(idx))


def idx_bytes(arr: np.ndarray) -> bytes:
    magic = 2051 if arr.ndim == 3 else 2049
    head = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()


def write_gz(path: Path, payload: bytes) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=buf, mtime=0) as g:
        g.write(payload)
    path.write_bytes(buf.getvalue())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "mnist-small")
    ap.add_argument("--train", type=int, default=8000)
    ap.add_argument("--test", type=int, default=2000)
    args = ap.parse_args(argv)

    src_hash = {}
    for name, want in SOURCE_SHA256.items():
        got = sha256(args.source / name)
        if got != want:
            print(f"error: {args.source / name} sha256 {got} != published {want}", file=sys.stderr)
            return 1
        src_hash[name] = got

    args.out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, stem, total in (("train", "train", args.train), ("test", "t10k", args.test)):
        x = read_idx(args.source / f"{stem}-images-idx3-ubyte.gz", "images")
        y = read_idx(args.source / f"{stem}-labels-idx1-ubyte.gz", "labels")
        keep = select(y, total)
        write_gz(args.out / f"{stem}-images-idx3-ubyte.gz", idx_bytes(x[keep]))
        write_gz(args.out / f"{stem}-labels-idx1-ubyte.gz", idx_bytes(y[keep]))
        counts[split] = (np.bincount(y[keep], minlength=10).tolist(), len(keep), len(y))

    files = sorted(p for p in args.out.iterdir() if p.name.endswith(".gz"))
    total_bytes = sum(p.stat().st_size for p in files)
    lines = [
        "# mnist-small: provenance",
        "",
        "A small, real subset of the MNIST handwritten-digit database "
        "(Yann LeCun, Corinna Cortes, Christopher J.C. Burges; "
        "http://yann.lecun.com/exdb/mnist/), kept in MNIST's own IDX format "
        "(28x28 uint8 images, labels 0-9), gzip-compressed.",
        "",
        "Made by `data/make_mnist_small.py` (run it again to reproduce these files "
        "byte for byte).",
        "",
        "## Source files",
        "",
        "| file | sha256 |",
        "|---|---|",
        *[f"| {n} | {h} |" for n, h in src_hash.items()],
        "",
        "## Selection",
        "",
        f"Stratified and deterministic: for each digit, the first k examples of that digit "
        f"in the original file order, k being the digit's share of the subset size "
        f"(largest-remainder rounding); the chosen examples keep their original order. "
        f"Train: {counts['train'][1]} of the {counts['train'][2]} MNIST training images; "
        f"test: {counts['test'][1]} of the {counts['test'][2]} MNIST test (t10k) images. "
        "No image is altered.",
        "",
        "## Per-class counts (digits 0-9)",
        "",
        "| split | " + " | ".join(str(c) for c in range(10)) + " | total |",
        "|---|" + "---|" * 11,
        *[f"| {s} | " + " | ".join(map(str, counts[s][0])) + f" | {counts[s][1]} |"
          for s in ("train", "test")],
        "",
        "## Files produced",
        "",
        "| file | bytes | sha256 |",
        "|---|---|---|",
        *[f"| {p.name} | {p.stat().st_size} | {sha256(p)} |" for p in files],
        "",
        f"Total: {total_bytes} bytes.",
        "",
        "Prepare it with `raven-hpc prepare mnist data/mnist-small out.h5`.",
        "",
    ]
    (args.out / "PROVENANCE.md").write_text("\n".join(lines))
    print(f"wrote {len(files)} files, {total_bytes} bytes, to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
