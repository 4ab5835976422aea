r"""Losses (tutorial §5), each ``f(prediction_or_logits, target) -> scalar``.

Every loss is a mean, the tutorial's 1/m: ``bce_with_logits``, ``bce`` and ``mse`` average
over every element; ``softmax_cross_entropy`` sums over the class axis and averages over
the leading (batch) axes (or over the positions ``where`` selects).  The fused rules are why
the output delta is simply ŷ − y.  The ``*_delta`` helpers hold each gradient once; the VJP
rules and ``fbp.backprop`` call them.

Counts are divided in float32 or wider (``_per``), as ``jnp.mean`` does: 1/N in float16
overflows from N = 65,520 (float16's largest number is 65,504), which would turn every
gradient of a large float16 batch into exactly 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy

from fbp._validate import float_array, in_range, same_shape
from fbp.ops._scale import _acc, _batch_count, _count, _per  # noqa: F401  (fbp.forward, hvp)
from fbp.ops.cross_entropy import (  # noqa: F401  (fbp.forward wraps the private rules)
    _sce_labels,
    _sce_soft,
    softmax_cross_entropy,
    softmax_cross_entropy_delta,
    validate_softmax_cross_entropy,
)


def _float_target(y, like, name: str, like_name: str):
    """Targets as floats of the prediction's dtype (integer 0/1 labels are accepted)."""
    y = jnp.asarray(y)
    if jnp.issubdtype(y.dtype, jnp.integer) or y.dtype == jnp.bool_:
        y = y.astype(like.dtype)
    y = float_array(y, name)
    same_shape(like, y, like_name, name)
    if y.dtype != like.dtype:
        raise TypeError(f"{name} must have the dtype of {like_name} ({like.dtype}); got {y.dtype}.")
    return y


# ── binary cross-entropy on logits (fused) ──

def _softplus(z):
    """log(1 + e^z) = max(z, 0) + log1p(e^{−|z|}): never overflows, exact for both signs."""
    return jnp.maximum(z, 0) + jnp.log1p(jnp.exp(-jnp.abs(z)))


def bce_with_logits_delta(z, y):
    """∂L/∂z of the mean BCE on logits: (σ(z) − y) / N, written (1 − y)σ(z) − yσ(−z) so that a
    confidently right prediction keeps its tiny gradient instead of rounding 1 − 1 to 0."""
    return _per((1 - y) * jax.nn.sigmoid(z) - y * jax.nn.sigmoid(-z), _count(z))


@jax.custom_vjp
def _bce_with_logits(z, y):
    # softplus(z) − y z = y·softplus(−z) + (1 − y)·softplus(z): no cancellation for either label
    return jnp.mean(y * _softplus(-z) + (1 - y) * _softplus(z))


def _bce_with_logits_fwd(z, y):
    return _bce_with_logits(z, y), (z, y)


def _bce_with_logits_bwd(res, g):
    z, y = res
    return g * bce_with_logits_delta(z, y), -g * _per(z, _count(z))


_bce_with_logits.defvjp(_bce_with_logits_fwd, _bce_with_logits_bwd)


def bce_with_logits(logits, y):
    r"""Binary cross-entropy of sigmoid(logits) against targets y, fused and stable.

    Forward:  L = (1/N) Σ [softplus(z) − y z] = (1/N) Σ [y softplus(−z) + (1 − y) softplus(z)],
              softplus(z) = max(z, 0) + log(1 + e^{−|z|}); this equals
              −(1/N) Σ [y log σ(z) + (1 − y) log(1 − σ(z))] exactly, without ever forming
              log σ(z) (no overflow, no log 0, no cancellation; no +1e-8 needed).
    VJP:      z̄ = ḡ (σ(z) − y) / N   — the tutorial's "惊人的简洁性" (§5 step 1): σ' cancels
              the 1/(ŷ(1 − ŷ)) of the log, leaving ŷ − y.
              ȳ = −ḡ z / N.
    Saves:    z and y.

    Args:
      logits: floating array of any shape (N elements in all).
      y: targets in [0, 1], same shape (integer 0/1 labels are cast to the logits' dtype).
    Returns:
      the mean loss, a scalar.
    """
    z = float_array(logits, "logits")
    y = _float_target(y, z, "y", "logits")
    in_range(y, "y", 0.0, 1.0)
    return _bce_with_logits(z, y)


# ── binary cross-entropy on probabilities (the tutorial's unfused rule) ──

