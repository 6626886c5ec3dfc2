"""Reading dataset sources into ``{split: (features, labels)}`` arrays.

:func:`load_source` reads a source as it is: no shuffling, no test split set
aside, no class-count checks (those are :func:`.prepare.prepare`'s work).
:func:`load_logged` also returns the files it read, so the caller can refuse
to overwrite one of them.

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
"""
from __future__ import annotations

import contextvars
import gzip
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import DatasetError

__all__ = ["read_idx", "load_source", "load_logged", "KINDS"]

KINDS = ("auto", "mnist", "idx", "npz", "npy", "csv", "images")

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_NAME = re.compile(
    r"^(?:.+-)?(?P<split>train|t10k|test)-(?P<role>images|labels)[.-]idx\d-ubyte(?P<gz>\.gz)?$"
)
_LABEL_COLUMNS = ("label", "labels", "class", "target", "y")
_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}

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
# choosing the reader
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


def load_logged(source, kind: str) -> tuple[str, dict, list]:
    """:func:`load_source`, plus the list of files it read."""
    log: list = []
    token = _READ_LOG.set(log)
    try:
        kind, splits = load_source(source, kind)
    finally:
        _READ_LOG.reset(token)
    return kind, splits, log
