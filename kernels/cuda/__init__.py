"""CUDA backend (``numba.cuda``): one kernel module per op family, mirroring the CPU ones.

``cuda/dense.py``, ``cuda/activations.py``, ``cuda/losses.py``,
``cuda/conv.py``, ``cuda/pool.py``, ``cuda/norm.py``, ``cuda/optim.py`` and
``cuda/reduce.py`` register a launcher under ``(op, "cuda")`` for every op
the CPU backend has, with the CPU kernel's signature and meaning, so the
engine calls either backend the same way.  :class:`CudaBackend` offers what
:class:`~raven_hpc.kernels.CpuBackend` does (``kernel``, ``empty``,
``zeros``, ``gemm``, ``to_device``, ``to_host``) plus ``xp``, the array
module of its memory.

Memory: on a GPU, arrays are CuPy arrays (device memory; CuPy's
``matmul`` is cuBLAS, and the engine's glue -- adds, concatenations, views
-- runs on the device through ``xp``); numba launches its kernels on them
through ``__cuda_array_interface__``.  Under the simulator
(``NUMBA_ENABLE_CUDASIM=1``) arrays are NumPy arrays and matrix products go
through the numba.cuda GEMM kernel, so every kernel runs in CI without a
GPU.  Without CuPy on a GPU the backend refuses with the install line
(``pip install 'raven-hpc[cuda]'``): the engine's glue needs an array
module on the device.

Importing this package never touches the driver; numba.cuda is probed only
when a backend is created or :func:`device_count` is asked.
"""
from __future__ import annotations

import importlib
from typing import Callable, Optional

import numpy as np

from .._registry import BackendUnavailableError, lookup

__all__ = ["CudaBackend", "FAMILIES", "describe_devices", "device_count", "get_kernel", "is_available", "local_device",
           "set_local_rank", "simulated"]

#: the kernel modules, one per op family (as on the CPU)
FAMILIES = ("dense", "activations", "losses", "conv", "pool", "norm", "optim", "reduce")


def simulated() -> bool:
    """Whether numba's CUDA simulator is on (``NUMBA_ENABLE_CUDASIM=1``)."""
    from numba import config

    return bool(config.ENABLE_CUDASIM)


def device_count() -> int:
    """Real CUDA GPUs numba sees here (0 under the simulator or on any error)."""
    if simulated():
        return 0
    try:
        from numba import cuda

        if not cuda.is_available():
            return 0
        return len(cuda.gpus)
    except Exception:  # noqa: BLE001 - a broken driver is "no GPU", with the reason in info
        return 0


_LOCAL_RANK = 0


def set_local_rank(rank: int) -> None:
    """This process's rank among the ranks of its node (from MPI's
    shared-memory split); it picks the GPU a rank uses."""
    global _LOCAL_RANK
    _LOCAL_RANK = int(rank)


def local_device() -> Optional[int]:
    """The GPU this rank uses: its local rank modulo the GPUs it sees
    (``CUDA_VISIBLE_DEVICES`` narrows them); ``None`` without a GPU."""
    n = device_count()
    return _LOCAL_RANK % n if n else None


def is_available() -> bool:
    """Whether ``cluster.backend = "cuda"`` can run on this node: a GPU, or the simulator."""
    return simulated() or device_count() > 0


def describe_devices() -> list:
    """Lines for ``raven-hpc info``: each GPU numba sees (name, compute
    capability, memory) and the matrix-product library -- or why there is
    no CUDA here."""
    if simulated():
        return ["simulator (NUMBA_ENABLE_CUDASIM=1): CUDA kernels run on the CPU, for tests"]
    try:
        from numba import cuda

        if not cuda.is_available():
            return ["none (numba finds no CUDA driver or GPU)"]
        out = []
        for i, gpu in enumerate(cuda.gpus):
            with gpu:
                dev = cuda.get_current_device()
                _, total = cuda.current_context().get_memory_info()
                name = dev.name.decode() if isinstance(dev.name, bytes) else dev.name
                cc = dev.compute_capability
                out.append(f"device {i}: {name}, compute capability {cc[0]}.{cc[1]}, {total / 2**30:.1f} GiB")
    except Exception as exc:  # noqa: BLE001 - a broken driver is reported, not raised
        return [f"none ({type(exc).__name__}: {exc})"]
    cp = _cupy()
    out.append(f"CuPy {cp.__version__}: matrix products on cuBLAS" if cp is not None else
               "no CuPy: the backend refuses to start (pip install 'raven-hpc[cuda]')")
    return out


def _load_families() -> None:
    for name in FAMILIES:
        importlib.import_module(f"{__name__}.{name}")


def get_kernel(op: str) -> Callable:
    """The CUDA launcher of ``op``; raises the reason when this node has no CUDA."""
    if not is_available():
        raise BackendUnavailableError(
            "CUDA backend not available: numba found no usable CUDA GPU/driver on this node; "
            "use backend = \"cpu\" (or \"auto\") or run on a GPU node")
    _load_families()
    return lookup(op, "cuda")


