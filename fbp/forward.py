r"""Forward mode: every fbp op again, with its tangent rule (JVP) written by hand.

``jax.custom_vjp`` rules run in reverse mode only: ``jax.jvp``, ``jax.jacfwd`` and
``jax.hessian`` raise on them.  This module holds a twin of each op under the same name in
its own namespace — ``fbp.forward.sigmoid`` beside ``fbp.sigmoid``, ``fbp.forward.dense``
beside ``fbp.dense`` — with the same signature, the same input validation and the very same
forward function (the sibling's own, ``fbp.activations._sigmoid.__wrapped__``); only the rule
differs.  Here it is a ``jax.custom_jvp``: given primals and tangents (ż, the direction the
input moves) it returns the output and its tangent,

    ż  ↦  ḣ = J ż           (the Jacobian applied to a vector, J never formed).

Every tangent here is linear in the input tangents, so JAX derives reverse mode by
transposing it: ``jax.vjp`` of a twin returns Jᵀ ḡ, which the tests hold equal to the
hand-written VJP of the sibling.  The derivative itself lives once, in the helpers the
reverse rules use too (``sigmoid_grad`` … ``softmax_vjp`` in ``fbp.activations``, the
``*_delta`` helpers in ``fbp.losses``).  For a scalar loss the JVP is an inner product,
L̇ = ⟨∂L/∂z, ż⟩ + ⟨∂L/∂y, ẏ⟩, so each loss rule reuses its ∂L/∂z helper.

Higher order: a rule computes its output by calling its own op (so that call is
differentiated by the same rule again) and its tangent from plain ``jnp`` helpers, which JAX
differentiates itself — ``jax.hessian`` and forward-over-reverse ``jax.jacfwd(jax.grad(f))``
work on every twin.  (Tutorial §13 names forward and reverse mode as the next step; the
formulas are those of §5 and §8, read in the forward direction.)

Names: ``primals``/``tangents`` for the rule's arguments, ``z_dot``, ``W_dot`` … for tangents
(the dot of ż).  ``fbp.forward.mlp`` composes the twins as ``fbp.mlp`` composes the ops.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from fbp._validate import finite_scalar, float_array, in_range
from fbp.nets.mlp import _check_params, _resolve
from fbp.ops import activations as _act
from fbp.ops import cross_entropy as _ce
from fbp.ops import linear as _lin
from fbp.ops import losses as _loss
from fbp.ops._scale import _acc, _per
from fbp.ops.activations import (
    gelu_grad,
    gelu_tanh_grad,
    leaky_relu_grad,
    relu_grad,
    sigmoid_grad,
    softmax_vjp,
    tanh_grad,
)
from fbp.ops.linear import Dense, validate_dense
from fbp.ops.losses import (
    _batch_count,
    _count,
    _float_target,
    bce_delta,
    bce_with_logits_delta,
    mse_delta,
    softmax_cross_entropy_delta,
    validate_softmax_cross_entropy,
)

# ── elementwise activations: ḣ = σ'(z) ⊙ ż ──

_sigmoid = jax.custom_jvp(_act._sigmoid.__wrapped__)


def _sigmoid_jvp(primals, tangents):
    (z,), (z_dot,) = primals, tangents
    h = _sigmoid(z)
    return h, sigmoid_grad(h) * z_dot


_sigmoid.defjvp(_sigmoid_jvp)


def sigmoid(z):
    r"""σ(z) = 1 / (1 + e^{−z}) with a hand-written JVP (the twin of ``fbp.sigmoid``).

    JVP:         ḣ = σ'(z) ⊙ ż = h ⊙ (1 − h) ⊙ ż   (elementwise: J = diag(σ'(z))).
    Transposed:  z̄ = h ⊙ (1 − h) ⊙ ḡ, the rule of ``fbp.sigmoid`` (a diagonal J is its own
                 transpose).
    Shapes:      z: (...) → h: (...), same dtype.
    """
    return _sigmoid(float_array(z, "z"))


_tanh = jax.custom_jvp(_act._tanh.__wrapped__)


def _tanh_jvp(primals, tangents):
    (z,), (z_dot,) = primals, tangents
    h = _tanh(z)
    return h, tanh_grad(h) * z_dot


_tanh.defjvp(_tanh_jvp)


def tanh(z):
    r"""tanh(z) with a hand-written JVP (the twin of ``fbp.tanh``).

    JVP:         ḣ = (1 − h²) ⊙ ż.      Transposed:  z̄ = (1 − h²) ⊙ ḡ.
    Shapes:      z: (...) → h: (...).
    """
    return _tanh(float_array(z, "z"))


_relu = jax.custom_jvp(_act._relu.__wrapped__)


def _relu_jvp(primals, tangents):
    (z,), (z_dot,) = primals, tangents
    return _relu(z), relu_grad(z) * z_dot


_relu.defjvp(_relu_jvp)


def relu(z):
    r"""max(0, z) with a hand-written JVP (the twin of ``fbp.relu``).

    JVP:         ḣ = 1[z > 0] ⊙ ż   (slope 0 at z = 0, as in the reverse rule).
    Transposed:  z̄ = 1[z > 0] ⊙ ḡ.
    Shapes:      z: (...) → h: (...).
    """
    return _relu(float_array(z, "z"))


_leaky_relu = jax.custom_jvp(_act._leaky_relu.__wrapped__, nondiff_argnums=(1,))


def _leaky_relu_jvp(alpha, primals, tangents):
    (z,), (z_dot,) = primals, tangents
    return _leaky_relu(z, alpha), leaky_relu_grad(z, alpha) * z_dot


_leaky_relu.defjvp(_leaky_relu_jvp)


def leaky_relu(z, alpha: float = 0.01):
    r"""z if z > 0 else α z, with a hand-written JVP (the twin of ``fbp.leaky_relu``).

    JVP:         ḣ = (1 if z > 0 else α) ⊙ ż.    Transposed:  z̄ = (1 if z > 0 else α) ⊙ ḡ.
    α is a static hyperparameter (``nondiff_argnums``): it gets no tangent.
    Shapes:      z: (...) → h: (...).
    """
    return _leaky_relu(float_array(z, "z"), finite_scalar(alpha, "alpha"))


_gelu = jax.custom_jvp(_act._gelu.__wrapped__)


def _gelu_jvp(primals, tangents):
    (z,), (z_dot,) = primals, tangents
    return _gelu(z), gelu_grad(z) * z_dot


_gelu.defjvp(_gelu_jvp)

_gelu_tanh = jax.custom_jvp(_act._gelu_tanh.__wrapped__)


def _gelu_tanh_jvp(primals, tangents):
    (z,), (z_dot,) = primals, tangents
    return _gelu_tanh(z), gelu_tanh_grad(z) * z_dot


_gelu_tanh.defjvp(_gelu_tanh_jvp)


def gelu(z, approximate: bool = False):
    r"""z Φ(z) (or its tanh form) with a hand-written JVP (the twin of ``fbp.gelu``).

    JVP (exact):  ḣ = (Φ(z) + z φ(z)) ⊙ ż.
    JVP (tanh):   ḣ = [½(1 + tanh u) + ½ z (1 − tanh² u) √(2/π)(1 + 3·0.044715 z²)] ⊙ ż,
                  u = √(2/π)(z + 0.044715 z³).
    Transposed:   the same factor times ḡ, the rules of ``fbp.gelu``.
    Shapes:       z: (...) → h: (...).
    """
    if not isinstance(approximate, bool):
        raise TypeError(f"approximate must be True or False; got {approximate!r}.")
    z = float_array(z, "z")
    return _gelu_tanh(z) if approximate else _gelu(z)


# ── softmax: a symmetric Jacobian, so the VJP line is also the JVP ──

_softmax = jax.custom_jvp(_act._softmax.__wrapped__)


def _softmax_jvp(primals, tangents):
    (z,), (z_dot,) = primals, tangents
    s = _softmax(z)
    return s, softmax_vjp(s, z_dot)


_softmax.defjvp(_softmax_jvp)


def softmax(z):
    r"""Softmax over the last axis with a hand-written JVP (the twin of ``fbp.softmax``).

    JVP:         ṡ = (diag(s) − s sᵀ) ż = s ⊙ (ż − ⟨ż, s⟩)   per row.
    Transposed:  the Jacobian is symmetric, so z̄ = s ⊙ (ḡ − ⟨ḡ, s⟩): one helper,
                 ``softmax_vjp``, serves both directions.
    Shapes:      z: (..., n) → s: (..., n).
    """
    return _softmax(float_array(z, "z", min_rank=1))


# ── dense: bilinear in (params, x), so the tangent is the product rule ──

def _is_zero(t) -> bool:
    return isinstance(t, SymbolicZero)


def _instantiate(t):
    return jnp.zeros(t.shape, t.dtype) if _is_zero(t) else t


_dense = jax.custom_jvp(_lin._dense.__wrapped__)


def _dense_jvp(primals, tangents):
    (params, x), ((W_dot, b_dot), x_dot) = primals, tangents
    W, _ = params
    z = _dense(params, x)
    z_dot = jnp.zeros_like(z) if _is_zero(x_dot) else x_dot @ W.T           # W ẋ
    if not (_is_zero(W_dot) and _is_zero(b_dot)):                           # + Ẇ x + ḃ: the
        z_dot = z_dot + _dense.__wrapped__(                                 # layer itself on
            Dense(_instantiate(W_dot), _instantiate(b_dot)), x)             # (Ẇ, ḃ)
    return z, z_dot


# symbolic_zeros: a tangent JAX knows is zero (an input held fixed, e.g. the weights when
# jacfwd differentiates in x) arrives as a SymbolicZero and its matmul is skipped.
_dense.defjvp(_dense_jvp, symbolic_zeros=True)


def dense(params, x):
    r"""z = W x + b (batch: Z = X Wᵀ + b) with a hand-written JVP (the twin of ``fbp.dense``).

    JVP:         ż = Ẇ x + W ẋ + ḃ      (product rule; batch: Ż = X Ẇᵀ + Ẋ Wᵀ + ḃ).
    Transposed:  reading off the coefficient of each tangent in ⟨ḡ, ż⟩ gives
                 W̄ = δᵀ X,  b̄ = Σ δ,  x̄ = δ W  with δ = ḡ — the rule of ``fbp.dense``.
    Shapes:      W: (n_out, n_in), b: (n_out,), x: (..., n_in) → z: (..., n_out).
    """
    return _dense(*validate_dense(params, x))


# ── losses: L̇ = ⟨∂L/∂z, ż⟩ + ⟨∂L/∂y, ẏ⟩, with ∂L/∂z from the shared *_delta helpers ──

def _mean_of_sum(x, n):
    """Σx / n, summed and divided in float32 or wider (a float16 n ≥ 65,520 is inf, and
    Σx / n with a Python int n would make the term exactly 0), returned in x's dtype."""
    return _per(jnp.sum(x, dtype=_acc(x.dtype)), n).astype(x.dtype)


