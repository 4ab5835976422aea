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
from fbp.ops.linear import Dense
from fbp.ops.multi_head_attention import MultiHeadAttention, multi_head_attention


def reference_attention(q, k, v, causal=False):
    s = jnp.einsum("...td,...sd->...ts", q, k) / math.sqrt(q.shape[-1])
    if causal:
        s = jnp.where(jnp.tril(jnp.ones(s.shape[-2:], bool)), s, -jnp.inf)
    return jnp.einsum("...ts,...se->...te", jax.nn.softmax(s, axis=-1), v)


def _qkv(T, S, d=3, dv=2):
    return lambda r, dt: (_normal(r, (M, T, d), dt), _normal(r, (M, S, d), dt),
                          _normal(r, (M, S, dv), dt))


def _mha_args(r, dt, T=4, D=4):
    dense = lambda n_out, n_in: Dense(_normal(r, (n_out, n_in), dt) / n_in ** 0.5,
                                      _normal(r, (n_out,), dt))
    return MultiHeadAttention(dense(3 * D, D), dense(D, D)), _normal(r, (M, T, D), dt)


def reference_mha(params, x, n_heads=2):
    """Stacked projections, heads split by reshape, attention per head, one output matmul."""
    (Wqkv, bqkv), (Wo, bo) = params
    qkv = x @ Wqkv.T + jnp.broadcast_to(bqkv, (*x.shape[:-1], bqkv.shape[0]))
    *lead, T, D3 = qkv.shape
    heads = qkv.reshape(*lead, T, 3, n_heads, D3 // (3 * n_heads))
    q, k, v = (jnp.swapaxes(heads[..., i, :, :], -2, -3) for i in range(3))
    o = jnp.swapaxes(reference_attention(q, k, v, True), -2, -3).reshape(*lead, T, D3 // 3)
    return o @ Wo.T + jnp.broadcast_to(bo, o.shape)


def cases() -> list:
    return [
        OpCase("attention(T≠S)", attention, _qkv(3, 5), reference_attention),
        OpCase("flash_attention(causal, block 3)",
               lambda q, k, v: flash_attention(q, k, v, causal=True, block_size=3), _qkv(4, 4),
               lambda q, k, v: reference_attention(q, k, v, True)),
        OpCase("multi_head_attention(2 heads)",
               lambda p, x: multi_head_attention(p, x, n_heads=2, flash=False), _mha_args,
               reference_mha, {"batch_argnums": (1,)}),
    ]
