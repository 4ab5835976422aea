r"""The op table's cases for convolution, pooling, group norm and dropout (tiny shapes).

References: ``lax.conv_general_dilated`` for conv2d (its ``_patches`` twin for im2col),
``lax.reduce_window`` for pooling, plain ``jnp`` for group norm, ``jnp.where`` of JAX's own
Bernoulli mask for dropout; ``ref_cnn`` composes them for fbp.cnn (tests/test_nets_cnn.py and
the digits experiment; conv2d(method="im2col") is proven in tests/test_ops_conv.py, its two
parts, im2col and dense, here).  max_pool2d's
inputs are distinct values at least 0.1 apart (a random permutation), so no window has a
tie and no finite-difference step changes the argmax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fbp.check.op_table import OpCase, _normal
from fbp.ops import conv, dropout, group_norm, pooling

STRIDED = {"stride": 2, "padding": ((1, 0), (0, 1))}   # (5 + 1 − 3) mod 2 = 1: a cropped row


def _conv_args(r, d, x_shape=(2, 5, 4, 2), w_shape=(2, 3, 2, 2)):
    fan = int(np.prod(w_shape[1:]))
    return (conv.Conv(_normal(r, w_shape, d) / float(np.sqrt(fan)), _normal(r, w_shape[:1], d)),
            _normal(r, x_shape, d))


def ref_conv2d(params, x, stride=1, padding="VALID"):
    s = (stride, stride) if isinstance(stride, int) else stride
    y = lax.conv_general_dilated(x, params.W, s, padding,
                                 dimension_numbers=("NHWC", "OHWI", "NHWC"))
    return y + jnp.broadcast_to(params.b, y.shape)


def ref_im2col(x, k, s, padding):
    """``lax.conv_general_dilated_patches`` (features in (c, a, b) order) reordered to (a, b, c)."""
    p = lax.conv_general_dilated_patches(x, (k, k), (s, s), padding,
                                         dimension_numbers=("NHWC", "OIHW", "NHWC"))
    n, ho, wo, _ = p.shape
    return (p.reshape(n, ho, wo, x.shape[-1], k, k).transpose(0, 1, 2, 4, 5, 3)
            .reshape(n, ho, wo, -1))


def _distinct(r, shape, d):
    return jnp.asarray(0.1 * (r.permutation(int(np.prod(shape))) - np.prod(shape) / 2)
                       .reshape(shape), d)


def _window_pads(padding):
    return padding if isinstance(padding, str) else ((0, 0), *padding, (0, 0))


def ref_max_pool2d(x, window, stride, padding="VALID"):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1),
                             (1, stride, stride, 1), _window_pads(padding))


def ref_avg_pool2d(x, window, stride, padding="VALID"):
    """The mean over each window's elements inside x (padding not counted)."""
    dims, strides, pads = (1, window, window, 1), (1, stride, stride, 1), _window_pads(padding)
    total = lax.reduce_window(x, 0.0, lax.add, dims, strides, pads)
    count = lax.reduce_window(jnp.ones_like(x), 0.0, lax.add, dims, strides, pads)
    return total / count


def ref_group_norm(params, x, groups, eps=1e-5):
    n, h, w, c = x.shape
    xg = x.reshape(n, h, w, groups, c // groups)
    mu = jnp.mean(xg, axis=(1, 2, 4), keepdims=True)
    var = jnp.mean((xg - mu) ** 2, axis=(1, 2, 4), keepdims=True)
    x_hat = ((xg - mu) / jnp.sqrt(var + eps)).reshape(x.shape)
    return jnp.broadcast_to(params.gamma, x.shape) * x_hat + jnp.broadcast_to(params.beta, x.shape)


def ref_dropout(key, x, rate):
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def ref_cnn(params, x, pool: int = 2):
    """``fbp.cnn`` from lax / jax.nn only: (conv SAME → relu → max-pool) × L → dense."""
    a = x
    for layer in params.convs:
        a = ref_max_pool2d(jax.nn.relu(ref_conv2d(layer, a, 1, "SAME")), pool, pool)
    a = a.reshape(*a.shape[:-3], -1)
    z = a @ params.head.W.T
    return z + jnp.broadcast_to(params.head.b, z.shape)


def cases() -> list:
    def gn_params(r, d, c=4):
        return group_norm.GroupNormParams(1 + 0.3 * _normal(r, (c,), d), _normal(r, (c,), d))

    return [
        OpCase("conv2d", conv.conv2d, lambda r, d: _conv_args(r, d, (2, 4, 4, 2), (3, 2, 2, 2)),
               ref_conv2d),
        OpCase("conv2d(stride 2, padded)", lambda p, x: conv.conv2d(p, x, **STRIDED), _conv_args,
               lambda p, x: ref_conv2d(p, x, 2, STRIDED["padding"])),
        OpCase("im2col(2, stride 2, SAME)", lambda x: conv.im2col(x, 2, stride=2, padding="SAME"),
               lambda r, d: (_normal(r, (2, 3, 3, 1), d),),      # padded (0, 1): 32 outputs
               lambda x: ref_im2col(x, 2, 2, "SAME")),
        OpCase("max_pool2d(2, stride 1)", lambda x: pooling.max_pool2d(x, 2, stride=1),
               lambda r, d: (_distinct(r, (2, 4, 4, 2), d),),
               lambda x: ref_max_pool2d(x, 2, 1)),
        OpCase("avg_pool2d(3, stride 2, SAME)",
               lambda x: pooling.avg_pool2d(x, 3, stride=2, padding="SAME"),
               lambda r, d: (_normal(r, (2, 5, 5, 2), d),),
               lambda x: ref_avg_pool2d(x, 3, 2, "SAME")),
        OpCase("group_norm(groups 2)", lambda p, x: group_norm.group_norm(p, x, 2),
               lambda r, d: (gn_params(r, d), _normal(r, (2, 3, 3, 4), d)),
               lambda p, x: ref_group_norm(p, x, 2)),
        OpCase("dropout(0.25)", dropout.dropout,
               lambda r, d: (jax.random.PRNGKey(int(r.integers(2**31))), _normal(r, (3, 4), d),
                             0.25),
               ref_dropout, {"batch_argnums": (1,)}),
    ]