_bce_with_logits = jax.custom_jvp(_loss._bce_with_logits.__wrapped__)


def _bce_with_logits_jvp(primals, tangents):
    (z, y), (z_dot, y_dot) = primals, tangents
    loss_dot = jnp.sum(bce_with_logits_delta(z, y) * z_dot) - _mean_of_sum(z * y_dot, _count(z))
    return _bce_with_logits(z, y), loss_dot


_bce_with_logits.defjvp(_bce_with_logits_jvp)


def bce_with_logits(logits, y):
    r"""Mean BCE on logits, fused, with a hand-written JVP (the twin of ``fbp.bce_with_logits``).

    JVP:         L̇ = ⟨(σ(z) − y)/N, ż⟩ − ⟨z/N, ẏ⟩.
    Transposed:  z̄ = ḡ (σ(z) − y)/N,  ȳ = −ḡ z/N.
    Shapes:      logits: (...) with N elements, y: same shape → scalar.
    """
    z = float_array(logits, "logits")
    y = _float_target(y, z, "y", "logits")
    in_range(y, "y", 0.0, 1.0)
    return _bce_with_logits(z, y)


_bce = jax.custom_jvp(_loss._bce.__wrapped__)


def _bce_jvp(primals, tangents):
    (y_hat, y), (y_hat_dot, y_dot) = primals, tangents
    y_hat_bar, y_bar = bce_delta(y_hat, y)
    return _bce(y_hat, y), jnp.sum(y_hat_bar * y_hat_dot) + jnp.sum(y_bar * y_dot)