def bce_delta(y_hat, y):
    """(∂L/∂ŷ, ∂L/∂y) of the mean BCE on probabilities.

    ∂L/∂ŷ = (−y/ŷ + (1 − y)/(1 − ŷ))/N, each term taken as 0 where its coefficient is exactly
    0: at ŷ = 1 with y = 1 the second term is 0/0 in floating point, but the loss there is
    −log ŷ alone (its (1 − y) log(1 − ŷ) term is 0 for every ŷ), whose derivative is −1.  So
    ŷ = y = 1 gives −1/N and ŷ = y = 0 gives +1/N, the limits of the gradient, not NaN.
    """
    n = _count(y_hat)
    pull = jnp.where(y == 0, 0, -y / jnp.where(y == 0, 1, y_hat))              # −y/ŷ
    push = jnp.where(y == 1, 0, (1 - y) / jnp.where(y == 1, 1, 1 - y_hat))    # (1−y)/(1−ŷ)
    return _per(pull + push, n), -_per(jnp.log(y_hat) - jnp.log1p(-y_hat), n)


@jax.custom_vjp
def _bce(y_hat, y):
    return -jnp.mean(xlogy(y, y_hat) + xlogy(1 - y, 1 - y_hat))


def _bce_fwd(y_hat, y):
    return _bce(y_hat, y), (y_hat, y)


def _bce_bwd(res, g):
    y_hat, y = res
    y_hat_bar, y_bar = bce_delta(y_hat, y)
    return g * y_hat_bar, g * y_bar


_bce.defvjp(_bce_fwd, _bce_bwd)


def bce(y_hat, y):
    r"""Binary cross-entropy on probabilities ŷ (tutorial §5, unfused).

    Forward:  L = −(1/N) Σ [y log ŷ + (1 − y) log(1 − ŷ)]   (0 log 0 taken as 0).
    VJP:      ŷ̄ = ḡ (−y/ŷ + (1 − y)/(1 − ŷ)) / N   (the tutorial's ∂L/∂ŷ),
              ȳ = −ḡ (log ŷ − log(1 − ŷ)) / N.
    Saves:    ŷ and y.
    At the ends:  with the matching label (ŷ = y = 1, or ŷ = y = 0) the loss is 0 and ŷ̄ is
    its limit ∓ḡ/N: a term whose coefficient is exactly 0 (y or 1 − y) is 0, not 0/0 = NaN.
    (In float32 sigmoid(z) rounds to 1 from z ≈ 17, so ``bce(sigmoid(z), 1)`` reaches this
    point in ordinary training; JAX's autodiff of the same forward gives NaN there.)
    Against the wrong label (ŷ = 1, y = 0) ŷ̄ is +inf, as the maths says; for a network
    output prefer ``bce_with_logits``, which fuses the sigmoid and stays finite.

    Args:
      y_hat: probabilities in [0, 1], any shape (N elements in all).
      y: targets in [0, 1], same shape (integer 0/1 labels are cast).
    Returns:
      the mean loss, a scalar.
    """
    y_hat = float_array(y_hat, "y_hat")
    y = _float_target(y, y_hat, "y", "y_hat")
    in_range(y_hat, "y_hat", 0.0, 1.0)
    in_range(y, "y", 0.0, 1.0)
    return _bce(y_hat, y)


# ── mean squared error ──

def mse_delta(y_hat, y):
    """∂L/∂ŷ of the mean squared error: 2 (ŷ − y) / N."""
    return _per(2 * (y_hat - y), _count(y_hat))


@jax.custom_vjp
def _mse(y_hat, y):
    return jnp.mean((y_hat - y) ** 2)


def _mse_fwd(y_hat, y):
    d = y_hat - y
    return jnp.mean(d * d), (d,)


def _mse_bwd(res, g):
    (d,) = res
    y_hat_bar = g * _per(2 * d, _count(d))
    return y_hat_bar, -y_hat_bar


_mse.defvjp(_mse_fwd, _mse_bwd)


def mse(y_hat, y):
    r"""Mean squared error.

    Forward:  L = (1/N) Σ (ŷ − y)².
    VJP:      ŷ̄ = ḡ · 2 (ŷ − y) / N,   ȳ = −ŷ̄.
    Saves:    the difference ŷ − y only.

    Args:
      y_hat: floating predictions, any shape (N elements in all).
      y: floating targets, same shape and dtype.
    Returns:
      the mean loss, a scalar.
    """
    y_hat = float_array(y_hat, "y_hat")
    y = _float_target(y, y_hat, "y", "y_hat")
    return _mse(y_hat, y)


# ∂L/∂(network output) for the losses fbp.backprop can start its δ recursion from.
DELTAS = {
    bce_with_logits: bce_with_logits_delta,
    softmax_cross_entropy: softmax_cross_entropy_delta,
    mse: mse_delta,
}

LOSSES = {
    "bce_with_logits": bce_with_logits,
    "softmax_cross_entropy": softmax_cross_entropy,
    "mse": mse,
}
