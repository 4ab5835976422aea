r"""Softmax cross-entropy (tutorial §5), fused and stable, with an optional ``where`` mask.

``softmax_cross_entropy(logits, labels, *, where=None)`` takes integer class labels or
floating (one-hot / soft) targets; ``fbp.losses`` re-exports it beside the other losses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fbp._validate import class_labels, float_array, wide_indices
from fbp.ops._scale import _acc, _batch_count, _per

# ── softmax cross-entropy (fused), integer labels or soft targets, optionally masked ──
#
# Every integer label is read one way by the forward and by the rule: a label in [0, C) is a
# class; any other integer (−1, C, …) is no class at all, and that example's loss and its
# gradient row are both NaN (as optax's integer-label loss gives NaN), so a wrong label can
# never train silently on a different function's gradient.  Concrete labels are refused up
# front with a ValueError; NaN is what a traced label outside [0, C) gives inside jit.

def _label_losses(logp, labels):
    """−log p[label] per example; NaN where the label is outside [0, C)."""
    n_classes, labels = logp.shape[-1], wide_indices(labels)  # C = 300 does not fit an int8
    valid = (labels >= 0) & (labels < n_classes)
    picked = jnp.take_along_axis(logp, jnp.clip(labels, 0, n_classes - 1)[..., None], axis=-1)
    return jnp.where(valid, -picked[..., 0], jnp.nan)


def _label_residual(logp, labels):
    """softmax − onehot per example, its row NaN where the label is outside [0, C)."""
    n_classes, labels = logp.shape[-1], wide_indices(labels)
    valid = (labels >= 0) & (labels < n_classes)
    onehot = jax.nn.one_hot(labels, n_classes, dtype=logp.dtype)
    return jnp.where(valid[..., None], jnp.exp(logp) - onehot, jnp.nan)


def _positions(w, dtype):
    """The number of positions ``where`` selects, at least 1, in float32 or wider."""
    return jnp.maximum(jnp.sum(w, dtype=_acc(dtype)), 1)


def _masked_mean(rows, w):
    """Σ_{w} rows / max(Σ w, 1), summed and divided in float32 or wider; 0 where w is False."""
    acc = _acc(rows.dtype)
    total = jnp.sum(jnp.where(w, rows, 0), dtype=acc)
    return (total / _positions(w, rows.dtype)).astype(rows.dtype)


def softmax_cross_entropy_delta(z, labels, where=None):
    """∂L/∂z: (softmax(z)·Σt − t) / m, which is (softmax − onehot)/m for labels; with
    ``where``, rows outside it are 0 and m is the number of rows inside it."""
    logp = jax.nn.log_softmax(z, axis=-1)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        resid = _label_residual(logp, labels)
    else:
        resid = jnp.exp(logp) * jnp.sum(labels, axis=-1, keepdims=True) - labels
    if where is None:
        return _per(resid, _batch_count(z))
    return _per(jnp.where(where[..., None], resid, 0), _positions(where, z.dtype))


@jax.custom_vjp
def _sce_labels(z, labels):
    return jnp.mean(_label_losses(jax.nn.log_softmax(z, axis=-1), labels))


def _sce_labels_fwd(z, labels):
    logp = jax.nn.log_softmax(z, axis=-1)
    return jnp.mean(_label_losses(logp, labels)), (logp, labels)


def _sce_labels_bwd(res, g):
    logp, labels = res
    return g * _per(_label_residual(logp, labels), _batch_count(logp)), None


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
    z_bar = g * _per(jnp.exp(logp) * jnp.sum(t, axis=-1, keepdims=True) - t, m)
    return z_bar, -g * _per(logp, m)


_sce_soft.defvjp(_sce_soft_fwd, _sce_soft_bwd)


# with where: the mean over the selected positions (M = max(Σ where, 1) of them)

@jax.custom_vjp
def _sce_labels_where(z, labels, w):
    return _masked_mean(_label_losses(jax.nn.log_softmax(z, axis=-1), labels), w)


def _sce_labels_where_fwd(z, labels, w):
    logp = jax.nn.log_softmax(z, axis=-1)
    return _masked_mean(_label_losses(logp, labels), w), (logp, labels, w)


def _sce_labels_where_bwd(res, g):
    logp, labels, w = res
    resid = jnp.where(w[..., None], _label_residual(logp, labels), 0)
    return g * _per(resid, _positions(w, logp.dtype)), None, None


_sce_labels_where.defvjp(_sce_labels_where_fwd, _sce_labels_where_bwd)


@jax.custom_vjp
def _sce_soft_where(z, t, w):
    return _masked_mean(-jnp.sum(t * jax.nn.log_softmax(z, axis=-1), axis=-1), w)


def _sce_soft_where_fwd(z, t, w):
    logp = jax.nn.log_softmax(z, axis=-1)
    return _masked_mean(-jnp.sum(t * logp, axis=-1), w), (logp, t, w)


def _sce_soft_where_bwd(res, g):
    logp, t, w = res
    m, inside = _positions(w, logp.dtype), w[..., None]
    resid = jnp.exp(logp) * jnp.sum(t, axis=-1, keepdims=True) - t
    z_bar = g * _per(jnp.where(inside, resid, 0), m)
    return z_bar, -g * _per(jnp.where(inside, logp, 0), m), None


_sce_soft_where.defvjp(_sce_soft_where_fwd, _sce_soft_where_bwd)


def softmax_cross_entropy(logits, labels, *, where=None):
    r"""Cross-entropy of softmax(logits) against class labels, fused and stable.

    Forward:  L = (1/m) Σ_examples [logsumexp(z) − Σ_k t_k z_k]   with t = onehot(label)
              or a soft target; log-softmax is formed as z − logsumexp(z), never log(softmax).
    VJP:      z̄ = ḡ (softmax(z) − t) / m   (for soft targets that do not sum to 1:
              ḡ (softmax(z) Σ_k t_k − t) / m);  t̄ = −ḡ log softmax(z) / m;  integer labels
              get no cotangent.
    Saves:    log softmax(z) and the labels (or targets) (and ``where``).

    With ``where`` (optax's name; the temporal loss of a padded sequence batch):
              L = (1/M) Σ_{i: where_i} ℓ_i,   M = Σ_i where_i,
              z̄_i = ḡ where_i (softmax(z_i) − t_i) / M,   t̄_i = −ḡ where_i log softmax(z_i) / M:
              a position outside ``where`` adds nothing to L and gets a zero gradient, and its
              label is never read (padding may hold any integer, e.g. −1).  An all-False
              ``where`` selects no position: L = 0 and every gradient is 0 (M is taken as
              max(Σ where, 1)), so a batch of padding alone leaves the parameters as they are
              — where ``jnp.mean(per_example_losses, where=where)`` gives 0/0 = NaN.

    Labels outside [0, n_classes): refused with a ValueError when concrete; inside ``jit``
    (values unknown) such an example's loss and gradient row are both NaN, the forward and
    the rule reading the label the same way.  ``fbp.fit`` checks concrete labels before it
    compiles.

    Args:
      logits: floating array ``(..., n_classes)``; m is the product of the leading dims.
      labels: integer class indices of shape ``(...)`` in [0, n_classes), or floating
        one-hot / soft targets of shape ``(..., n_classes)``.
      where: optional boolean array of shape ``logits.shape[:-1]``: the positions that count.
    Returns:
      the mean loss, a scalar.
    """
    z, labels, w = _checked(logits, labels, where)
    integer = jnp.issubdtype(labels.dtype, jnp.integer)
    if w is None:
        return _sce_labels(z, labels) if integer else _sce_soft(z, labels)
    return _sce_labels_where(z, labels, w) if integer else _sce_soft_where(z, labels, w)


def validate_softmax_cross_entropy(logits, labels, where=None):
    """``(z, labels, where)`` as arrays after the checks ``softmax_cross_entropy`` (and its
    twin) make; ``where`` stays None when not given."""
    return _checked(logits, labels, where)


def _checked(logits, labels, where):
    """``(z, labels, where)`` as arrays, or the error that names the argument at fault."""
    z = float_array(logits, "logits", min_rank=1)
    w = None if where is None else _check_where(where, z)
    labels = jnp.asarray(labels)
    if labels.dtype == jnp.bool_:
        fix = ("labels.astype(jnp.int32) for class indices" if labels.shape == z.shape[:-1]
               else "labels.astype(logits.dtype) for one-hot targets" if labels.shape == z.shape
               else f"integers of shape {z.shape[:-1]} or floats of shape {z.shape}")
        raise TypeError(f"labels must be integer class indices or floating targets; got bool "
                        f"of shape {labels.shape}. Use {fix}.")
    if jnp.issubdtype(labels.dtype, jnp.integer):
        if labels.shape != z.shape[:-1]:
            raise ValueError(
                f"integer labels must have shape logits.shape[:-1] = {z.shape[:-1]}; got "
                f"{labels.shape}. (For one-hot or soft targets pass floats of shape {z.shape}.)"
            )
        class_labels(labels, "labels", z.shape[-1], where=w)
    else:
        labels = float_array(labels, "labels")
        if labels.shape != z.shape:
            raise ValueError(
                f"soft/one-hot labels must have the shape of logits {z.shape}; got "
                f"{labels.shape}. (For class indices pass integers of shape {z.shape[:-1]}.)"
            )
        if labels.dtype != z.dtype:
            raise TypeError(f"labels must have the dtype of logits ({z.dtype}); got "
                            f"{labels.dtype}. Cast them: labels.astype(logits.dtype).")
    return z, labels, w


def _check_where(where, z):
    w = jnp.asarray(where)
    if w.dtype != jnp.bool_:
        raise TypeError(f"where must be a boolean array (True where a position counts); got "
                        f"{w.dtype}. Use e.g. where=mask.astype(bool) or where=lengths_mask > 0.")
    if w.shape != z.shape[:-1]:
        raise ValueError(f"where must have shape logits.shape[:-1] = {z.shape[:-1]} (one entry "
                         f"per position); got {w.shape}.")
    return w
