r"""Normalisation and residual blocks (tutorial §7.2), each with a hand-derived backward pass.

The tutorial names residual connections and BatchNorm as cures for vanishing gradients;
here each is an op like any other: a ``jax.custom_vjp`` whose rule is derived in its
docstring.  The batch and layer rules share one helper, ``_normalise_vjp``: both are
x̂ = (x − μ)/σ over some axis, and only the axis differs.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fbp._validate import finite_scalar, float_array, in_range, same_dtype


class BatchNormParams(NamedTuple):
    """Learned scale ``gamma`` and shift ``beta`` of batch_norm, each of shape ``(n,)``."""

    gamma: jax.Array
    beta: jax.Array


class BatchNormState(NamedTuple):
    """Running ``mean`` and ``var`` (biased) of batch_norm, each of shape ``(n,)``; no gradient."""

    mean: jax.Array
    var: jax.Array


class LayerNormParams(NamedTuple):
    """Learned scale ``gamma`` and shift ``beta`` of layer_norm, each of shape ``(n,)``."""

    gamma: jax.Array
    beta: jax.Array


def init_batch_norm(n: int, dtype=jnp.float32) -> tuple[BatchNormParams, BatchNormState]:
    """``(BatchNormParams(γ=1, β=0), BatchNormState(mean=0, var=1))`` for ``n`` features."""
    _check_width(n, dtype)
    ones, zeros = jnp.ones((n,), dtype), jnp.zeros((n,), dtype)
    return BatchNormParams(ones, zeros), BatchNormState(zeros, ones)


def init_layer_norm(n: int, dtype=jnp.float32) -> LayerNormParams:
    """``LayerNormParams(γ=1, β=0)`` for ``n`` features."""
    _check_width(n, dtype)
    return LayerNormParams(jnp.ones((n,), dtype), jnp.zeros((n,), dtype))


def _check_width(n, dtype) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int (the number of features); got {n!r}.")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype; got {dtype}.")


def _normalise_vjp(x_hat, inv_sigma, x_hat_bar, axis):
    r"""x̄ = (1/σ)(x̂̄ − mean(x̂̄) − x̂ ⊙ mean(x̂̄ ⊙ x̂)), the means over ``axis``: the VJP of
    x̂ = (x − μ)/σ with μ and σ² = mean((x − μ)²) + ε taken over that same axis."""
    mean = partial(jnp.mean, axis=axis, keepdims=True)
    return inv_sigma * (x_hat_bar - mean(x_hat_bar) - x_hat * mean(x_hat_bar * x_hat))


def _moments(x2):
    """Per-column mean and biased variance of a 2-D ``(m, n)`` array (two passes, stable)."""
    mu = jnp.mean(x2, axis=0, keepdims=True)
    return mu, jnp.mean((x2 - mu) ** 2, axis=0, keepdims=True)


# ── batch_norm, training mode: batch statistics ──

@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _batch_norm_train(params, x2, eps):
    gamma, beta = params
    mu, var = _moments(x2)
    return gamma[None] * ((x2 - mu) / jnp.sqrt(var + eps)) + beta[None]


def _batch_norm_train_fwd(params, x2, eps):
    gamma, beta = params
    mu, var = _moments(x2)
    inv_sigma = 1 / jnp.sqrt(var + eps)                  # (1, n)
    x_hat = (x2 - mu) * inv_sigma                        # (m, n)
    return gamma[None] * x_hat + beta[None], (x_hat, inv_sigma, gamma)


def _batch_norm_train_bwd(eps, res, g):
    x_hat, inv_sigma, gamma = res
    gamma_bar = jnp.sum(g * x_hat, axis=0)               # Σ ḡ ⊙ x̂
    beta_bar = jnp.sum(g, axis=0)                        # Σ ḡ
    x_bar = _normalise_vjp(x_hat, inv_sigma, g * gamma[None], axis=0)
    return BatchNormParams(gamma_bar, beta_bar), x_bar


_batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


# ── batch_norm, evaluation mode: running statistics (an affine map) ──

@partial(jax.custom_vjp, nondiff_argnums=(4,))
def _batch_norm_eval(params, x2, mean, var, eps):
    gamma, beta = params
    return gamma[None] * ((x2 - mean[None]) / jnp.sqrt(var[None] + eps)) + beta[None]


def _batch_norm_eval_fwd(params, x2, mean, var, eps):
    gamma, beta = params
    inv_sigma = 1 / jnp.sqrt(var + eps)                  # (n,)
    x_hat = (x2 - mean[None]) * inv_sigma[None]
    return gamma[None] * x_hat + beta[None], (x_hat, inv_sigma, gamma)


def _batch_norm_eval_bwd(eps, res, g):
    x_hat, inv_sigma, gamma = res
    gamma_bar = jnp.sum(g * x_hat, axis=0)
    beta_bar = jnp.sum(g, axis=0)
    x_bar = g * (gamma * inv_sigma)[None]
    mean_bar = -gamma * inv_sigma * beta_bar             # ∂y/∂μ = −γ/σ
    var_bar = -0.5 * gamma * inv_sigma**2 * gamma_bar    # ∂y/∂v = −½ γ x̂ / σ²
    return BatchNormParams(gamma_bar, beta_bar), x_bar, mean_bar, var_bar


_batch_norm_eval.defvjp(_batch_norm_eval_fwd, _batch_norm_eval_bwd)


def _check_norm_params(params, x, cls, op: str):
    if not (isinstance(params, tuple) and len(params) == 2):
        raise TypeError(f"params must be {cls.__name__}(gamma, beta) for {op}; "
                        f"got {type(params).__name__}.")
    gamma = float_array(params[0], "gamma")
    beta = float_array(params[1], "beta")
    n = x.shape[-1]
    for name, v in (("gamma", gamma), ("beta", beta)):
        if v.shape != (n,):
            raise ValueError(f"{name} must have shape (n,) = ({n},), one entry per feature of x "
                             f"(x is {x.shape}, features last); got {name} of shape {v.shape}.")
    same_dtype(x=x, gamma=gamma, beta=beta)
    return cls(gamma, beta)


def batch_norm(params: BatchNormParams, x, state: BatchNormState | None = None, *,
               training: bool = True, momentum: float = 0.9, eps: float = 1e-5):
    r"""Batch normalisation over every leading axis of ``x`` (tutorial §7.2, Ioffe & Szegedy 2015).

    Forward, training (per feature, the m = x.size / n rows of the batch):
        μ = (1/m) Σᵢ xᵢ,   v = (1/m) Σᵢ (xᵢ − μ)²  (the biased batch variance),
        σ = √(v + ε),   x̂ = (x − μ)/σ,   y = γ ⊙ x̂ + β.
      The new state is  mean ← momentum·mean + (1 − momentum)·μ,
                        var  ← momentum·var  + (1 − momentum)·v   (v biased, as used above),
      computed from stop_gradient(x): the running state carries no gradient.
    Forward, evaluation:  y = γ ⊙ (x − mean)/√(var + ε) + β with the running state, an affine
      map of x; the state is returned unchanged.

    VJP, training, derived per feature column (x̂̄ is the cotangent reaching x̂):
      1. y = γ x̂ + β         ⇒  γ̄ = Σᵢ ḡᵢ x̂ᵢ,  β̄ = Σᵢ ḡᵢ,  x̂̄ᵢ = γ ḡᵢ.
      2. ∂μ/∂x_k = 1/m;  ∂v/∂x_k = (2/m) Σᵢ (xᵢ − μ)(δᵢₖ − 1/m) = (2/m)(x_k − μ)
         (the 1/m term vanishes because Σᵢ (xᵢ − μ) = 0), so ∂σ/∂x_k = x̂_k / m.
      3. x̂ᵢ = (xᵢ − μ)/σ  ⇒  ∂x̂ᵢ/∂x_k = (δᵢₖ − 1/m)/σ − (xᵢ − μ)/σ² · x̂_k/m
                                        = (1/σ)(δᵢₖ − 1/m − x̂ᵢ x̂_k / m).
      4. x̄_k = Σᵢ x̂̄ᵢ ∂x̂ᵢ/∂x_k = (1/σ)(x̂̄_k − mean(x̂̄) − x̂_k mean(x̂̄ ⊙ x̂)), and with x̂̄ = γḡ:
            x̄ = (γ/σ) ⊙ (ḡ − mean(ḡ) − x̂ ⊙ mean(ḡ ⊙ x̂)),   the means over the batch.
      No autodiff runs through μ or v: the rule is these three lines.
    VJP, evaluation:  x̄ = ḡ γ/σ,  γ̄ = Σ ḡ ⊙ x̂,  β̄ = Σ ḡ.  The rule also has the state's
      terms, mean̄ = −γ β̄/σ and var̄ = −½ γ γ̄/σ², but the state enters through
      stop_gradient, so no gradient reaches it in either mode.
    Saves:    x̂ (m·n), 1/σ and γ (n each), not x: a third of what autodiff keeps.

    A batch of one is refused in training mode: with m = 1, v = 0, x̂ = 0 and y = β whatever
    x is, so no gradient reaches x or γ, and the running variance is pulled towards 0 — a
    silent failure, which is why this raises (as PyTorch does).  The usual way to get
    there is ``jax.vmap`` over examples, which hands batch_norm one example at a time;
    batch statistics need the whole batch, so call batch_norm on it (vmap over other axes,
    e.g. over independent models each with its own batch, is fine).  A constant column
    (v = 0 over a real batch) is fine: σ = √ε, x̂ = 0 and every gradient stays finite.

    Args:
      params: ``BatchNormParams(gamma: (n,), beta: (n,))``.
      x: floating array ``(..., n)``; in training at least 2 rows over the leading axes.
      state: ``BatchNormState(mean: (n,), var: (n,))``; ``None`` means the initial state
        (mean 0, var 1) in training, and is an error in evaluation.
      training: batch statistics (True) or the running ones (False).
      momentum: in [0, 1], the weight the old running statistics keep.
      eps: finite, > 0, added to the variance.
    Returns:
      ``(y, new_state)``: y like x, new_state a ``BatchNormState``.
    """
    if not isinstance(training, bool):
        raise TypeError(f"training must be True or False; got {training!r}.")
    momentum = finite_scalar(momentum, "momentum", low=0.0, high=1.0)
    eps = finite_scalar(eps, "eps", low=0.0, low_open=True)
    x = float_array(x, "x", min_rank=1)
    gamma, beta = _check_norm_params(params, x, BatchNormParams, "batch_norm")
    n = x.shape[-1]
    if state is None:
        if not training:
            raise ValueError("batch_norm(training=False) needs state=BatchNormState(mean, var), "
                             "the running statistics from training; got state=None.")
        state = BatchNormState(jnp.zeros((n,), x.dtype), jnp.ones((n,), x.dtype))
    if not (isinstance(state, tuple) and len(state) == 2):
        raise TypeError(f"state must be BatchNormState(mean, var); got {type(state).__name__}.")
    mean, var = (float_array(v, f"state.{k}") for k, v in zip(("mean", "var"), state, strict=True))
    for name, v in (("state.mean", mean), ("state.var", var)):
        if v.shape != (n,):
            raise ValueError(f"{name} must have shape (n,) = ({n},) to match x {x.shape}; "
                             f"got {v.shape}.")
    same_dtype(x=x, mean=mean, var=var)
    in_range(var, "state.var", 0.0, math.inf)
    mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
    x2 = x.reshape(-1, n)
    if not training:
        y = _batch_norm_eval(BatchNormParams(gamma, beta), x2, mean, var, eps)
        return y.reshape(x.shape), BatchNormState(mean, var)
    if x2.shape[0] < 2:
        raise ValueError(
            f"batch_norm(training=True) normalises each feature over the batch and needs at "
            f"least 2 rows; got x of shape {x.shape}, a batch of one (its variance is 0, so "
            f"y = beta whatever x is and no gradient reaches x). If this call is inside "
            f"jax.vmap over examples, call batch_norm on the whole batch (m, n) instead; "
            f"otherwise use training=False (running statistics) or layer_norm, which "
            f"normalises each example on its own."
        )
    y = _batch_norm_train(BatchNormParams(gamma, beta), x2, eps)
    mu, v = _moments(jax.lax.stop_gradient(x2))
    new_state = BatchNormState(momentum * mean + (1 - momentum) * mu[0],
                               momentum * var + (1 - momentum) * v[0])
    return y.reshape(x.shape), new_state


# ── layer_norm: statistics over the features of each example ──

@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _layer_norm(params, x, eps):
    gamma, beta = params
    mu = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean((x - mu) ** 2, axis=-1, keepdims=True)
    return _row(gamma, x) * ((x - mu) / jnp.sqrt(var + eps)) + _row(beta, x)


def _layer_norm_fwd(params, x, eps):
    gamma, beta = params
    mu = jnp.mean(x, axis=-1, keepdims=True)
    inv_sigma = 1 / jnp.sqrt(jnp.mean((x - mu) ** 2, axis=-1, keepdims=True) + eps)  # (..., 1)
    x_hat = (x - mu) * inv_sigma
    return _row(gamma, x) * x_hat + _row(beta, x), (x_hat, inv_sigma, gamma)


def _layer_norm_bwd(eps, res, g):
    x_hat, inv_sigma, gamma = res
    n = x_hat.shape[-1]
    gamma_bar = jnp.sum((g * x_hat).reshape(-1, n), axis=0)   # Σ over examples of ḡ ⊙ x̂
    beta_bar = jnp.sum(g.reshape(-1, n), axis=0)              # Σ over examples of ḡ
    x_bar = _normalise_vjp(x_hat, inv_sigma, g * _row(gamma, g), axis=-1)
    return LayerNormParams(gamma_bar, beta_bar), x_bar


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
