r"""Losses (tutorial §5), each ``f(prediction_or_logits, target) -> scalar``.

Every loss is a mean, the tutorial's 1/m: ``bce_with_logits``, ``bce`` and ``mse`` average
over every element; ``softmax_cross_entropy`` sums over the class axis and averages over
the leading (batch) axes.  The fused rules are why the output delta is simply ŷ − y.
The ``*_delta`` helpers hold each gradient once; the VJP rules and ``fbp.backprop`` call them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlogy

from fbp._validate import float_array, in_range, is_concrete, same_shape


def _count(x) -> int:
    return max(math.prod(x.shape), 1)


def _batch_count(logits) -> int:
    return max(math.prod(logits.shape[:-1]), 1)


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
    return ((1 - y) * jax.nn.sigmoid(z) - y * jax.nn.sigmoid(-z)) / _count(z)


@jax.custom_vjp
def _bce_with_logits(z, y):
    # softplus(z) − y z = y·softplus(−z) + (1 − y)·softplus(z): no cancellation for either label
    return jnp.mean(y * _softplus(-z) + (1 - y) * _softplus(z))


def _bce_with_logits_fwd(z, y):
    return _bce_with_logits(z, y), (z, y)


def _bce_with_logits_bwd(res, g):
    z, y = res
    return g * bce_with_logits_delta(z, y), -g * z / _count(z)


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
    """(∂L/∂ŷ, ∂L/∂y) of the mean BCE on probabilities."""
    n = _count(y_hat)
    return (-y / y_hat + (1 - y) / (1 - y_hat)) / n, -(jnp.log(y_hat) - jnp.log1p(-y_hat)) / n


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
    The gradient is infinite where ŷ reaches 0 or 1; for a network output prefer
    ``bce_with_logits``, which fuses the sigmoid and stays finite.

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


# ── softmax cross-entropy (fused), integer labels or soft targets ──

def softmax_cross_entropy_delta(z, labels):
    """∂L/∂z: (softmax(z)·Σt − t) / m, which is (softmax − onehot)/m for labels."""
    s = jax.nn.softmax(z, axis=-1)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        return (s - jax.nn.one_hot(labels, z.shape[-1], dtype=z.dtype)) / _batch_count(z)
    return (s * jnp.sum(labels, axis=-1, keepdims=True) - labels) / _batch_count(z)


@jax.custom_vjp
def _sce_labels(z, labels):
    logp = jax.nn.log_softmax(z, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1))


def _sce_labels_fwd(z, labels):
    logp = jax.nn.log_softmax(z, axis=-1)
    loss = -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1))
    return loss, (logp, labels)


def _sce_labels_bwd(res, g):
    logp, labels = res
    onehot = jax.nn.one_hot(labels, logp.shape[-1], dtype=logp.dtype)
    return g * (jnp.exp(logp) - onehot) / _batch_count(logp), None


_sce_labels.defvjp(_sce_labels_fwd, _sce_labels_bwd)


@jax.custom_vjp
def _sce_soft(z, t):
    return -jnp.mean(jnp.sum(t * jax.nn.log_softmax(z, axis=-1), axis=-1))


def _sce_soft_fwd(z, t):
    logp = jax.nn.log_softmax(z, axis=-1)
    return -jnp.mean(jnp.sum(t * logp, axis=-1)), (logp, t)


def _sce_soft_bwd(res, g):
    logp, t = res
    m = _batch_count(logp)
    z_bar = g * (jnp.exp(logp) * jnp.sum(t, axis=-1, keepdims=True) - t) / m
    return z_bar, -g * logp / m


_sce_soft.defvjp(_sce_soft_fwd, _sce_soft_bwd)


def softmax_cross_entropy(logits, labels):
    r"""Cross-entropy of softmax(logits) against class labels, fused and stable.

    Forward:  L = (1/m) Σ_examples [logsumexp(z) − Σ_k t_k z_k]   with t = onehot(label)
              or a soft target; log-softmax is formed as z − logsumexp(z), never log(softmax).
    VJP:      z̄ = ḡ (softmax(z) − t) / m   (for soft targets that do not sum to 1:
              ḡ (softmax(z) Σ_k t_k − t) / m);  t̄ = −ḡ log softmax(z) / m;  integer labels
              get no cotangent.
    Saves:    log softmax(z) and the labels (or targets).

    Args:
      logits: floating array ``(..., n_classes)``; m is the product of the leading dims.
      labels: integer class indices of shape ``(...)`` in [0, n_classes), or floating
        one-hot / soft targets of shape ``(..., n_classes)``.
    Returns:
      the mean loss, a scalar.
    """
    z, labels = validate_softmax_cross_entropy(logits, labels)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        return _sce_labels(z, labels)
    return _sce_soft(z, labels)


def validate_softmax_cross_entropy(logits, labels):
    """``(z, labels)`` as arrays after the checks ``softmax_cross_entropy`` (and its twin) make."""
    z = float_array(logits, "logits", min_rank=1)
    labels = jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        if labels.shape != z.shape[:-1]:
            raise ValueError(
                f"integer labels must have shape logits.shape[:-1] = {z.shape[:-1]}; got "
                f"{labels.shape}. (For one-hot or soft targets pass floats of shape {z.shape}.)"
            )
        if is_concrete(labels) and labels.size:
            values = np.asarray(labels)  # NumPy: no tracing even inside a jit trace
            lo, hi = int(values.min()), int(values.max())
            if lo < 0 or hi >= z.shape[-1]:
                raise ValueError(
                    f"labels must lie in [0, {z.shape[-1]}) for {z.shape[-1]} classes; "
                    f"got values in [{lo}, {hi}]."
                )
        return z, labels
    t = float_array(labels, "labels")
    if t.shape != z.shape:
        raise ValueError(
            f"soft/one-hot labels must have the shape of logits {z.shape}; got {t.shape}. "
            f"(For class indices pass integers of shape {z.shape[:-1]}.)"
        )
    if t.dtype != z.dtype:
        raise TypeError(f"labels must have the dtype of logits ({z.dtype}); got {t.dtype}.")
    return z, t


# ── mean squared error ──

def mse_delta(y_hat, y):
    """∂L/∂ŷ of the mean squared error: 2 (ŷ − y) / N."""
    return 2 * (y_hat - y) / _count(y_hat)


@jax.custom_vjp
def _mse(y_hat, y):
    return jnp.mean((y_hat - y) ** 2)


def _mse_fwd(y_hat, y):
    d = y_hat - y
    return jnp.mean(d * d), (d,)


def _mse_bwd(res, g):
    (d,) = res
    y_hat_bar = g * 2 * d / _count(d)
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
