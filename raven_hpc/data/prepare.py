"""Turn a dataset source into a prepared raven-hpc HDF5 file (``raven-hpc prepare``).

Sources (``kind``; ``"auto"`` picks from what ``source`` looks like):

``mnist`` / ``idx``
    A folder with IDX files (raw or ``.gz``), MNIST's naming::

        train-images-idx3-ubyte[.gz]  train-labels-idx1-ubyte[.gz]
        t10k-images-idx3-ubyte[.gz]   t10k-labels-idx1-ubyte[.gz]

    ``-images.idx3-ubyte`` / ``test-`` spellings and a ``name-`` prefix (EMNIST)
    are accepted too; passing one of the files means its folder.  Magic numbers
    (2051 images, 2049 labels), declared sizes and image/label counts are
    checked.  The t10k/test pair, when present, is the test split.
    ``mnist`` normalises with the published MNIST constants (mean 0.1307,
    std 0.3081); ``idx`` (and ``auto``) with statistics of the train split.
``npz``
    Keys ``x_train, y_train[, x_test, y_test]`` (``X_`` spelling too), or a
    single ``X, y`` / ``x, y`` / ``features, labels`` pair.
``npy``
    A folder holding ``x_train.npy, y_train.npy[, x_test.npy, y_test.npy]``
    (``X_`` too) or ``X.npy, y.npy`` (``x.npy``, ``features.npy, labels.npy``);
    or one features file: its labels are the file of the same name with the
    leading ``X``/``x`` replaced by ``y`` (``features``/``images`` by
    ``labels``), and a ``train`` file brings its ``test`` sibling along.
``csv``
    One row per sample, comma/tab/semicolon separated, optional header.  The
    label is the column named ``label`` (or ``labels``, ``class``, ``target``,
    ``y``) when there is a header, else the first column.  Integer features in
    [0, 255] are stored as uint8.  A file or folder named ``*train*`` brings
    its ``*test*`` sibling along.
``images``
    A folder of class folders (``cat/``, ``dog/``; or ``train/`` and ``test/``
    each holding class folders); needs Pillow.

Without a test split in the source, ``test_fraction`` (default 0.1) of the
samples is set aside as the test split.  The train split is shuffled with
``shuffle_seed`` (so snippets are not class-sorted); the test split keeps its
order.  ``limit`` keeps the first N samples of each split (after shuffling).
"""
from __future__ import annotations

import contextvars
import gzip
import os
import re
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .format import MNIST_NORMALIZATION, _first_nonfinite, check_output_path, write_dataset

__all__ = ["prepare", "read_idx", "load_source", "KINDS", "MAX_CLASSES"]

KINDS = ("auto", "mnist", "idx", "npz", "npy", "csv", "images")

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_NAME = re.compile(
    r"^(?:.+-)?(?P<split>train|t10k|test)-(?P<role>images|labels)[.-]idx\d-ubyte(?P<gz>\.gz)?$"
)
_LABEL_COLUMNS = ("label", "labels", "class", "target", "y")
_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}

#: most classes a prepared file may have (labels are class indices 0..K-1)
MAX_CLASSES = 1_000_000
#: labels up to this many classes are accepted however sparse they are; above
#: it, the largest label + 1 may be at most SPARSE_FACTOR x the distinct labels
SPARSE_MIN_CLASSES = 1000
SPARSE_FACTOR = 10

# Files the loaders read while one load_source() call runs, so prepare() can
# refuse an output that is one of them (writing it would destroy the source).
_READ_LOG: contextvars.ContextVar = contextvars.ContextVar("raven_prepare_reads", default=None)


def _note(path) -> None:
    log = _READ_LOG.get()
    if log is not None:
        log.append(Path(path))


# --------------------------------------------------------------------------
# IDX (MNIST family)
# --------------------------------------------------------------------------

