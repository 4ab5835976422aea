r"""Inverted dropout whose rule regenerates the mask from the key instead of saving it."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from fbp._validate import finite_scalar, float_array


def _mask(key, rate, shape):
    """The keep mask: each element kept with probability 1 − rate (``jax.random.bernoulli``)."""
    return jax.random.bernoulli(key, 1.0 - rate, shape)


def _apply(key, x, rate):
    return jnp.where(_mask(key, rate, x.shape), x / (1.0 - rate), jnp.zeros((), x.dtype))


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dropout(key, x, rate):
    return _apply(key, x, rate)


def _dropout_fwd(key, x, rate):
    return _apply(key, x, rate), key            # res: the key alone (8 bytes), not the mask


def _dropout_bwd(rate, key, g):
    keep = _mask(key, rate, g.shape)            # the same key draws the same mask again
    return None, jnp.where(keep, g / (1.0 - rate), jnp.zeros((), g.dtype))


_dropout.defvjp(_dropout_fwd, _dropout_bwd)


def _check_key(key):
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"key must be one key (shape ()); got a key array of shape "
                             f"{key.shape}. Split it and pass one, e.g. keys[0].")
        return key
    if not (hasattr(key, "dtype") and key.dtype == jnp.uint32 and key.shape == (2,)):
        got = f"{key.dtype}{list(key.shape)}" if hasattr(key, "dtype") else type(key).__name__
        raise TypeError(f"key must be a jax.random key: jax.random.key(seed) or the raw "
                        f"uint32[2] of jax.random.PRNGKey(seed); got {got}.")
    return jnp.asarray(key)


def dropout(key, x, rate: float, *, training: bool = True):
    r"""Inverted dropout:  y = m ⊙ x / (1 − p),  m ~ Bernoulli(1 − p) elementwise.

    Dividing the kept units by 1 − p keeps E[y] = x, so evaluation is the identity (no
    rescaling at test time).  The op is linear in x with a diagonal Jacobian:
        x̄ = m ⊙ ḡ / (1 − p)   (§3 chain rule; the key gets no cotangent).
    Saves:    the key alone (two uint32, 8 bytes) — the rule draws the mask m again from it,
              where autodiff of the same forward keeps the mask (one byte per element of x)
              or the scaled mask; ``make bench`` measures both.
    Same key, same mask: call ``jax.random.split`` for a new mask each step.
    Forward mode: ``fbp.transposed(fbp.dropout)`` (the JVP as the transpose of this rule).

    Args:
      key: ``jax.random.key(seed)`` (typed) or ``jax.random.PRNGKey(seed)`` (raw uint32[2]).
      x: floating array of any shape.
      rate: the drop probability p, a Python float in [0, 1); 0 is the identity.
      training: False is the identity (evaluation).
    Returns:
      y, the shape and dtype of x.
    """
    if not isinstance(training, bool):
        raise TypeError(f"training must be True or False; got {training!r}.")
    rate = finite_scalar(rate, "rate", low=0.0, high=1.0, high_open=True)
    x = float_array(x, "x")
    key = _check_key(key)
    if not training or rate == 0.0:
        return x
    return _dropout(key, x, rate)
