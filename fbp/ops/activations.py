r"""Activations (tutorial §8), each with its reverse-mode rule written by hand.

An activation is ``f(z) -> h``, elementwise (softmax: over the last axis), for ``z``
of any shape.  The derivative helpers ``*_grad`` hold σ' once; the VJP rules here,
``fbp.backprop`` and the forward-mode twins in ``fbp.forward`` all call them.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax.scipy.special import erf

from fbp._validate import finite_scalar, float_array

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_C = 0.044715


# ── σ' written from what the forward keeps (shared by every rule that needs it) ──

def sigmoid_grad(h):
    """σ'(z) from the output h = σ(z):  h (1 − h)."""
    return h * (1 - h)


def tanh_grad(h):
    """tanh'(z) from the output h = tanh(z):  1 − h²."""
    return 1 - h * h


def relu_grad(z):
    """ReLU'(z) = 1 if z > 0 else 0 (0 at z = 0, the subgradient JAX uses too)."""
    return (z > 0).astype(z.dtype)


def leaky_relu_grad(z, alpha):
    """LeakyReLU'(z) = 1 if z > 0 else α."""
    return jnp.where(z > 0, jnp.ones((), z.dtype), jnp.asarray(alpha, z.dtype))


def gelu_grad(z):
    """GELU'(z) = Φ(z) + z φ(z), exactly (erf form)."""
    Phi = 0.5 * (1 + erf(z / math.sqrt(2.0)))
    phi = _INV_SQRT_2PI * jnp.exp(-0.5 * z * z)
    return Phi + z * phi


def gelu_tanh_grad(z):
    """Derivative of the tanh form 0.5 z (1 + tanh(u)), u = √(2/π)(z + 0.044715 z³)."""
    t = jnp.tanh(_SQRT_2_OVER_PI * (z + _GELU_C * z**3))
    du = _SQRT_2_OVER_PI * (1 + 3 * _GELU_C * z * z)
    return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * du


def softmax_vjp(s, g):
    """z̄ = s ⊙ (ḡ − ⟨ḡ, s⟩) for s = softmax(z); the Jacobian diag(s) − s sᵀ never formed.

    The Jacobian is symmetric, so the same line is also the JVP ż ↦ ṡ.
    """
    return s * (g - jnp.sum(g * s, axis=-1, keepdims=True))


# ── sigmoid ──

@jax.custom_vjp
def _sigmoid(z):
    return jax.nn.sigmoid(z)


def _sigmoid_fwd(z):
    h = jax.nn.sigmoid(z)
    return h, h  # res: the output alone is enough


def _sigmoid_bwd(h, g):
    return (g * sigmoid_grad(h),)


_sigmoid.defvjp(_sigmoid_fwd, _sigmoid_bwd)


def sigmoid(z):
    r"""Logistic sigmoid, elementwise (tutorial §8.1).

    Forward:  h = σ(z) = 1 / (1 + e^{−z}),  evaluated stably for |z| up to the float range.
    VJP:      z̄ = ḡ ⊙ h ⊙ (1 − h)   since σ'(z) = σ(z)(1 − σ(z)).
    Saves:    h (the output), not z.

    Args:
      z: floating array of any shape ``(...)``.
    Returns:
      h, same shape and dtype as ``z``.
    """
    return _sigmoid(float_array(z, "z"))


# ── tanh ──

@jax.custom_vjp
def _tanh(z):
    return jnp.tanh(z)


def _tanh_fwd(z):
    h = jnp.tanh(z)
    return h, h


def _tanh_bwd(h, g):
    return (g * tanh_grad(h),)


_tanh.defvjp(_tanh_fwd, _tanh_bwd)


def tanh(z):
    r"""Hyperbolic tangent, elementwise (tutorial §8.2).

    Forward:  h = tanh(z) = (e^z − e^{−z}) / (e^z + e^{−z}).
    VJP:      z̄ = ḡ ⊙ (1 − h²)   since tanh'(z) = 1 − tanh²(z).
    Saves:    h (the output).

    Args:
      z: floating array of any shape ``(...)``.
    Returns:
      h, same shape and dtype as ``z``.
    """
    return _tanh(float_array(z, "z"))


# ── relu ──

@jax.custom_vjp
def _relu(z):
    return jnp.maximum(z, 0)


def _relu_fwd(z):
    return jnp.maximum(z, 0), z > 0  # res: a boolean mask, 1 byte per element


def _relu_bwd(mask, g):
    return (jnp.where(mask, g, jnp.zeros_like(g)),)


_relu.defvjp(_relu_fwd, _relu_bwd)


def relu(z):
    r"""Rectified linear unit, elementwise (tutorial §8.3).

    Forward:  h = max(0, z).
    VJP:      z̄ = ḡ ⊙ 1[z > 0].  The derivative at exactly z = 0 is taken as 0
              (the tutorial's "0, z ≤ 0", and JAX's own choice).
    Saves:    the boolean mask z > 0 (1 byte per element instead of the input).

    Args:
      z: floating array of any shape ``(...)``.
    Returns:
      h, same shape and dtype as ``z``.
    """
    return _relu(float_array(z, "z"))


# ── leaky relu ──

