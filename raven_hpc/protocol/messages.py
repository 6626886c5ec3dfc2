"""Message tags and the layout of the numpy buffers that travel over MPI.

Control messages (assignments, stop, errors, hello) are small dicts sent as
pickled objects.  Arrays travel as raw buffers: a fixed header followed by a
float32 payload, packed in one contiguous ``uint8`` buffer so one message
carries both and one matched receive takes it.  No MPI here.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "TAG_CTRL", "TAG_PARAMS", "TAG_RESULT", "TAG_DATA", "check_hello", "hello_backends",
    "RESULT_HEADER", "RESULT_FIELDS", "KIND_GRAD", "KIND_EVAL",
    "ParamsBuffer", "ResultBuffer",
]

TAG_CTRL = 11     # pickled dict, both directions
TAG_PARAMS = 12   # master -> worker: int64 header + float32 parameters
TAG_RESULT = 13   # worker -> master: float64 header + float32 gradient sum
TAG_DATA = 14     # leader -> worker (data.delivery = "scatter"): a task's snippets, right before the
                  # task's control message (raven_hpc.data.packet: int64 header and rows, stored-dtype
                  # features, int64 labels)

KIND_GRAD = 0
KIND_EVAL = 1

# float64 header of a result; integers are exact below 2**53.
RESULT_FIELDS = (
    "kind", "step", "task", "version", "samples", "loss_sum", "correct",
    "compute_s", "finite", "recv_wait_s", "grad_sq", "reserved11",
    "reserved12", "reserved13", "reserved14", "reserved15",
)
RESULT_HEADER = len(RESULT_FIELDS)
_FIELD = {name: i for i, name in enumerate(RESULT_FIELDS)}

PARAMS_HEADER = 2  # int64: version, number of parameters


def hello_backends(obj: dict, src: int) -> dict[int, str]:
    """What a ``ready`` message says rank ``src`` (and, from a collector, each
    rank of its group: ``backends``) computes on, as ``{rank: label}``."""
    out = {int(r): b for r, b in obj.get("backends", {}).items()}
    out[src] = obj.get("backend", "cpu")
    return out


def check_hello(obj: dict, src: int, num_params: int, leader: str) -> dict[int, str]:
    """A ``ready`` message from rank ``src``: its host and, for a collector,
    its group's hosts (``members``), as ``{rank: host}``.  Raises when the
    rank built a model of another size than the ``leader``'s."""
    if obj["num_params"] != num_params:
        from ..errors import ProtocolError

        raise ProtocolError(f"rank {src} built a model with {obj['num_params']} parameters, "
                            f"{leader} has {num_params}")
    hosts = {int(r): h for r, h in obj.get("members", {}).items()}
    hosts[src] = obj["host"]
    return hosts


class ParamsBuffer:
    """``int64[version, n] + float32[n]`` in one buffer."""

    def __init__(self, num_params: int):
        self.num_params = int(num_params)
        self.raw = np.zeros(PARAMS_HEADER * 8 + 4 * self.num_params, dtype=np.uint8)
        self.header = self.raw[: PARAMS_HEADER * 8].view(np.int64)
        self.params = self.raw[PARAMS_HEADER * 8:].view(np.float32)

    @property
    def version(self) -> int:
        return int(self.header[0])

    def pack(self, version: int, params: np.ndarray) -> None:
        self.header[0] = version
        self.header[1] = self.num_params
        np.copyto(self.params, params)

    @staticmethod
    def nbytes_for(num_params: int) -> int:
        return PARAMS_HEADER * 8 + 4 * int(num_params)


class ResultBuffer:
    """``float64[RESULT_HEADER] + float32[n]`` (n = 0 for evaluation results)."""

    def __init__(self, num_params: int):
        self.num_params = int(num_params)
        self.raw = np.zeros(RESULT_HEADER * 8 + 4 * self.num_params, dtype=np.uint8)
        self.header = self.raw[: RESULT_HEADER * 8].view(np.float64)
        self.grad = self.raw[RESULT_HEADER * 8:].view(np.float32)

    @classmethod
    def for_nbytes(cls, nbytes: int) -> "ResultBuffer":
        n = (int(nbytes) - RESULT_HEADER * 8) // 4
        if n < 0 or RESULT_HEADER * 8 + 4 * n != nbytes:
            raise ValueError(f"a result message of {nbytes} bytes has no valid layout")
        return cls(n)

    def set(self, **fields: float) -> None:
        for k, v in fields.items():
            self.header[_FIELD[k]] = v

    def get(self, name: str) -> float:
        return float(self.header[_FIELD[name]])

    @staticmethod
    def nbytes_for(num_params: int) -> int:
        return RESULT_HEADER * 8 + 4 * int(num_params)
