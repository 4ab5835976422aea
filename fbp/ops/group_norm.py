r"""Group normalisation of images (Wu & He 2018), with the hand-derived rule of batch/layer norm.

Spatial batch normalisation needs no op of its own: ``fbp.batch_norm`` on an image batch
``(N, H, W, C)`` normalises every leading axis, i.e. each channel over N, H and W together —
exactly the spatial batch norm of convnets (Ioffe & Szegedy §3.2); the tests hold it against
a reference that takes the statistics over axes (0, 1, 2).  Group norm takes the statistics
per example instead, so it does not depend on the batch and works for a batch of one.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fbp._validate import finite_scalar, float_array, positive_int, same_dtype
from fbp.ops.batch_norm import _affine_bars, _normalise_vjp, _standardise


class GroupNormParams(NamedTuple):
    """Learned per-channel scale ``gamma`` and shift ``beta`` of group_norm, each ``(C,)``."""

    gamma: jax.Array
    beta: jax.Array


def init_group_norm(c: int, dtype=jnp.float32) -> GroupNormParams:
    """``GroupNormParams(γ=1, β=0)`` for ``c`` channels."""
    c = positive_int(c, "c", " (the number of channels)")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype; got {dtype}.")
    return GroupNormParams(jnp.ones((c,), dtype), jnp.zeros((c,), dtype))


_AXES = (1, 3)   # of x as (N, H·W, G, C/G): the statistics of one group of one example


def _grouped(x, groups):
    n, h, w, c = x.shape
    return x.reshape(n, h * w, groups, c // groups)


def _channel(v, groups):
    """A per-channel vector (C,) shaped (1, 1, G, C/G) to broadcast against grouped x."""
    return v.reshape(1, 1, groups, v.shape[0] // groups)


# x̂ and y in float32 or wider (batch norm's _standardise), cast to x's dtype; x̂ saved in it.

@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _group_norm(params, x, groups, eps):
    gamma, beta = params
    x_hat, _ = _standardise(_grouped(x, groups), _AXES, eps)
    y = _channel(gamma, groups) * x_hat + _channel(beta, groups)
    return y.reshape(x.shape).astype(x.dtype)


def _group_norm_fwd(params, x, groups, eps):
    gamma, beta = params
    x_hat, inv_sigma = _standardise(_grouped(x, groups), _AXES, eps)  # (N,HW,G,C/G), (N,1,G,1)
    y = _channel(gamma, groups) * x_hat + _channel(beta, groups)
    return y.reshape(x.shape).astype(x.dtype), (x_hat.astype(x.dtype), inv_sigma, gamma)


def _group_norm_bwd(groups, eps, res, g):
    x_hat, inv_sigma, gamma = res
    gg = g.reshape(x_hat.shape)
    gamma_bar, beta_bar = _affine_bars(x_hat, gg, (0, 1))         # Σ ḡ ⊙ x̂, Σ ḡ per channel
    x_bar = _normalise_vjp(x_hat, inv_sigma, gg * _channel(gamma, groups), axis=_AXES)
    dtype = g.dtype
    return (GroupNormParams(gamma_bar.reshape(-1).astype(dtype),
                            beta_bar.reshape(-1).astype(dtype)),
            x_bar.reshape(g.shape).astype(dtype))


_group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)


def group_norm(params: GroupNormParams, x, groups: int, *, eps: float = 1e-5):
    r"""Group normalisation:  per example, the C channels in ``groups`` groups of C/G.

    Forward, for each example and each group 𝒢 (its H·W·C/G values):
        μ = mean_𝒢(x),  v = mean_𝒢((x − μ)²)  (biased),  σ = √(v + ε),
        x̂ = (x − μ)/σ,  y = γ ⊙ x̂ + β   (γ, β per channel).
      groups = 1 is layer norm over (H, W, C); groups = C is instance norm.
    VJP: batch norm's derivation (steps 2–4 in ``fbp.batch_norm``) with the means over the
      group 𝒢 instead of the batch, m = H·W·C/G (§3 chain rule through μ and σ):
        x̂̄ = γ ⊙ ḡ,
        x̄ = (1/σ) (x̂̄ − mean_𝒢(x̂̄) − x̂ ⊙ mean_𝒢(x̂̄ ⊙ x̂)),
        γ̄ = Σ_{examples, H, W} ḡ ⊙ x̂,   β̄ = Σ_{examples, H, W} ḡ.
    Saves:    x̂ (like x), 1/σ (one per example and group) and γ — not x.
    Spatial batch norm is ``fbp.batch_norm(params, x)`` on x (N, H, W, C): it already
      normalises each channel over N, H and W (every leading axis).
    Forward mode: ``fbp.transposed(fbp.group_norm)`` (the JVP as the transpose of this rule).

    Args:
      params: ``GroupNormParams(gamma: (C,), beta: (C,))``.
      x: floating array ``(..., H, W, C)``; each leading index is one example.
      groups: a positive int dividing C.
      eps: finite, > 0, added to the variance.
    Returns:
      y, same shape and dtype as x.
    """
    eps = finite_scalar(eps, "eps", low=0.0, low_open=True)
    x = float_array(x, "x", min_rank=3)
    if not (isinstance(params, tuple) and len(params) == 2):
        raise TypeError(f"params must be GroupNormParams(gamma, beta); got "
                        f"{type(params).__name__}.")
    gamma, beta = float_array(params[0], "gamma"), float_array(params[1], "beta")
    c = x.shape[-1]
    for name, v in (("gamma", gamma), ("beta", beta)):
        if v.shape != (c,):
            raise ValueError(f"{name} must have shape (C,) = ({c},), one entry per channel of x "
                             f"{x.shape} (channels last); got {v.shape}.")
    groups = positive_int(groups, "groups", f" dividing the {c} channels of x")
    if c % groups:
        raise ValueError(f"groups must be a positive int dividing the {c} channels of x; got "
                         f"{groups!r}. E.g. groups=1 (layer norm) or groups={c} (instance norm).")
    same_dtype(x=x, gamma=gamma, beta=beta)
    x4 = x.reshape(math.prod(x.shape[:-3]), *x.shape[-3:])   # not -1: x may be empty
    return _group_norm(GroupNormParams(gamma, beta), x4, groups, eps).reshape(x.shape)
