r"""fbp — functional backpropagation in JAX, every rule written by hand.

The convention, stated once:

* A layer is ``f(params, x) -> y``; an activation is ``f(z) -> h``; a loss is
  ``f(prediction_or_logits, target) -> scalar``, the mean over the batch (the tutorial's 1/m).
* ``x`` has shape ``(..., n_in)``: any leading batch dimensions, features last.  One example
  is ``(n_in,)``, so ``jax.vmap`` over examples works and a batch ``(m, n_in)`` is one matmul.
* ``W`` is ``(n_out, n_in)`` as in the tutorial: per example ``z = W x + b``, for a batch
  ``Z = X Wᵀ + b``; the rules read ``W̄ = δᵀ A``, ``b̄ = Σ δ``, ``x̄ = δ W``.
* Params are NamedTuples (``Dense(W, b)``), so optax and ``jax.tree_util`` see them as they are.

Every op is a public function that validates its inputs and calls a private
``jax.custom_vjp`` whose backward is the hand-derived formula in its docstring.
"""

# Modules first: the old module paths (aliases of fbp.ops.* and fbp.nets.mlp), and the modules
# whose names the face then rebinds to a function (mlp, transposed).  Imported here, before
# the functions, so a later ``import fbp.mlp`` finds them loaded and does not rebind fbp.mlp.
from fbp import activations, autodiff, forward, linear, losses, norms  # noqa: F401
from fbp import mlp as _mlp_module  # noqa: F401
from fbp import transposed as _transposed_module  # noqa: F401
from fbp.check import VJPCheckError, VJPReport, check_vjp
from fbp.nets.cnn import CNN, cnn, cnn_loss, init_cnn
from fbp.nets.mlp import Backprop, NormDense, backprop, init_mlp, mlp, mlp_loss
from fbp.nets.transformer import GPT, gpt, gpt_loss, init_gpt
from fbp.numerical import numerical_grad, numerical_vjp, rel_error
from fbp.ops.activations import gelu, leaky_relu, relu, sigmoid, softmax, tanh
from fbp.ops.attention import attention
from fbp.ops.conv import Conv, conv2d, im2col, init_conv
from fbp.ops.dropout import dropout
from fbp.ops.embedding import embedding
from fbp.ops.flash_attention import flash_attention
from fbp.ops.group_norm import GroupNormParams, group_norm, init_group_norm
from fbp.ops.linear import Dense, dense, init_dense
from fbp.ops.losses import bce, bce_with_logits, mse, softmax_cross_entropy
from fbp.ops.lstm import LSTM, init_lstm, lstm
from fbp.ops.multi_head_attention import (
    MultiHeadAttention,
    init_multi_head_attention,
    multi_head_attention,
)
from fbp.ops.norms import (
    BatchNormParams,
    BatchNormState,
    LayerNormParams,
    batch_norm,
    init_batch_norm,
    init_layer_norm,
    layer_norm,
    residual,
)
from fbp.ops.pooling import avg_pool2d, max_pool2d
from fbp.ops.rnn import RNN, init_rnn, rnn
from fbp.ops.vocab_loss import linear_cross_entropy
from fbp.parallel import data_parallel, data_parallel_step, default_mesh, shard_batch
from fbp.second_order import hessian, hvp
from fbp.train import FitResult, accumulate_grads, backprop_grad_fn, fit
from fbp.transposed import transposed

__all__ = [
    "Backprop",
    "BatchNormParams",
    "BatchNormState",
    "CNN",
    "Conv",
    "Dense",
    "FitResult",
    "GroupNormParams",
    "LSTM",
    "GPT",
    "LayerNormParams",
    "MultiHeadAttention",
    "NormDense",
    "RNN",
    "VJPCheckError",
    "VJPReport",
    "accumulate_grads",
    "autodiff",
    "avg_pool2d",
    "attention",
    "backprop",
    "backprop_grad_fn",
    "batch_norm",
    "bce",
    "bce_with_logits",
    "check_vjp",
    "cnn",
    "cnn_loss",
    "conv2d",
    "data_parallel",
    "data_parallel_step",
    "default_mesh",
    "dense",
    "dropout",
    "embedding",
    "fit",
    "flash_attention",
    "forward",
    "gelu",
    "group_norm",
    "gpt",
    "gpt_loss",
    "hessian",
    "hvp",
    "im2col",
    "init_batch_norm",
    "init_cnn",
    "init_conv",
    "init_dense",
    "init_group_norm",
    "init_gpt",
    "init_layer_norm",
    "init_lstm",
    "init_mlp",
    "init_rnn",
    "layer_norm",
    "leaky_relu",
    "max_pool2d",
    "lstm",
    "init_multi_head_attention",
    "linear_cross_entropy",
    "mlp",
    "mlp_loss",
    "mse",
    "multi_head_attention",
    "numerical_grad",
    "numerical_vjp",
    "rel_error",
    "relu",
    "residual",
    "rnn",
    "shard_batch",
    "sigmoid",
    "softmax",
    "softmax_cross_entropy",
    "tanh",
    "transposed",
]
