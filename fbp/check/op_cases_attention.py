"""The attention family in the op table: attention, flash_attention, multi_head_attention.

Each reference is plain ``jnp.einsum`` + ``jax.nn.softmax`` (and plain matmuls for the layer),
never fbp.  Textbook attention with T ≠ S, flash causal with a block that does not divide T
(tests/test_ops_attention.py proves the other combinations).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fbp.check.op_table import M, OpCase, _normal
from fbp.ops.attention import attention
from fbp.ops.flash_attention import flash_attention


def reference_attention(q, k, v, causal=False):
    s = jnp.einsum("...td,...sd->...ts", q, k) / math.sqrt(q.shape[-1])
    if causal:
        s = jnp.where(jnp.tril(jnp.ones(s.shape[-2:], bool)), s, -jnp.inf)
    return jnp.einsum("...ts,...se->...te", jax.nn.softmax(s, axis=-1), v)


def _qkv(T, S, d=3, dv=2):
    return lambda r, dt: (_normal(r, (M, T, d), dt), _normal(r, (M, S, d), dt),
                          _normal(r, (M, S, dv), dt))


def cases() -> list:
    return [
        OpCase("attention(T≠S)", attention, _qkv(3, 5), reference_attention),
        OpCase("flash_attention(causal, block 3)",
               lambda q, k, v: flash_attention(q, k, v, causal=True, block_size=3), _qkv(4, 4),
               lambda q, k, v: reference_attention(q, k, v, True)),
    ]
