r"""The dense (fully connected) layer and its initialisers (tutorial §5, §7.1)."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fbp._validate import float_array, one_of, positive_int, prng_key, same_dtype


class Dense(NamedTuple):
    """Dense-layer parameters: ``W`` of shape ``(n_out, n_in)``, ``b`` of shape ``(n_out,)``."""

    W: jax.Array
    b: jax.Array


_SCHEMES = ("he", "xavier")


def init_dense(key, n_in: int, n_out: int, scheme: str = "he", dtype=None) -> Dense:
    r"""Random ``Dense(W, b)`` with ``b = 0``.

    ``"he"``:      W ~ N(0, 1) · √(2 / n_in)            (the tutorial's ``randn * sqrt(2/n_in)``;
                   keeps the variance of ReLU activations constant with depth).
    ``"xavier"``:  W ~ N(0, 1) · √(2 / (n_in + n_out))  (Glorot; for tanh/sigmoid).

    Args:
      key: a ``jax.random`` key (``jax.random.key(0)`` or ``jax.random.PRNGKey(0)``).
      n_in, n_out: positive layer widths (any integer type).
      scheme: ``"he"`` or ``"xavier"``.
      dtype: a floating dtype; default JAX's default float (float32, or float64 under x64).
    Returns:
      ``Dense(W: (n_out, n_in), b: (n_out,))``.
    """
    key = prng_key(key)
    n_in, n_out = positive_int(n_in, "n_in"), positive_int(n_out, "n_out")
    one_of(scheme, "scheme", _SCHEMES)
    dtype = jnp.result_type(float) if dtype is None else dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype; got {dtype}.")
    fan = n_in if scheme == "he" else (n_in + n_out)
    W = jax.random.normal(key, (n_out, n_in), dtype) * math.sqrt(2.0 / fan)
    return Dense(W.astype(dtype), jnp.zeros((n_out,), dtype))


def _affine(W, b, x):
    z = x @ W.T
    return z + b.reshape((1,) * (z.ndim - 1) + b.shape)  # explicit broadcast over the batch


@jax.custom_vjp
def _dense(params, x):
    W, b = params
    return _affine(W, b, x)


def _dense_fwd(params, x):
    W, b = params
    return _affine(W, b, x), (W, x)


def rows(a):
    """``a`` as ``(m, n)``: every leading batch dimension flattened into m rows.  (Not
    ``reshape(-1, n)``, which cannot infer m when n = 0: a zero-width layer has empty
    gradients, not a ZeroDivisionError.)"""
    return a.reshape(math.prod(a.shape[:-1]), a.shape[-1])


def _dense_bwd(res, g):
    W, x = res
    delta = rows(g)                                  # (m, n_out), all batch dims flattened
    W_bar = delta.T @ rows(x)                        # δᵀ A : (n_out, n_in)
    b_bar = jnp.sum(delta, axis=0)                   # Σ δ  : (n_out,)
    x_bar = g @ W                                    # δ W  : (..., n_in)
    return Dense(W_bar, b_bar), x_bar


_dense.defvjp(_dense_fwd, _dense_bwd)


def dense(params: Dense, x):
    r"""Affine layer  z = W x + b  per example;  Z = X Wᵀ + b  for a batch (tutorial §5).

    Shapes:   W: (n_out, n_in),  b: (n_out,),  x: (..., n_in)  →  z: (..., n_out).
    VJP:      with δ = ḡ = ∂L/∂z (all leading batch dimensions flattened to m rows):
                W̄ = δᵀ A   (Σ over examples of δ aᵀ, tutorial §5 step 2: ∂L/∂W = δ aᵀ)
                b̄ = Σ δ    (the bias is broadcast over the batch, so its gradient sums)
                x̄ = δ W    (per example Wᵀ δ, the term the hidden delta is built from)
    Saves:    W and x (both are needed: W̄ needs x, x̄ needs W).

    Args:
      params: ``Dense(W, b)``.
      x: floating array ``(..., n_in)`` of the same dtype as ``W``.
    Returns:
      z of shape ``(..., n_out)``.
    """
    return _dense(*validate_dense(params, x))


def validate_dense(params, x):
    """``(Dense(W, b), x)`` as arrays after the checks ``dense`` (and its forward twin) make."""
    if not (isinstance(params, tuple) and len(params) == 2):
        raise TypeError(f"params must be Dense(W, b); got {type(params).__name__}.")
    W = float_array(params[0], "W", min_rank=2)
    b = float_array(params[1], "b", min_rank=1)
    x = float_array(x, "x", min_rank=1)
    if W.ndim != 2:
        raise ValueError(f"W must have shape (n_out, n_in); got shape {W.shape}.")
    if b.shape != (W.shape[0],):
        raise ValueError(f"b must have shape (n_out,) = ({W.shape[0]},) to match W; got {b.shape}.")
    if x.shape[-1] != W.shape[1]:
        hint = " (did you pass x as (n_in, m)? fbp puts features last: use x.T)" if (
            x.ndim == 2 and x.shape[0] == W.shape[1]) else ""
        raise ValueError(
            f"x must have shape (..., n_in) with n_in = {W.shape[1]} (W is {W.shape}); "
            f"got x of shape {x.shape}{hint}."
        )
    same_dtype(W=W, b=b, x=x)
    return Dense(W, b), x
