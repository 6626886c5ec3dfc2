"""Define-by-run autograd engine: tensors, ops, layers, models, optimizers.

No MPI here: everything runs and is tested in one process.  Kernels come
from :mod:`raven_hpc.kernels`.
"""
from __future__ import annotations

from .tensor import GRADIENTS, Tensor, enable_grad, is_grad_enabled, no_grad
from .workspace import Workspace
from .ops import activation_code, add, dense, matmul, relu, reshape, softmax_cross_entropy
from .layers import INITIALIZERS, LAYERS, Dense, Flatten, Layer, register_layer
from . import conv  # noqa: F401  (conv/pool ops and the conv2d, pool, reshape layers)
from .norm import BatchNorm, Dropout, Embedding, LayerNorm, batch_norm, dropout, embedding, layer_norm
from .merge import Add, Concat, MergeLayer, Mul, add_n, concat, mul_n
from .layers import RunContext
from . import activations  # noqa: F401  (activation ops and the "activation" layer)
from .activations import (ACTIVATION_FNS, Activation, activation, elu, gelu, hardtanh, leaky_relu, log_softmax,
                          selu, sigmoid, silu, softmax, softplus, softsign, swish, tanh)
from .losses import LOSSES, bce_with_logits, huber_loss, mse_loss, resolve_loss
from .model import Model, build_model
from .spec import min_train_batch, validate_model_spec
from .builder import ModelBuilder, Node
from .optim import (OPTIMIZERS, SGD, Adam, AdamW, Optimizer, RMSprop, clip_scale, grad_norm, make_optimizer,
                    make_schedule, register_optimizer, validate_optimizer_config)
from .schedule import SCHEDULES, Schedule

__all__ = [
    # activations and losses (see activations.py, losses.py)
    "ACTIVATION_FNS",
    "Activation",
    "activation",
    "elu",
    "gelu",
    "hardtanh",
    "leaky_relu",
    "log_softmax",
    "selu",
    "sigmoid",
    "silu",
    "softmax",
    "softplus",
    "softsign",
    "swish",
    "tanh",
    "bce_with_logits",
    "huber_loss",
    "mse_loss",
    "resolve_loss",
    # normalisation, dropout, embedding, merges, graphs (see norm.py, merge.py, builder.py)
    "BatchNorm",
    "Dropout",
    "Embedding",
    "LayerNorm",
    "batch_norm",
    "dropout",
    "embedding",
    "layer_norm",
    "Add",
    "Concat",
    "MergeLayer",
    "Mul",
    "add_n",
    "concat",
    "mul_n",
    "RunContext",
    "ModelBuilder",
    "Node",
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
    "min_train_batch",
    "validate_model_spec",
    # optimizers
    "Optimizer",
    "SGD",
    "OPTIMIZERS",
    "make_optimizer",
    "register_optimizer",
    "validate_optimizer_config",
    "Adam",
    "AdamW",
    "RMSprop",
    "clip_scale",
    "grad_norm",
    # learning-rate schedules
    "SCHEDULES",
    "Schedule",
    "make_schedule",
]
