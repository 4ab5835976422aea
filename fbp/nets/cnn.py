r"""A small convnet composed of fbp's ops: (conv → relu → max-pool) × L → flatten → dense.

Every differentiable step is an fbp op with a hand-written rule (conv2d, relu, max_pool2d,
dense, softmax_cross_entropy); the flatten between the last pool and the head is a reshape,
whose VJP is the inverse reshape.  The δ recursion of §7.1 runs through the layers in
reverse: dense's x̄, reshaped, is the pool's ḡ; the pool routes it to each window's maximum;
relu masks it; conv2d's x̄ (the transposed convolution) hands it to the layer below.
"""

from __future__ import annotations

from typing import NamedTuple

import jax

from fbp.ops import activations, conv, losses, pooling
from fbp.ops.linear import Dense, dense, init_dense


class CNN(NamedTuple):
    """``convs``: a tuple of ``Conv`` (one per conv block); ``head``: the ``Dense`` classifier."""

    convs: tuple
    head: Dense


def init_cnn(key, in_shape=(8, 8, 1), channels=(8, 16), n_classes: int = 10,
             kernel_size=3, pool: int = 2, dtype=None) -> CNN:
    r"""He-initialised ``CNN`` for images of ``in_shape`` = (H, W, C).

    Each block keeps H × W (a "SAME" convolution) and max-pools by ``pool`` (H ↦ ⌊H/pool⌋),
    so the head sees ⌊H/pool^L⌋·⌊W/pool^L⌋·channels[−1] features.
    """
    h, w, c = in_shape
    keys = jax.random.split(key, len(channels) + 1)
    convs = []
    for k, c_out in zip(keys[:-1], channels):
        convs.append(conv.init_conv(k, c, c_out, kernel_size, dtype=dtype))
        h, w, c = h // pool, w // pool, c_out
    if h < 1 or w < 1:
        raise ValueError(f"in_shape {in_shape} is too small for {len(channels)} blocks that each "
                         f"pool by {pool}; use fewer channels entries or a smaller pool.")
    return CNN(tuple(convs), init_dense(keys[-1], h * w * c, n_classes, dtype=dtype))


def cnn(params: CNN, x, *, pool: int = 2, method: str = "direct"):
    r"""Logits of the convnet: x (..., H, W, C) → (..., n_classes).

    a⁽ˡ⁾ = max_pool(relu(conv2d(W⁽ˡ⁾, a⁽ˡ⁻¹⁾, padding="SAME")), pool);  z = dense(head, flat(a⁽ᴸ⁾)).
    ``method`` selects conv2d's rule ("direct" or "im2col"): the numbers agree.
    """
    a = x
    for layer in params.convs:
        a = activations.relu(conv.conv2d(layer, a, padding="SAME", method=method))
        a = pooling.max_pool2d(a, pool)
    return dense(params.head, a.reshape(*a.shape[:-3], -1))


def cnn_loss(params: CNN, x, labels, *, pool: int = 2, method: str = "direct"):
    """Mean softmax cross-entropy of ``cnn(params, x)`` against integer ``labels`` (...,)."""
    return losses.softmax_cross_entropy(cnn(params, x, pool=pool, method=method), labels)
