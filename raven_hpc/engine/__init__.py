"""Define-by-run autograd engine: tensors, ops, layers, models, optimizers.

No MPI here: everything runs and is tested in one process.  Kernels come
from :mod:`raven_hpc.kernels`.
"""
from __future__ import annotations

from .tensor import GRADIENTS, Tensor, Workspace, enable_grad, is_grad_enabled, no_grad
from .ops import activation_code, add, dense, matmul, relu, reshape, softmax_cross_entropy
from .layers import INITIALIZERS, LAYERS, Dense, Flatten, Layer, register_layer
from .losses import LOSSES
from .model import Model, build_model, validate_model_spec
from .optim import (OPTIMIZERS, SGD, Adam, AdamW, Optimizer, RMSprop, clip_scale, grad_norm, make_optimizer,
                    register_optimizer, validate_optimizer_config)

__all__ = [
    # autograd core
    "Tensor",
    "Workspace",
    "GRADIENTS",
    "no_grad",
    "enable_grad",
    "is_grad_enabled",
    # ops
    "activation_code",
    "add",
    "dense",
    "matmul",
    "relu",
    "reshape",
    "softmax_cross_entropy",
    # layers and models
    "Layer",
    "Dense",
    "Flatten",
    "LAYERS",
    "INITIALIZERS",
    "LOSSES",
    "register_layer",
    "Model",
    "build_model",
    "validate_model_spec",
    # optimizers
    "Optimizer",
    "SGD",
    "OPTIMIZERS",
    "make_optimizer",
    "register_optimizer",
    "validate_optimizer_config",
]
from .schedule import SCHEDULES, Schedule, make_schedule  # noqa: E402,F401
