r"""Layer normalisation and residual blocks (tutorial §7.2), each with a hand-derived backward pass.

The tutorial names residual connections and BatchNorm as cures for vanishing gradients;
here each is an op like any other: a ``jax.custom_vjp`` whose rule is derived in its
docstring.  Batch normalisation lives in ``fbp.ops.batch_norm`` (re-exported here, so
``fbp.norms.batch_norm`` still works); layer_norm shares its ``_normalise_vjp``: both are
x̂ = (x − μ)/σ over some axis, and only the axis differs.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fbp._validate import finite_scalar, float_array
from fbp.ops.batch_norm import (  # noqa: F401  (re-exported: fbp.norms.batch_norm …)
    BatchNormParams,
    BatchNormState,
    _affine_bars,
    _batch_norm_eval,
    _batch_norm_train,
    _check_norm_params,
    _check_width,
    _moments,
    _normalise_vjp,
    _standardise,
    batch_norm,
    init_batch_norm,
)


class LayerNormParams(NamedTuple):
    """Learned scale ``gamma`` and shift ``beta`` of layer_norm, each of shape ``(n,)``."""

    gamma: jax.Array
    beta: jax.Array


def init_layer_norm(n: int, dtype=None) -> LayerNormParams:
    """``LayerNormParams(γ=1, β=0)`` for ``n`` features; ``dtype`` as in ``init_batch_norm``
    (default JAX's default float, like ``init_dense``)."""
    n, dtype = _check_width(n, dtype)
    return LayerNormParams(jnp.ones((n,), dtype), jnp.zeros((n,), dtype))


# ── layer_norm: statistics over the features of each example ──

@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _layer_norm(params, x, eps):
    gamma, beta = params
    x_hat, _ = _standardise(x, -1, eps)                  # in float32 or wider
    return (_row(gamma, x) * x_hat + _row(beta, x)).astype(x.dtype)


def _layer_norm_fwd(params, x, eps):
    gamma, beta = params
    x_hat, inv_sigma = _standardise(x, -1, eps)          # (..., n), (..., 1)
    y = (_row(gamma, x) * x_hat + _row(beta, x)).astype(x.dtype)
    return y, (x_hat.astype(x.dtype), inv_sigma, gamma)


def _layer_norm_bwd(eps, res, g):
    x_hat, inv_sigma, gamma = res
    n = x_hat.shape[-1]
    gamma_bar, beta_bar = _affine_bars(x_hat.reshape(-1, n), g.reshape(-1, n), 0)  # Σ_examples
    x_bar = _normalise_vjp(x_hat, inv_sigma, g * _row(gamma, g), axis=-1)
    dtype = g.dtype
    return LayerNormParams(gamma_bar.astype(dtype), beta_bar.astype(dtype)), x_bar.astype(dtype)


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def _row(v, like):
    """A per-feature vector ``(n,)`` shaped ``(1, …, 1, n)`` to broadcast against ``like``."""
    return v.reshape((1,) * (like.ndim - 1) + v.shape)


def layer_norm(params: LayerNormParams, x, eps: float = 1e-5):
    r"""Layer normalisation over the last axis of each example (Ba, Kiros & Hinton 2016).

    Forward (per example, over its n features):
        μ = (1/n) Σⱼ xⱼ,   v = (1/n) Σⱼ (xⱼ − μ)²  (biased),   σ = √(v + ε),
        x̂ = (x − μ)/σ,   y = γ ⊙ x̂ + β.
    VJP: the batch-norm derivation of steps 2–4 with the mean taken over the features of one
      example instead of over the batch, and γ varying along that axis, so it stays inside:
        x̂̄ = γ ⊙ ḡ,
        x̄ = (1/σ) (x̂̄ − mean(x̂̄) − x̂ ⊙ mean(x̂̄ ⊙ x̂))   (means over the last axis),
        γ̄ = Σ_examples ḡ ⊙ x̂,   β̄ = Σ_examples ḡ.
    Saves:    x̂, 1/σ (one per example) and γ.

    Each example is normalised on its own, so ``jax.vmap`` over examples gives the same result
    as the batched call.  With n = 1, x̂ = 0: y = β and x̄ = 0 (allowed, and tested).

    Args:
      params: ``LayerNormParams(gamma: (n,), beta: (n,))``.
      x: floating array ``(..., n)``.
      eps: finite, > 0, added to the variance.
    Returns:
      y, same shape and dtype as x.
    """
    eps = finite_scalar(eps, "eps", low=0.0, low_open=True)
    x = float_array(x, "x", min_rank=1)
    return _layer_norm(_check_norm_params(params, x, LayerNormParams, "layer_norm"), x, eps)


# ── residual: y = x + f(params, x) ──

def _skip_add(x, out, has_aux: bool):
    y, aux = out if has_aux else (out, ())
    if not (hasattr(y, "shape") and y.shape == x.shape and y.dtype == x.dtype):
        got = f"{y.shape} {y.dtype}" if hasattr(y, "shape") else type(y).__name__
        raise ValueError(f"residual(f) needs f(params, x) to keep the shape and dtype of x "
                         f"({x.shape} {x.dtype}); got {got}. Use it only on width-preserving "
                         f"blocks (n_out = n_in).")
    return x + y, aux


def _residual_rule(f, has_aux: bool):
    """The custom_vjp of (params, x) ↦ x + f(params, x) for one f (f and has_aux closed over,
    so the rule's arguments are arrays only)."""

    @jax.custom_vjp
    def _residual(params, x):
        return _skip_add(x, f(params, x), has_aux)

    def _residual_fwd(params, x):
        out = jax.vjp(f, params, x, has_aux=has_aux)
        (y, f_vjp, aux) = out if has_aux else (*out, ())
        return _skip_add(x, (y, aux), True), f_vjp   # res: f's own pullback (its saved values)

    def _residual_bwd(f_vjp, g):
        g_y, _ = g                        # aux is stop_gradient'ed by residual: cotangent 0
        params_bar, x_bar = f_vjp(g_y)    # f's own hand-written rules run here
        return params_bar, g_y + x_bar    # x̄ = ḡ + (VJP of f)(ḡ)

    _residual.defvjp(_residual_fwd, _residual_bwd)
    return _residual


def residual(f, *, has_aux: bool = False):
    r"""The residual block of ``f``:  ``(params, x) ↦ x + f(params, x)``  (He et al. 2016).

    ``f(params, x) -> y`` must keep the shape of x (a width-preserving block).
    VJP:  by the chain rule for the sum,
        x̄ = ḡ + J_f(x)ᵀ ḡ,   params̄ = J_f(params)ᵀ ḡ,
      where the second terms are f's own VJP (``jax.vjp`` of f, so f's hand-written rules run).
    Why the gradient survives: through L blocks the Jacobian is Πₗ (I + J_fₗ), not Πₗ J_fₗ.
      A plain sigmoid stack multiplies L factors W σ'(z) with σ' ≤ 1/4, which shrinks like
      (1/4)^L (tutorial §7.2); here the product expands to I + Σₗ J_fₗ + …, and the I term
      carries ḡ from the loss to the first layer unchanged however small every J_fₗ is.
    Saves:    f's pullback from ``jax.vjp`` (whatever f's own rules save).

    Everything f is differentiated with respect to must come in through ``params`` or ``x``.
    f may close over constants and values traced by ``jit``, but not over a value that an
    outer ``jax.grad`` differentiates (JAX raises UnexpectedTracerError): pass it in params.

    Args:
      f: a function ``f(params, x) -> y`` with y shaped like x; with ``has_aux=True``
        ``f(params, x) -> (y, aux)``, aux returned alongside and carrying no gradient
        (e.g. a batch-norm state).
    Returns:
      the block ``g(params, x)``, returning x + f(params, x) (and aux with has_aux).
    """
    if not callable(f):
        raise TypeError(f"residual needs a function f(params, x) -> y; got {type(f).__name__}.")
    if not isinstance(has_aux, bool):
        raise TypeError(f"has_aux must be True or False; got {has_aux!r}.")

    rule = _residual_rule(f, has_aux)

    def block(params, x):
        x = float_array(x, "x", min_rank=1)
        y, aux = rule(params, x)
        return (y, jax.lax.stop_gradient(aux)) if has_aux else y

    return block