@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _leaky_relu(z, alpha):
    return jnp.where(z > 0, z, alpha * z)


def _leaky_relu_fwd(z, alpha):
    return jnp.where(z > 0, z, alpha * z), z > 0


def _leaky_relu_bwd(alpha, mask, g):
    return (jnp.where(mask, g, alpha * g),)


_leaky_relu.defvjp(_leaky_relu_fwd, _leaky_relu_bwd)


def leaky_relu(z, alpha: float = 0.01):
    r"""Leaky ReLU, elementwise (tutorial §8.4).

    Forward:  h = z if z > 0 else α z.
    VJP:      z̄ = ḡ ⊙ (1 if z > 0 else α)   (α at z = 0).
    Saves:    the boolean mask z > 0.

    Args:
      z: floating array of any shape ``(...)``.
      alpha: the negative slope, a finite Python number (a hyperparameter, not trained).
    Returns:
      h, same shape and dtype as ``z``.
    """
    return _leaky_relu(float_array(z, "z"), finite_scalar(alpha, "alpha"))


# ── gelu ──

@jax.custom_vjp
def _gelu(z):
    return 0.5 * z * (1 + erf(z / math.sqrt(2.0)))


def _gelu_fwd(z):
    # the primal from plain jnp, not _gelu(z) again: a custom_vjp inside the fwd has no JVP,
    # so forward-over-reverse (jax.hessian, Hessian-vector products) would fail
    return 0.5 * z * (1 + erf(z / math.sqrt(2.0))), z


def _gelu_bwd(z, g):
    return (g * gelu_grad(z),)


_gelu.defvjp(_gelu_fwd, _gelu_bwd)


@jax.custom_vjp
def _gelu_tanh(z):
    return 0.5 * z * (1 + jnp.tanh(_SQRT_2_OVER_PI * (z + _GELU_C * z**3)))


def _gelu_tanh_fwd(z):
    return 0.5 * z * (1 + jnp.tanh(_SQRT_2_OVER_PI * (z + _GELU_C * z**3))), z   # as _gelu_fwd


def _gelu_tanh_bwd(z, g):
    return (g * gelu_tanh_grad(z),)


_gelu_tanh.defvjp(_gelu_tanh_fwd, _gelu_tanh_bwd)


def gelu(z, approximate: bool = False):
    r"""Gaussian error linear unit, elementwise (tutorial §8.5).

    Forward (exact):   h = z Φ(z),  Φ the standard normal CDF = ½(1 + erf(z/√2)).
    VJP (exact):       z̄ = ḡ ⊙ (Φ(z) + z φ(z)),  φ(z) = e^{−z²/2}/√(2π)  (product rule;
                       the tutorial's "≈" is in fact an equality).
    Forward (tanh):    h = ½ z (1 + tanh u),  u = √(2/π)(z + 0.044715 z³).
    VJP (tanh):        z̄ = ḡ ⊙ [½(1 + tanh u) + ½ z (1 − tanh² u) √(2/π)(1 + 3·0.044715 z²)].
    Saves:             z (the derivative needs the input).

    Args:
      z: floating array of any shape ``(...)``.
      approximate: use the tanh form (as in GPT-2/BERT) instead of the exact erf form.
    Returns:
      h, same shape and dtype as ``z``.
    """
    if not isinstance(approximate, bool):
        raise TypeError(f"approximate must be True or False; got {approximate!r}.")
    z = float_array(z, "z")
    return _gelu_tanh(z) if approximate else _gelu(z)


# ── softmax ──

@jax.custom_vjp
def _softmax(z):
    return jax.nn.softmax(z, axis=-1)


def _softmax_fwd(z):
    s = jax.nn.softmax(z, axis=-1)
    return s, s


def _softmax_bwd(s, g):
    return (softmax_vjp(s, g),)


_softmax.defvjp(_softmax_fwd, _softmax_bwd)


def softmax(z):
    r"""Softmax over the last axis.

    Forward:  s_i = e^{z_i − max z} / Σ_j e^{z_j − max z}   (shifted: no overflow).
    VJP:      z̄ = s ⊙ (ḡ − ⟨ḡ, s⟩)   since ∂s_i/∂z_j = s_i(δ_ij − s_j); the Jacobian
              diag(s) − s sᵀ is never materialised.
    Saves:    s (the output).

    Args:
      z: floating array of shape ``(..., n)`` with n ≥ 1.
    Returns:
      s, same shape as ``z``; each row along the last axis sums to 1.
    """
    return _softmax(float_array(z, "z", min_rank=1))


# σ'(z, h) for each elementwise activation, for the δ recursion in fbp.backprop.
DERIVATIVES = {
    sigmoid: lambda z, h: sigmoid_grad(h),
    tanh: lambda z, h: tanh_grad(h),
    relu: lambda z, h: relu_grad(z),
    leaky_relu: lambda z, h: leaky_relu_grad(z, 0.01),
    gelu: lambda z, h: gelu_grad(z),
}

ACTIVATIONS = {
    "sigmoid": sigmoid,
    "tanh": tanh,
    "relu": relu,
    "leaky_relu": leaky_relu,
    "gelu": gelu,
}