_bce.defjvp(_bce_jvp)


def bce(y_hat, y):
    r"""Mean BCE on probabilities with a hand-written JVP (the twin of ``fbp.bce``).

    JVP:         L̇ = ⟨(−y/ŷ + (1 − y)/(1 − ŷ))/N, ŷ̇⟩ − ⟨(log ŷ − log(1 − ŷ))/N, ẏ⟩.
    Transposed:  the rule of ``fbp.bce``.
    Shapes:      y_hat: (...) with N elements, y: same shape → scalar.
    """
    y_hat = float_array(y_hat, "y_hat")
    y = _float_target(y, y_hat, "y", "y_hat")
    in_range(y_hat, "y_hat", 0.0, 1.0)
    in_range(y, "y", 0.0, 1.0)
    return _bce(y_hat, y)


_sce_labels = jax.custom_jvp(_loss._sce_labels.__wrapped__)


def _sce_labels_jvp(primals, tangents):
    (z, labels), (z_dot, _) = primals, tangents   # integer labels: a float0 tangent, unused
    loss_dot = jnp.sum(softmax_cross_entropy_delta(z, labels) * z_dot)
    return _sce_labels(z, labels), loss_dot


_sce_labels.defjvp(_sce_labels_jvp)

_sce_soft = jax.custom_jvp(_loss._sce_soft.__wrapped__)


