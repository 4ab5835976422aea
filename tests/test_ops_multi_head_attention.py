"""multi_head_attention against a plain-jnp layer: values, VJP, jacrev, finite differences."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import pytest

import fbp
from fbp.ops.linear import Dense
from fbp.ops.multi_head_attention import (
    MultiHeadAttention,
    init_multi_head_attention,
    merge_heads,
    multi_head_attention,
    split_heads,
)
from tests import _proof
from tests._proof import Op, central_vjp, rel_err, vjp
from tests.test_ops_attention import ref_attention

F64 = jnp.float64
FAST = {"xla_backend_optimization_level": 0}
D, H = 6, 3


def ref_mha(params, x, n_heads, causal):
    """Plain jnp: per-head projections by slicing W, one head at a time, concatenated."""
    (Wqkv, bqkv), (Wo, bo) = params
    d, dh = x.shape[-1], x.shape[-1] // n_heads
    proj = lambda W, b: x @ W.T + jnp.broadcast_to(b, (*x.shape[:-1], b.shape[0]))
    heads = []
    for h in range(n_heads):
        rows = lambda part, h=h: slice(part * d + h * dh, part * d + (h + 1) * dh)
        q, k, v = (proj(Wqkv[rows(i)], bqkv[rows(i)]) for i in range(3))
        heads.append(ref_attention(q, k, v, causal=causal))
    o = jnp.concatenate(heads, axis=-1)
    return o @ Wo.T + jnp.broadcast_to(bo, o.shape)


def _args(T):
    def make(key, batch, n=None):
        k1, k2, k3 = jax.random.split(key, 3)
        p = init_multi_head_attention(k1, D, H, F64)
        p = MultiHeadAttention(Dense(p.qkv.W, 0.1 * jax.random.normal(k3, (3 * D,), F64)),
                               p.out)
        return p, jax.random.normal(k2, (*batch, T, D), F64)
    return make


OPS = [Op(f"mha(flash={flash}, causal={causal})",
          partial(multi_head_attention, n_heads=H, causal=causal, flash=flash, block_size=2),
          partial(ref_mha, n_heads=H, causal=causal), _args(5), diff=(0, 1), batched=(1,))
       for flash, causal in [(True, True), (False, True)]]


@pytest.mark.parametrize("op", OPS, ids=repr)
def test_four_way(op):
    primals = op.make(jax.random.PRNGKey(0), (2,))
    g = jax.random.normal(jax.random.PRNGKey(1), primals[1].shape, F64)

    def four(p, g):
        return (op.f(*p), op.ref(*p), vjp(op.f, p, g), vjp(op.ref, p, g),
                jax.jacrev(op.f, (0, 1))(*p), jax.jacrev(op.ref, (0, 1))(*p),
                central_vjp(op.f, p, g))

    y, y_ref, ours, theirs, jac, jac_ref, fd = jax.jit(four, compiler_options=FAST)(primals, g)
    assert rel_err(y, y_ref) <= 1e-13
    assert rel_err(ours, theirs) <= 1e-12 and rel_err(jac, jac_ref) <= 1e-12
    assert rel_err(ours, fd) <= 1e-8
    assert _proof.uses_custom_rule(op, primals)


def test_split_and_merge_heads_are_inverse_moves():
    x = jnp.arange(2 * 5 * 6.0).reshape(2, 5, 6)
    heads = split_heads(x, 3)
    assert heads.shape == (2, 3, 5, 2)
    assert jnp.array_equal(heads[1, 2, 4], x[1, 4, 4:6])      # head 2 = features 4..5
    assert jnp.array_equal(merge_heads(heads), x)


def test_causal_output_at_t_ignores_later_positions():
    p, x = _args(5)(jax.random.PRNGKey(4), ())
    f = jax.jit(partial(multi_head_attention, n_heads=H), compiler_options=FAST)
    y, y2 = f(p, x), f(p, x.at[3:].set(7.0))
    assert jnp.allclose(y[:3], y2[:3], rtol=0, atol=1e-14) and not jnp.allclose(y[3], y2[3])


def test_face_exports_it():
    assert fbp.multi_head_attention is multi_head_attention
    assert fbp.init_multi_head_attention is init_multi_head_attention


@pytest.mark.parametrize("call, exc, match", [
    (lambda p, x: multi_head_attention(p, x, n_heads=4), ValueError, r"n_heads must divide"),
    (lambda p, x: multi_head_attention(p, x, n_heads=0), ValueError, r"n_heads must be a pos"),
    (lambda p, x: multi_head_attention(p, x[..., :4], n_heads=2), ValueError,
     r"x must have shape \(\.\.\., n_in\) with n_in = 6"),
    (lambda p, x: multi_head_attention(p, x[0], n_heads=H), ValueError, r"at least 2 dim"),
    (lambda p, x: multi_head_attention(p.qkv, x, n_heads=H, flash=1), TypeError,
     r"flash must be True or False"),
    (lambda p, x: multi_head_attention(p.qkv.W, x, n_heads=H), TypeError,
     r"params must be MultiHeadAttention"),
    (lambda p, x: init_multi_head_attention(jax.random.PRNGKey(0), 6, 4), ValueError,
     r"d_model = 6, n_heads = 4"),
])
def test_bad_input_is_refused(call, exc, match):
    p, x = _args(5)(jax.random.PRNGKey(0), ())
    with pytest.raises(exc, match=match):
        call(p, x)
