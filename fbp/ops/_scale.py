"""Counts and scales of the mean losses, divided in float32 or wider.

1/N in float16 overflows from N = 65,520 (float16's largest number is 65,504): a rule that
wrote ``x / N`` with a Python int N would turn every gradient of a large float16 batch into
exactly 0.  ``jnp.mean`` divides in float32; so do the hand-written rules, through ``_per``.
"""

from __future__ import annotations

import math

import jax.numpy as jnp


def _count(x) -> int:
    return max(math.prod(x.shape), 1)


def _batch_count(logits) -> int:
    return max(math.prod(logits.shape[:-1]), 1)


def _acc(dtype):
    """The dtype counts and sums are taken in: float32, or wider when x is (float64)."""
    return jnp.promote_types(dtype, jnp.float32)


def _per(x, n):
    """x / n with the division in float32 or wider and the result in x's dtype.

    ``x / n`` with a Python int n would convert n to x's dtype: in float16 an n ≥ 65,520
    becomes inf and x / n is exactly 0 (in bfloat16 n is rounded, a bias of up to 0.2 %).
    """
    acc = _acc(x.dtype)
    return (x.astype(acc) / jnp.asarray(n, acc)).astype(x.dtype)