def _sce_soft_jvp(primals, tangents):
    (z, t), (z_dot, t_dot) = primals, tangents
    logp = jax.nn.log_softmax(z, axis=-1)
    loss_dot = (jnp.sum(softmax_cross_entropy_delta(z, t) * z_dot)
                - _mean_of_sum(logp * t_dot, _batch_count(z)))
    return _sce_soft(z, t), loss_dot


_sce_soft.defjvp(_sce_soft_jvp)


# with where: the mean over the M = max(Σ where, 1) selected positions

_sce_labels_where = jax.custom_jvp(_ce._sce_labels_where.__wrapped__)


def _sce_labels_where_jvp(primals, tangents):
    (z, labels, w), (z_dot, _, _) = primals, tangents   # labels and mask: float0 tangents
    loss_dot = jnp.sum(softmax_cross_entropy_delta(z, labels, w) * z_dot)
    return _sce_labels_where(z, labels, w), loss_dot


_sce_labels_where.defjvp(_sce_labels_where_jvp)

_sce_soft_where = jax.custom_jvp(_ce._sce_soft_where.__wrapped__)


def _sce_soft_where_jvp(primals, tangents):
    (z, t, w), (z_dot, t_dot, _) = primals, tangents
    logp = jax.nn.log_softmax(z, axis=-1)
    label_term = _ce._masked_mean(jnp.sum(logp * t_dot, axis=-1), w)   # the primal's mean
    loss_dot = jnp.sum(softmax_cross_entropy_delta(z, t, w) * z_dot) - label_term
    return _sce_soft_where(z, t, w), loss_dot


_sce_soft_where.defjvp(_sce_soft_where_jvp)