def _read_bytes(path: Path) -> bytes:
    _note(path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DatasetError(
            f"{path}: broken gzip data ({exc}); the file is truncated or corrupt, download it again"
        ) from exc
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc


def read_idx(path, role: str = "images") -> np.ndarray:
    """Read one IDX file (raw or .gz) into a native-endian numpy array.

    ``role`` is ``"images"`` (expects magic 2051: unsigned bytes, 3 dims; any
    IDX with >= 2 dims is accepted) or ``"labels"`` (2049: 1 dim, integers).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    data = _read_bytes(path)
    expect = 2051 if role == "images" else 2049
    if len(data) < 4:
        raise DatasetError(
            f"{path}: only {len(data)} bytes, too short for an IDX header; the file is truncated"
        )
    magic = int.from_bytes(data[:4], "big")
    code, ndim = data[2], data[3]
    kinds = {2049: "labels", 2051: "images"}
    if data[0] != 0 or data[1] != 0 or code not in _IDX_TYPES or ndim == 0:
        raise DatasetError(
            f"{path}: wrong magic number {magic} (0x{magic:08x}); an IDX {role} file starts "
            f"with {expect} (0x{expect:08x}). Is this an MNIST-style IDX file?"
        )
    if (role == "images" and ndim < 2) or (role == "labels" and ndim != 1):
        hint = f" (IDX {kinds[magic]})" if magic in kinds else ""
        raise DatasetError(
            f"{path}: magic number {magic}{hint}, expected {expect} for IDX {role}; "
            "are the images and labels files swapped?"
        )
    dtype = np.dtype(_IDX_TYPES[code])
    if role == "labels" and dtype.kind == "f":
        raise DatasetError(f"{path}: labels are stored as floats ({dtype}); expected integers")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: IDX header is truncated ({len(data)} bytes)")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    want = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != want:
        what = "truncated" if len(data) < want else "has trailing bytes"
        raise DatasetError(
            f"{path}: header declares {dims[0]} {role} of shape {dims[1:]} ({want} bytes with "
            f"header) but the data is {len(data)} bytes: the file {what}; download it again"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def _find_idx(folder: Path) -> dict:
    found: dict = {}
    for p in sorted(folder.iterdir()):
        m = _IDX_NAME.match(p.name)
        if not m or not p.is_file():
            continue
        split = "train" if m["split"] == "train" else "test"
        key = (split, m["role"])
        found.setdefault(key, []).append(p)
    chosen = {}
    for key, paths in found.items():
        if len(paths) > 1:  # prefer the uncompressed twin of the same file
            raw = [p for p in paths if not p.name.endswith(".gz")]
            paths = raw if len(raw) == 1 and all(
                q.name in (raw[0].name, raw[0].name + ".gz") for q in paths) else paths
        if len(paths) > 1:
            raise DatasetError(
                f"{folder}: several {key[0]} {key[1]} files ({', '.join(p.name for p in paths)}); "
                "keep one"
            )
        chosen[key] = paths[0]
    return chosen


def _load_idx(folder: Path) -> dict:
    if folder.is_file():
        folder = folder.parent
    files = _find_idx(folder)
    if ("train", "images") not in files and ("train", "labels") not in files:
        raise DatasetError(
            f"{folder}: no MNIST-style IDX files found; expected train-images-idx3-ubyte[.gz], "
            "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
            "t10k-labels-idx1-ubyte[.gz]"
        )
    splits = {}
    for split in ("train", "test"):
        have = [r for r in ("images", "labels") if (split, r) in files]
        if not have:
            continue
        if len(have) == 1:
            missing = "labels" if have == ["images"] else "images"
            stem = "train" if split == "train" else "t10k"
            idx = "idx1" if missing == "labels" else "idx3"
            raise DatasetError(
                f"{folder}: found {files[(split, have[0])].name} but no {split} {missing} file "
                f"(expected {stem}-{missing}-{idx}-ubyte[.gz]); add it"
            )
        x = read_idx(files[(split, "images")], "images")
        y = read_idx(files[(split, "labels")], "labels")
        if x.shape[0] != y.shape[0]:
            raise DatasetError(
                f"{folder}: {files[(split, 'images')].name} has {x.shape[0]} images but "
                f"{files[(split, 'labels')].name} has {y.shape[0]} labels; they must match"
            )
        splits[split] = (x, y)
    return splits


# --------------------------------------------------------------------------
# numpy sources
# --------------------------------------------------------------------------

_X_NAMES = ("X", "x", "features", "data")
_Y_NAMES = ("y", "Y", "labels", "targets")


def _pick(keys, names):
    return next((k for k in names if k in keys), None)


def _pairs_from_keys(keys, where) -> dict:
    """Map split -> (x_key, y_key) from a set of array names."""
    out = {}
    for split in ("train", "test"):
        xk = _pick(keys, (f"x_{split}", f"X_{split}"))
        yk = _pick(keys, (f"y_{split}", f"Y_{split}"))
        if xk and yk:
            out[split] = (xk, yk)
        elif xk or yk:
            raise DatasetError(
                f"{where}: has {xk or yk} but not its {'labels' if xk else 'features'} "
                f"(expected x_{split} and y_{split})"
            )
    if "train" not in out:
        if "test" in out:
            raise DatasetError(f"{where}: has x_test/y_test but no x_train/y_train")
        xk, yk = _pick(keys, _X_NAMES), _pick(keys, _Y_NAMES)
        if not (xk and yk):
            raise DatasetError(
                f"{where}: cannot find features and labels among {sorted(keys)}; use "
                "x_train, y_train[, x_test, y_test] or X, y"
            )
        out["train"] = (xk, yk)
    return out


def _load_npz(path: Path) -> dict:
    _note(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            pairs = _pairs_from_keys(set(z.files), str(path))
            return {s: (z[xk], z[yk]) for s, (xk, yk) in pairs.items()}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(
            f"{path}: cannot read as .npz ({exc}); save it with numpy.savez (no object arrays)"
        ) from exc


def _npy(path: Path) -> np.ndarray:
    _note(path)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"{path}: cannot read as .npy ({exc})") from exc


def _labels_name(name: str) -> str | None:
    for a, b in (("features", "labels"), ("images", "labels"), ("Features", "Labels")):
        if name.startswith(a):
            return b + name[len(a):]
    if name[:1] in ("x", "X"):
        return "y" + name[1:]
    return None


def _load_npy(path: Path) -> dict:
    if path.is_dir():
        keys = {p.name[:-4] for p in path.glob("*.npy")}
        pairs = _pairs_from_keys(keys, str(path))
        return {s: (_npy(path / f"{xk}.npy"), _npy(path / f"{yk}.npy"))
                for s, (xk, yk) in pairs.items()}
    ylabel = _labels_name(path.name)
    ypath = path.with_name(ylabel) if ylabel else None
    if ypath is None or not ypath.is_file():
        raise DatasetError(
            f"{path}: cannot find its labels file (looked for "
            f"{ypath.name if ypath else 'a name starting with y'}); name the pair X.npy/y.npy "
            "or x_train.npy/y_train.npy"
        )
    splits = {"train": (_npy(path), _npy(ypath))}
    if "train" in path.name:
        tx, ty = path.with_name(path.name.replace("train", "test")), \
            ypath.with_name(ypath.name.replace("train", "test"))
        if tx.is_file() and ty.is_file():
            splits["test"] = (_npy(tx), _npy(ty))
    return splits


# --------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------

def _csv_first_line(path: Path) -> str:
    _note(path)
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.strip():
                    return line
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc
    raise DatasetError(f"{path}: the CSV file is empty")


def _read_csv(path: Path):
    first = _csv_first_line(path)
    delim = next((d for d in (",", "\t", ";") if d in first), None)
    fields = [s.strip().strip('"') for s in (first.split(delim) if delim else first.split())]

    def _num(s):
        try:
            float(s)
            return True
        except ValueError:
            return False

    header = not all(_num(s) for s in fields)
    label_col = 0
    if header:
        lower = [s.lower() for s in fields]
        label_col = next((lower.index(n) for n in _LABEL_COLUMNS if n in lower), 0)
    if len(fields) < 2:
        raise DatasetError(f"{path}: needs a label column and at least one feature column")
    try:
        data = np.loadtxt(path, delimiter=delim, skiprows=1 if header else 0,
                          dtype=np.float64, ndmin=2)
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetError(f"{path}: cannot parse as numeric CSV ({exc})") from exc
    if data.shape[0] == 0:
        raise DatasetError(f"{path}: no data rows")
    y = data[:, label_col]
    x = np.delete(data, label_col, axis=1)
    if np.isfinite(x).all() and x.size and x.min() >= 0 and x.max() <= 255 \
            and np.array_equal(x, np.round(x)):
        x = x.astype(np.uint8)
    else:
        x = x.astype(np.float32) if np.isfinite(x).all() else x
    return x, y


def _load_csv(path: Path) -> dict:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith((".csv", ".csv.gz", ".tsv")))
        train = [p for p in files if "train" in p.name]
        test = [p for p in files if "test" in p.name]
        if len(train) == 1:
            path = train[0]
        elif len(files) == 1:
            path = files[0]
        else:
            raise DatasetError(
                f"{path}: expected one *train*.csv (and optionally one *test*.csv), found "
                f"{[p.name for p in files] or 'no CSV files'}"
            )
        test_path = test[0] if len(test) == 1 and "train" in path.name else None
    else:
        sib = path.with_name(path.name.replace("train", "test"))
        test_path = sib if "train" in path.name and sib.is_file() else None
    splits = {"train": _read_csv(path)}
    if test_path is not None:
        splits["test"] = _read_csv(test_path)
    return splits


# --------------------------------------------------------------------------
# folder of images by class
# --------------------------------------------------------------------------

def _class_folders(folder: Path):
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _load_images(folder: Path) -> dict:
    try:
        from PIL import Image
    except ImportError as exc:
        raise DatasetError(
            f"{folder}: reading a folder of images needs Pillow (pip install pillow); or convert "
            "the images to an .npz with x_train/y_train"
        ) from exc
    sub = {p.name for p in _class_folders(folder)}
    roots = {"train": folder / "train", "test": folder / "test"} if "train" in sub \
        else {"train": folder}
    classes = [p.name for p in _class_folders(roots["train"])]
    if not classes:
        raise DatasetError(f"{folder}: no class folders (expected e.g. {folder}/cat/*.png)")
    index = {c: i for i, c in enumerate(classes)}
    splits = {}
    for split, root in roots.items():
        if not root.is_dir():
            continue
        xs, ys, size, mode = [], [], None, None
        for cdir in _class_folders(root):
            if cdir.name not in index:
                raise DatasetError(f"{cdir}: class {cdir.name!r} is not among the train classes")
            for p in sorted(cdir.iterdir()):
                if p.suffix.lower() not in _IMAGE_EXTS:
                    continue
                _note(p)
                try:
                    with Image.open(p) as im:
                        if mode is None:
                            mode = "L" if im.mode in ("L", "1", "P", "I;16") else "RGB"
                            size = im.size
                        if im.size != size:
                            raise DatasetError(
                                f"{p}: image is {im.size[0]}x{im.size[1]} but earlier ones are "
                                f"{size[0]}x{size[1]}; resize all images to one size"
                            )
                        xs.append(np.asarray(im.convert(mode), dtype=np.uint8))
                except OSError as exc:
                    raise DatasetError(f"{p}: cannot read image ({exc})") from exc
                ys.append(index[cdir.name])
        if not xs:
            raise DatasetError(f"{root}: no images found")
        splits[split] = (np.stack(xs), np.asarray(ys, dtype=np.int64))
    return splits


# --------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------

def _detect_kind(src: Path) -> str:
    name = src.name.lower()
    if src.is_file():
        if name.endswith(".npz"):
            return "npz"
        if name.endswith(".npy"):
            return "npy"
        if name.endswith((".csv", ".csv.gz", ".tsv")):
            return "csv"
        if _IDX_NAME.match(src.name):
            return "idx"
        raise DatasetError(
            f"{src}: cannot tell the format from the name; give the kind "
            "(mnist, idx, npz, npy, csv, images)"
        )
    if any(_IDX_NAME.match(p.name) for p in src.iterdir()):
        return "idx"
    if any(p.suffix == ".npy" for p in src.iterdir()):
        return "npy"
    if any(p.name.endswith((".csv", ".csv.gz", ".tsv")) for p in src.iterdir()):
        return "csv"
    if _class_folders(src):
        return "images"
    raise DatasetError(
        f"{src}: found no IDX, .npy, CSV files or class folders; give an MNIST folder, an .npz, "
        ".npy, .csv file or a folder of images by class"
    )


def load_source(source, kind: str = "auto") -> tuple[str, dict]:
    """Read ``source`` into ``(kind, {split: (x, y)})`` without any arranging."""
    src = Path(source)
    if kind not in KINDS:
        raise DatasetError(f"unknown source kind {kind!r}; choose one of {', '.join(KINDS)}")
    if not src.exists():
        raise DatasetError(f"{src}: no such file or directory")
    if kind == "auto":
        kind = _detect_kind(src)
    loader = {"mnist": _load_idx, "idx": _load_idx, "npz": _load_npz, "npy": _load_npy,
              "csv": _load_csv, "images": _load_images}[kind]
    if kind == "npz" and src.is_dir():
        raise DatasetError(f"{src} is a directory; give the .npz file")
    if kind == "images" and src.is_file():
        raise DatasetError(f"{src} is a file; give the folder of class folders")
    return kind, loader(src)


def _load_logged(source, kind: str) -> tuple[str, dict, list]:
    """:func:`load_source`, plus the list of files it read."""
    log: list = []
    token = _READ_LOG.set(log)
    try:
        kind, splits = load_source(source, kind)
    finally:
        _READ_LOG.reset(token)
    return kind, splits, log


def _refuse_source_as_output(out: Path, files) -> None:
    """Raise when ``out`` exists and is one of ``files`` (same path, a symbolic
    link to it or a hard link of it): replacing it would lose the source."""
    try:
        st = os.stat(out)
    except OSError:
        return
    for f in files:
        try:
            fs = os.stat(f)
        except OSError:
            continue
        if (fs.st_dev, fs.st_ino) == (st.st_dev, st.st_ino):
            same = os.path.abspath(out) == os.path.abspath(f)
            how = "" if same else f" (the same file: {'a link to it' if out.is_symlink() else 'a hard link or a linked folder'})"
            raise DatasetError(
                f"{out} is the source file {f}{how}; writing the prepared file there would destroy the "
                "source, so choose another output name (e.g. out.h5)"
            )


def _check_classes(labels: dict, num_classes, where: str) -> None:
    """Check that the labels are class indices for ``num_classes`` (given, or
    the largest label + 1).

    ``labels`` maps split name -> int64 labels in source order (so sample
    numbers in messages are the source's).  Labels are class indices, so a
    class count above :data:`MAX_CLASSES`, or a largest label far above the
    number of distinct labels (ids rather than indices), is refused before
    anything is allocated per class.
    """
    ys = {k: v for k, v in labels.items() if v.size}
    top_split, top = max(((k, int(v.max())) for k, v in ys.items()), key=lambda kv: kv[1])
    i = int(np.argmax(ys[top_split]))
    remap = "remap them to 0..K-1 (e.g. numpy.unique(y, return_inverse=True)[1])"
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
                or not 1 <= num_classes <= MAX_CLASSES:
            raise DatasetError(f"num_classes must be an integer in [1, {MAX_CLASSES:,}], got {num_classes!r}")
        if top >= num_classes:
            raise DatasetError(
                f"{where}: {top_split} sample {i} has label {top}, outside [0, {num_classes}) for "
                f"num_classes={num_classes}; fix the labels or num_classes"
            )
        return
    if top + 1 > MAX_CLASSES:
        raise DatasetError(
            f"{where}: {top_split} sample {i} has label {top}; labels are class indices 0..K-1 and at most "
            f"{MAX_CLASSES:,} classes are supported; {remap}"
        )
    if top + 1 > SPARSE_MIN_CLASSES:
        distinct = int(np.unique(np.concatenate(list(ys.values()))).size)
        if top + 1 > SPARSE_FACTOR * distinct:
            raise DatasetError(
                f"{where}: {top_split} sample {i} has label {top}, which would make {top + 1:,} classes, but "
                f"the labels take only {distinct:,} distinct values; labels must be class indices 0..K-1: "
                f"{remap}, or give the class count (num_classes, --num-classes)"
            )


def _check_labels(name, y, where):
    y = np.asarray(y)
    if y.ndim != 1:
        raise DatasetError(f"{where}: {name} labels must be 1-D, got shape {y.shape}")
    if y.dtype.kind == "f":
        ok = np.isfinite(y) & (y == np.round(np.nan_to_num(y)))
        if not ok.all():
            i = int(np.argmin(ok))
            raise DatasetError(f"{where}: {name} label {i} is {y[i]!r}; labels must be integers")
    elif y.dtype.kind not in "iub":
        raise DatasetError(f"{where}: {name} labels have dtype {y.dtype}; expected integers")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        i = int(np.argmin(y))
        raise DatasetError(f"{where}: {name} label {i} is {int(y[i])}; labels must be >= 0")
    return y


def _stats(x: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of all feature values (float64, blockwise)."""
    if x.dtype == np.uint8:
        h = np.bincount(np.ascontiguousarray(x).reshape(-1), minlength=256).astype(np.float64)
        v = np.arange(256, dtype=np.float64)
        n = h.sum()
        mean = float(h @ v / n)
        return mean, float(np.sqrt(h @ (v - mean) ** 2 / n))
    flat = x.reshape(x.shape[0], -1)
    step = max(1, (1 << 22) // max(1, flat.shape[1]))
    n = flat.size
    s = sum(float(flat[a:a + step].sum(dtype=np.float64)) for a in range(0, len(flat), step))
    mean = s / n
    ss = sum(float(((flat[a:a + step].astype(np.float64) - mean) ** 2).sum())
             for a in range(0, len(flat), step))
    return mean, float(np.sqrt(ss / n))


def _normalization(spec, kind: str, x: np.ndarray) -> dict:
    if spec is None or spec == "auto":
        spec = "mnist" if kind == "mnist" else "train"
    if isinstance(spec, dict):
        return {k: float(spec[k]) for k in ("scale", "mean", "std")}
    scale = 1.0 / 255.0 if x.dtype == np.uint8 else 1.0
    if spec == "mnist":
        return dict(MNIST_NORMALIZATION)
    if spec == "none":
        return {"scale": scale, "mean": 0.0, "std": 1.0}
    if spec == "train":
        mean, std = _stats(x)
        std = std * scale if std > 0 else 1.0
        return {"scale": scale, "mean": mean * scale, "std": std}
    raise DatasetError(
        f"unknown normalization {spec!r}; use 'auto', 'mnist', 'train', 'none' or a dict "
        "with scale, mean, std"
    )


def prepare(
    source,
    out,
    *,
    kind: str = "auto",
    snippet_size: int = 32,
    force: bool = False,
    shuffle_seed: int | None = 0,
    test_fraction: float | None = None,
    limit: int | None = None,
    normalization=None,
    num_classes: int | None = None,
    compression: str | None = None,
) -> dict:
    """Read ``source``, arrange its splits and write the prepared HDF5 file ``out``.

    ``test_fraction``: share of the samples set aside as the test split when the
    source has none (default 0.1; 0 for no test split); giving it for a source
    with its own test split is an error.  ``normalization``: ``"auto"``/None
    (MNIST constants for kind ``mnist``, else train statistics), ``"mnist"``,
    ``"train"``, ``"none"`` or ``{"scale", "mean", "std"}``.  ``num_classes``
    defaults to the largest label + 1.  Returns a summary dict for the CLI:
    path, source, kind, splits ({name: {samples, snippets}}), feature_shape,
    feature_dtype, num_classes, snippet_size, normalization, bytes, seconds.
    """
    t0 = time.perf_counter()
    if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 1):
        raise DatasetError(f"limit must be a positive integer, got {limit!r}")
    if test_fraction is not None and not (0.0 <= float(test_fraction) < 1.0):
        raise DatasetError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    out = Path(out)
    # fail before the (possibly slow) read
    if Path(source).is_file():
        _refuse_source_as_output(out, [Path(source)])
    if out.exists() and not force:
        raise DatasetError(f"{out} already exists; pass --force (force=True) to overwrite it")
    check_output_path(out)
    kind, splits, read = _load_logged(source, kind)
    _refuse_source_as_output(out, read)
    where = str(source)
    for name, (sx, _) in splits.items():  # indices as in the source, before shuffling
        bad = _first_nonfinite(np.asarray(sx)) if np.ndim(sx) >= 2 else None
        if bad is not None:
            raise DatasetError(
                f"{where}: {name} sample {bad} has NaN or infinite features; clean the data "
                "before preparing"
            )
    x, y = splits["train"]
    y = _check_labels("train", y, where)
    if x.shape[0] != y.shape[0]:
        raise DatasetError(
            f"{where}: {x.shape[0]} training samples but {y.shape[0]} labels; they must match"
        )
    n = x.shape[0]
    if n == 0:
        raise DatasetError(f"{where}: the training data has no samples")
    rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
    order = rng.permutation(n) if rng is not None else np.arange(n)
    test = None
    if "test" in splits:
        if test_fraction:
            raise DatasetError(
                f"{where}: the source already has a test split; leave test_fraction unset"
            )
        tx, ty = splits["test"]
        test = (tx, _check_labels("test", ty, where))
        _check_classes({"train": y, "test": test[1]}, num_classes, where)
    else:
        _check_classes({"train": y}, num_classes, where)
        frac = 0.1 if test_fraction is None else float(test_fraction)
        n_test = int(round(n * frac))
        if frac > 0 and n_test == 0:
            n_test = 1
        if n_test >= n:
            raise DatasetError(
                f"{where}: {n} samples are too few to set aside test_fraction={frac}; "
                "use test_fraction=0 or more data"
            )
        if n_test:
            if rng is not None:
                test_idx, order = np.sort(order[:n_test]), order[n_test:]
            else:
                test_idx, order = order[n - n_test:], order[:n - n_test]
            test = (x[test_idx], y[test_idx])
    if limit is not None:
        order = order[:int(limit)]
        if test is not None:
            test = (test[0][:int(limit)], test[1][:int(limit)])
    arranged = {"train": (np.ascontiguousarray(x[order]), y[order])}
    if test is not None:
        arranged["test"] = (np.ascontiguousarray(test[0]), test[1])
    max_label = max(int(v[1].max()) for v in arranged.values())
    if num_classes is None:
        num_classes = max_label + 1
    norm = _normalization(normalization, kind, arranged["train"][0])
    info = write_dataset(
        out, arranged, snippet_size=snippet_size, source=f"{kind}:{source}",
        num_classes=num_classes, normalization=norm, force=force, compression=compression,
    )
    return {
        "path": str(out),
        "source": str(source),
        "kind": kind,
        "splits": info["splits"],
        "feature_shape": list(arranged["train"][0].shape[1:]),
        "feature_dtype": np.dtype(arranged["train"][0].dtype).name,
        "num_classes": int(num_classes),
        "snippet_size": int(snippet_size),
        "normalization": norm,
        "bytes": info["bytes"],
        "seconds": round(time.perf_counter() - t0, 3),
    }
