r"""Batch normalisation (tutorial §7.2, Ioffe & Szegedy 2015) with a hand-derived backward pass.

The tutorial names BatchNorm as a cure for vanishing gradients; here it is an op like any
other: a ``jax.custom_vjp`` whose rule is derived in its docstring.  ``_normalise_vjp`` is
shared with ``layer_norm`` (``fbp.ops.norms``): both are x̂ = (x − μ)/σ over some axis, and
only the axis differs.  ``fbp.norms`` re-exports every public name here.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fbp._validate import finite_scalar, float_array, in_range, positive_int, same_dtype
from fbp.ops._scale import _acc


class BatchNormParams(NamedTuple):
    """Learned scale ``gamma`` and shift ``beta`` of batch_norm, each of shape ``(n,)``."""

    gamma: jax.Array
    beta: jax.Array


class BatchNormState(NamedTuple):
    """Running ``mean`` and ``var`` (biased) of batch_norm, each of shape ``(n,)``; no gradient."""

    mean: jax.Array
    var: jax.Array


def init_batch_norm(n: int, dtype=None) -> tuple[BatchNormParams, BatchNormState]:
    """``(BatchNormParams(γ=1, β=0), BatchNormState(mean=0, var=1))`` for ``n`` features.

    ``dtype``: a floating dtype; default JAX's default float (float32, or float64 under x64),
    the default of ``init_dense`` and ``init_mlp`` too, so the layers of one network agree.
    """
    n, dtype = _check_width(n, dtype)
    ones, zeros = jnp.ones((n,), dtype), jnp.zeros((n,), dtype)
    return BatchNormParams(ones, zeros), BatchNormState(zeros, ones)


def _check_width(n, dtype):
    """``(n, dtype)``: n a positive integer of any integer type, dtype floating (None: JAX's
    default float, as ``init_dense`` uses)."""
    n = positive_int(n, "n", " (the number of features)")
    dtype = jnp.result_type(float) if dtype is None else dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype; got {dtype}.")
    return n, dtype

def _normalise_vjp(x_hat, inv_sigma, x_hat_bar, axis):
    r"""x̄ = (1/σ)(x̂̄ − mean(x̂̄) − x̂ ⊙ mean(x̂̄ ⊙ x̂)), the means over ``axis``: the VJP of
    x̂ = (x − μ)/σ with μ and σ² = mean((x − μ)²) + ε taken over that same axis.  Computed in
    the dtype of ``inv_sigma`` (``_standardise``'s float32 or wider); the caller casts back."""
    acc = inv_sigma.dtype
    x_hat, x_hat_bar = x_hat.astype(acc), x_hat_bar.astype(acc)
    mean = partial(jnp.mean, axis=axis, keepdims=True)
    return inv_sigma * (x_hat_bar - mean(x_hat_bar) - x_hat * mean(x_hat_bar * x_hat))


def _moments(x, axis=0):
    """Mean and biased variance over ``axis`` (two passes, stable), in float32 or wider
    (``_acc``): in float16 (x − μ)² is inf from |x − μ| ≈ 256 on (256² > 65,504), which
    would make σ = inf and x̂ = 0 although x̂ itself is perfectly representable."""
    x = x.astype(_acc(x.dtype))
    mu = jnp.mean(x, axis=axis, keepdims=True)
    return mu, jnp.mean((x - mu) ** 2, axis=axis, keepdims=True)


def _standardise(x, axis, eps):
    """``(x̂, 1/σ)`` over ``axis``, both in ``_moments``' float32 or wider."""
    mu, var = _moments(x, axis)
    inv_sigma = 1 / jnp.sqrt(var + eps)
    return (x.astype(mu.dtype) - mu) * inv_sigma, inv_sigma


def _affine_bars(x_hat, g, axis):
    """``(γ̄, β̄) = (Σ ḡ ⊙ x̂, Σ ḡ)`` over ``axis``, summed in float32 or wider."""
    acc = _acc(g.dtype)
    g = g.astype(acc)
    return jnp.sum(g * x_hat.astype(acc), axis=axis), jnp.sum(g, axis=axis)


# ── batch_norm, training mode: batch statistics ──
# x̂ and y are computed in float32 or wider and cast to x's dtype; x̂ is saved in x's dtype
# (the memory the docstring states), 1/σ in the wider one (n values).

@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _batch_norm_train(params, x2, eps):
    gamma, beta = params
    x_hat, _ = _standardise(x2, 0, eps)
    return (gamma[None] * x_hat + beta[None]).astype(x2.dtype)


def _batch_norm_train_fwd(params, x2, eps):
    gamma, beta = params
    x_hat, inv_sigma = _standardise(x2, 0, eps)          # (m, n), (1, n)
    y = (gamma[None] * x_hat + beta[None]).astype(x2.dtype)
    return y, (x_hat.astype(x2.dtype), inv_sigma, gamma)


def _batch_norm_train_bwd(eps, res, g):
    x_hat, inv_sigma, gamma = res
    gamma_bar, beta_bar = _affine_bars(x_hat, g, 0)      # Σ ḡ ⊙ x̂,  Σ ḡ
    x_bar = _normalise_vjp(x_hat, inv_sigma, g * gamma[None], axis=0)
    dtype = g.dtype
    return (BatchNormParams(gamma_bar.astype(dtype), beta_bar.astype(dtype)),
            x_bar.astype(dtype))


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
    init = "init_batch_norm" if cls is BatchNormParams else "init_layer_norm"
    same_dtype(x=x, gamma=gamma, beta=beta,
               fix=f"Build the params with {init}({n}, dtype=x.dtype), or cast x: "
                   f"x.astype(jnp.{gamma.dtype}).")
    return cls(gamma, beta)


def batch_norm(params: BatchNormParams, x, state: BatchNormState | None = None, *,
               training: bool = True, momentum: float = 0.9, eps: float = 1e-5,
               unbiased_var: bool = False):
    r"""Batch normalisation over every leading axis of ``x`` (tutorial §7.2, Ioffe & Szegedy 2015).

    Forward, training (per feature, the m = x.size / n rows of the batch):
        μ = (1/m) Σᵢ xᵢ,   v = (1/m) Σᵢ (xᵢ − μ)²  (the biased batch variance),
        σ = √(v + ε),   x̂ = (x − μ)/σ,   y = γ ⊙ x̂ + β.
      The new state is  mean ← momentum·mean + (1 − momentum)·μ,
                        var  ← momentum·var  + (1 − momentum)·v_run,
      v_run = v (default) or the unbiased m/(m − 1)·v with ``unbiased_var=True``; both
      computed from stop_gradient(x): the running state carries no gradient.  (y always
      uses the biased v, as every framework does.)
    Forward, evaluation:  y = γ ⊙ (x − mean)/√(var + ε) + β with the running state, an affine
      map of x; the state is returned unchanged.

    Conventions, for porting (the same model gives another eval loss if they are mixed up):
      fbp:      ``momentum`` weights the OLD running value (default 0.9); v_run biased.
      Flax:     ``nn.BatchNorm(momentum=0.99)`` the same: momentum weights the old value,
                biased variance.  fbp's ``momentum=m`` is Flax's ``momentum=m``.
      PyTorch:  ``nn.BatchNorm1d(momentum=0.1)`` weights the NEW batch value,
                running = (1 − p)·running + p·batch, and averages the UNBIASED variance.
                PyTorch's ``momentum=p`` is fbp's ``momentum=1 − p, unbiased_var=True``
                (PyTorch's default p = 0.1 is fbp's default momentum 0.9).
      ε is added to the variance inside the square root in all three (default 1e-5 here and
      in PyTorch; Flax's default is 1e-5 as well).

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
    e.g. over independent models each with its own batch, is fine).  An empty batch (m = 0)
    has no statistics at all and is refused too.  A constant column (v = 0 over a real
    batch) is fine: σ = √ε, x̂ = 0 and every gradient stays finite.

    Args:
      params: ``BatchNormParams(gamma: (n,), beta: (n,))``.
      x: floating array ``(..., n)``; in training at least 2 rows over the leading axes.
      state: ``BatchNormState(mean: (n,), var: (n,))``; ``None`` means the initial state
        (mean 0, var 1) in training, and is an error in evaluation.
      training: batch statistics (True) or the running ones (False).
      momentum: in [0, 1], the weight the old running statistics keep.
      eps: finite, > 0, added to the variance.
      unbiased_var: average the unbiased batch variance m/(m − 1)·v into the running var
        (PyTorch's convention) instead of the biased v (fbp's and Flax's).
    Returns:
      ``(y, new_state)``: y like x, new_state a ``BatchNormState``.
    """
    for name, flag in (("training", training), ("unbiased_var", unbiased_var)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False; got {flag!r}.")
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
    same_dtype(x=x, mean=mean, var=var,
               fix=f"Build the state with init_batch_norm({n}, dtype=x.dtype).")
    in_range(var, "state.var", 0.0, math.inf)
    mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
    x2 = x.reshape(math.prod(x.shape[:-1]), n)
    if not training:
        y = _batch_norm_eval(BatchNormParams(gamma, beta), x2, mean, var, eps)
        return y.reshape(x.shape), BatchNormState(mean, var)
    m = x2.shape[0]
    if m < 2:
        what = ("an empty batch (0 rows: there is no mean or variance to normalise with)"
                if m == 0 else "a batch of one (its variance is 0, so y = beta whatever x is "
                "and no gradient reaches x)")
        raise ValueError(
            f"batch_norm(training=True) normalises each feature over the batch and needs at "
            f"least 2 rows; got x of shape {x.shape}, {what}. If this call is inside "
            f"jax.vmap over examples, call batch_norm on the whole batch (m, n) instead; "
            f"otherwise use training=False (running statistics) or layer_norm, which "
            f"normalises each example on its own."
        )
    y = _batch_norm_train(BatchNormParams(gamma, beta), x2, eps)
    mu, v = _moments(jax.lax.stop_gradient(x2))
    if unbiased_var:
        v = v * (m / (m - 1))
    new_state = BatchNormState((momentum * mean + (1 - momentum) * mu[0]).astype(x.dtype),
                               (momentum * var + (1 - momentum) * v[0]).astype(x.dtype))
    return y.reshape(x.shape), new_state