def softmax_cross_entropy(logits, labels, *, where=None):
    r"""Fused softmax cross-entropy with a hand-written JVP (twin of ``fbp.softmax_cross_entropy``).

    JVP:         L̇ = ⟨(softmax(z) Σ_k t_k − t)/m, ż⟩ − ⟨log softmax(z)/m, ṫ⟩
                 (integer labels: t = onehot(label), and the labels have no tangent).
                 With ``where``: both sums run over the selected positions only and m is
                 M = max(Σ where, 1), as in ``fbp.softmax_cross_entropy``.
    Transposed:  z̄ = ḡ (softmax(z) − t)/m,  t̄ = −ḡ log softmax(z)/m (0 outside ``where``).
    Shapes:      logits: (..., n_classes); labels: ints (...) or floats (..., n_classes);
                 where: bools (...).
    """
    z, labels, w = validate_softmax_cross_entropy(logits, labels, where)
    integer = jnp.issubdtype(labels.dtype, jnp.integer)
    if w is None:
        return _sce_labels(z, labels) if integer else _sce_soft(z, labels)
    return _sce_labels_where(z, labels, w) if integer else _sce_soft_where(z, labels, w)


_mse = jax.custom_jvp(_loss._mse.__wrapped__)


def _mse_jvp(primals, tangents):
    (y_hat, y), (y_hat_dot, y_dot) = primals, tangents
    return _mse(y_hat, y), jnp.sum(mse_delta(y_hat, y) * (y_hat_dot - y_dot))


_mse.defjvp(_mse_jvp)


def mse(y_hat, y):
    r"""Mean squared error with a hand-written JVP (the twin of ``fbp.mse``).

    JVP:         L̇ = ⟨2(ŷ − y)/N, ŷ̇ − ẏ⟩   (∂L/∂y = −∂L/∂ŷ).
    Transposed:  ŷ̄ = ḡ 2(ŷ − y)/N,  ȳ = −ŷ̄.
    Shapes:      y_hat: (...) with N elements, y: same shape → scalar.
    """
    y_hat = float_array(y_hat, "y_hat")
    y = _float_target(y, y_hat, "y", "y_hat")
    return _mse(y_hat, y)


# ── the forward-mode MLP ──

ACTIVATIONS = {"sigmoid": sigmoid, "tanh": tanh, "relu": relu, "leaky_relu": leaky_relu,
               "gelu": gelu}
LOSSES = {"bce_with_logits": bce_with_logits, "softmax_cross_entropy": softmax_cross_entropy,
          "mse": mse}


def mlp(params, x, activation="sigmoid"):
    r"""``fbp.mlp`` built from the twins: a_l = σ(W_l a_{l−1} + b_l), last layer linear.

    Every op carries a hand-written JVP, so ``jax.jvp``/``jax.jacfwd`` run forward mode
    through fbp's own rules (and ``jax.grad`` reverse mode by transposing them).

    Args:
      params: list of ``Dense`` from ``fbp.init_mlp``.
      x: floating array ``(..., n_0)``.
      activation: a name (``"sigmoid"``, ``"tanh"``, ``"relu"``, ``"leaky_relu"``,
        ``"gelu"``) — resolved to the twin in this module — or any activation function.
    Returns:
      the logits, ``(..., n_L)``.
    """
    if _check_params(params) is not None:
        raise ValueError("fbp.forward.mlp has plain Dense layers only (the norm layers have "
                         "no forward-mode twin); use fbp.mlp for a normalised network.")
    act = _resolve(activation, "activation", ACTIVATIONS)
    a = x
    for layer in params[:-1]:
        a = act(dense(layer, a))
    return dense(params[-1], a)


def mlp_loss(params, x, y, activation="sigmoid", loss="bce_with_logits"):
    """``loss(mlp(params, x, activation), y)`` through the twins (names resolve to twins)."""
    return _resolve(loss, "loss", LOSSES)(mlp(params, x, activation), y)