def _cupy():
    try:
        import cupy
    except Exception:  # noqa: BLE001 - ImportError, or a CuPy built for another CUDA
        return None
    return cupy


class CudaBackend:
    """Device arrays and the numba.cuda kernels of one GPU (or the simulator).

    ``device``: the GPU's index on this node (``None``: the current one).
    ``gemm``: ``"auto"`` (cuBLAS through CuPy when present, else the
    numba.cuda kernel), ``"cublas"`` or ``"numba"``.
    """

    name = "cuda"

    def __init__(self, device: Optional[int] = None, gemm: str = "auto", threads: int = 0) -> None:
        if not is_available():
            get_kernel("gemm")      # raises the reason this node cannot run CUDA
        _load_families()
        from . import _launch

        if threads:
            _launch.set_threads(threads)
        self.simulated = simulated()
        self.device = None
        cp = None
        if not self.simulated:
            from numba import cuda

            cp = _cupy()
            if cp is None:
                raise BackendUnavailableError(
                    "CUDA backend needs CuPy on a GPU node (device arrays and cuBLAS): "
                    "pip install 'raven-hpc[cuda]'")
            self.device = int(device or 0)
            if self.device >= device_count():
                raise BackendUnavailableError(
                    f"CUDA device {self.device} asked for, but this node has {device_count()} GPU(s)")
            cuda.select_device(self.device)
            cp.cuda.Device(self.device).use()
            # CuPy and numba both launch on the legacy default stream, so work
            # is ordered without numba synchronising the stream a CuPy array
            # names each time one is passed to a kernel (a full wait per launch)
            from numba.core import config as numba_config

            numba_config.CUDA_ARRAY_INTERFACE_SYNC = False
        self._cp = cp
        self.xp = cp if cp is not None else np
        if gemm not in ("auto", "cublas", "numba"):
            raise ValueError(f"gemm must be auto, cublas or numba, not {gemm!r}")
        if gemm == "cublas" and cp is None:
            raise BackendUnavailableError("gemm = \"cublas\" needs CuPy on a GPU")
        self.gemm_impl = "cublas" if (cp is not None and gemm != "numba") else "numba"
        self._table: dict = {}

    def __repr__(self) -> str:
        where = "simulator" if self.simulated else f"device {self.device}"
        return f"CudaBackend({where}, gemm={self.gemm_impl})"

    def label(self) -> str:
        """What this rank computes on, in a few words: ``cuda:0 (NVIDIA H200)``."""
        if self.simulated:
            return "cuda (simulator)"
        from numba import cuda

        name = cuda.get_current_device().name
        return f"cuda:{self.device} ({name.decode() if isinstance(name, bytes) else name})"

    def describe(self) -> str:
        """One line for logs: the device, its memory, the GEMM in use."""
        if self.simulated:
            return "cuda (numba simulator; gemm: numba kernel)"
        from numba import cuda

        dev = cuda.get_current_device()
        free, total = cuda.current_context().get_memory_info()
        name = dev.name.decode() if isinstance(dev.name, bytes) else dev.name
        return (f"cuda device {self.device}: {name}, compute capability {dev.compute_capability[0]}."
                f"{dev.compute_capability[1]}, {total / 2**30:.1f} GiB; gemm: {self.gemm_impl}")

    def kernel(self, op: str) -> Callable:
        fn = self._table.get(op)
        if fn is None:
            fn = self._table[op] = lookup(op, "cuda")
        return fn

    def empty(self, shape, dtype=np.float32):
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype=np.float32):
        return self.xp.zeros(shape, dtype=dtype)

    def gemm(self, a, b, out=None):
        """``a @ b`` for 2-D ``a``, ``b`` (views and transposes allowed), into ``out`` when given."""
        if self.gemm_impl == "cublas":
            return self._cp.matmul(a, b, out=out)
        if out is None:
            out = self.xp.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a.dtype, b.dtype))
        self.kernel("gemm")(a, b, out)
        return out

    def to_device(self, host: np.ndarray):
        """A device copy of the host array ``host``."""
        if self._cp is not None:
            return self._cp.asarray(host)
        return np.array(host, copy=True)

    def to_host(self, arr, out: Optional[np.ndarray] = None) -> np.ndarray:
        """The device array ``arr`` on the host (into ``out`` when given)."""
        if self._cp is not None:
            return self._cp.asnumpy(arr, out=out)
        if out is None:
            return np.array(arr, copy=True)
        np.copyto(out, arr)
        return out

    def synchronize(self) -> None:
        """Wait for the device's queued work (timings, host reads)."""
        if self._cp is not None:
            self._cp.cuda.Device().synchronize()
