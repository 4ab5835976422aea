"""attention and flash_attention against a plain-jnp reference, jacrev and finite differences,
and flash_attention against the textbook rule (jit, vmap and reverse-over-reverse: the op
table, tests/test_check_op_table.py).

The reference is built from ``jnp.einsum``, ``jnp.where`` and ``jax.nn.softmax`` only, so
``jax.vjp`` of it is JAX's own autodiff through the (T, S) probabilities: what both rules must
reproduce, one saving P and one rebuilding it block by block from the row log-sum-exp.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fbp
from fbp.ops.attention import attention
from fbp.ops.flash_attention import flash_attention
from tests import _proof
from tests._proof import Op, central_vjp, rel_err, vjp

F64 = jnp.float64
FAST = {"xla_backend_optimization_level": 0}


def ref_attention(q, k, v, causal=False, scale=None):
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = jnp.einsum("...td,...sd->...ts", q, k) * scale
    if causal:
        s = jnp.where(jnp.tril(jnp.ones(s.shape[-2:], bool)), s, -jnp.inf)
    return jnp.einsum("...ts,...se->...te", jax.nn.softmax(s, axis=-1), v)


def _qkv(T, S, d=4, dv=3):
    def make(key, batch, n=None):
        kq, kk, kv = jax.random.split(key, 3)
        return (jax.random.normal(kq, (*batch, T, d), F64),
                jax.random.normal(kk, (*batch, S, d), F64),
                jax.random.normal(kv, (*batch, S, dv), F64))
    return make


def _op(name, f, T, S, causal, scale=None, **kw):
    return Op(name, partial(f, causal=causal, scale=scale, **kw),
              partial(ref_attention, causal=causal, scale=scale), _qkv(T, S),
              diff=(0, 1, 2), batched=(0, 1, 2))


# causal and not, T ≠ S, T and S not multiples of the block, one block, scale given
OPS = [
    _op("attention(causal)", attention, 6, 6, True),
    _op("attention(T≠S, scale=0.7)", attention, 5, 7, False, scale=0.7),
    _op("flash(causal, block 4, T=7)", flash_attention, 7, 7, True, block_size=4),
    _op("flash(T=5≠S=7, block 3, scale=2)", flash_attention, 5, 7, False, scale=2.0,
        block_size=3),
]


def _four_way(f, ref, primals, g):
    return (f(*primals), ref(*primals), vjp(f, primals, g), vjp(ref, primals, g),
            jax.jacrev(f, (0, 1, 2))(*primals), jax.jacrev(ref, (0, 1, 2))(*primals),
            central_vjp(f, primals, g))


@pytest.mark.parametrize("op", OPS, ids=repr)
def test_four_way(op):
    """Forward and VJP vs autodiff of the reference, both Jacobians, central differences."""
    primals = op.make(jax.random.PRNGKey(0), (2,))
    g = jax.random.normal(jax.random.PRNGKey(1), (2, primals[0].shape[1], 3), F64)
    y, y_ref, ours, theirs, jac, jac_ref, fd = jax.jit(
        partial(_four_way, op.f, op.ref), compiler_options=FAST)(primals, g)
    assert rel_err(y, y_ref) <= 1e-13
    e_ad, e_jac, e_fd = rel_err(ours, theirs), rel_err(jac, jac_ref), rel_err(ours, fd)
    print(f"\n{op.name}: autodiff {e_ad:.1e}  jacrev {e_jac:.1e}  finite-diff {e_fd:.1e}")
    assert e_ad <= 1e-12 and e_jac <= 1e-12 and e_fd <= 1e-8


@pytest.mark.parametrize("op", OPS, ids=repr)
def test_public_function_runs_its_own_rule(op):
    assert _proof.uses_custom_rule(op, op.make(jax.random.PRNGKey(2), (2,)))


@pytest.mark.parametrize("T, S, causal, block", [(13, 13, True, 4), (6, 11, False, 4)])
def test_flash_equals_the_textbook_rule(T, S, causal, block):
    """Same function, same gradients: flash (blocks, online softmax, P rebuilt from L) and
    attention (P saved), heads and batch as leading axes."""
    q, k, v = _qkv(T, S, d=5, dv=4)(jax.random.PRNGKey(T + block), (2, 3))
    g = jax.random.normal(jax.random.PRNGKey(9), (2, 3, T, 4), F64)

    def both(q, k, v, g):
        fl = jax.vjp(lambda *a: flash_attention(*a, causal=causal, block_size=block), q, k, v)
        tb = jax.vjp(lambda *a: attention(*a, causal=causal), q, k, v)
        return fl[0], tb[0], fl[1](g), tb[1](g)

    o_fl, o_tb, bar_fl, bar_tb = jax.jit(both, compiler_options=FAST)(q, k, v, g)
    assert rel_err(o_fl, o_tb) <= 1e-13 and rel_err(bar_fl, bar_tb) <= 1e-13


def test_flash_saves_only_the_output_and_one_number_per_query():
    q, k, v = _qkv(16, 16)(jax.random.PRNGKey(0), (2,))
    f = lambda q, k, v: flash_attention(q, k, v, causal=True, block_size=4)
    t = lambda q, k, v: attention(q, k, v, causal=True)
    held = lambda fn: _proof.residual_bytes(fn, (q, k, v), (0, 1, 2))
    o_bytes, lse_bytes = 2 * 16 * 3 * 8, 2 * 16 * 8
    assert held(f) == q.nbytes + k.nbytes + v.nbytes + o_bytes + lse_bytes
    assert held(t) == q.nbytes + k.nbytes + v.nbytes + 2 * 16 * 16 * 8   # P: (2, 16, 16)


def test_causal_flash_skips_blocks_above_the_diagonal():
    """The key-block loop runs each block's work under a conditional when causal, and has none
    when not (every block is needed)."""
    q, k, v = _qkv(8, 8)(jax.random.PRNGKey(0), ())
    jaxpr = lambda causal: str(jax.make_jaxpr(jax.grad(lambda q: jnp.sum(flash_attention(
        q, k, v, causal=causal, block_size=4))))(q))
    assert "cond[" in jaxpr(True) and "cond[" not in jaxpr(False)


def test_rules_run_in_float32():
    q, k, v = (a.astype(jnp.float32) for a in _qkv(7, 7)(jax.random.PRNGKey(0), (2,)))
    g = jax.random.normal(jax.random.PRNGKey(1), (2, 7, 3), jnp.float32)
    fns = (partial(ref_attention, causal=True), partial(attention, causal=True),
           partial(flash_attention, causal=True, block_size=3))
    ref, *outs = jax.jit(lambda p, g: [vjp(f, p, g) for f in fns], compiler_options=FAST)(
        (q, k, v), g)
    for out in outs:
        assert all(a.dtype == jnp.float32 for a in out) and rel_err(out, ref) <= 1e-5


def test_faces_export_them():
    assert fbp.attention is attention and fbp.flash_attention is flash_attention


# ── bad input: every error names the argument and says what to do ──

_GOOD = {"q": np.ones((2, 5, 4)), "k": np.ones((2, 5, 4)), "v": np.ones((2, 5, 3))}
BAD = [
    ({"k": np.ones((2, 5, 6))}, {}, ValueError,
     r"same feature size d.*q \(2, 5, 4\).*k \(2, 5, 6\)"),
    ({"v": np.ones((2, 4, 3))}, {}, ValueError,
     r"same number of keys S.*k \(2, 5, 4\).*v \(2, 4, 3\)"),
    ({"k": np.ones((2, 6, 4)), "v": np.ones((2, 6, 3))}, {"causal": True}, ValueError,
     r"causal=True .* needs T = S; got q with T = 5 and k with S = 6.*causal=False"),
    ({"k": np.ones((3, 5, 4))}, {}, ValueError, r"leading .* axes.*broadcast_to"),
    ({"q": np.ones((2, 5, 4), np.int32)}, {}, TypeError, r"q must have a floating-point dtype"),
    ({"v": "values"}, {}, TypeError, r"v must be a floating-point array; got str"),
    ({"q": np.ones(4)}, {}, ValueError, r"q must have at least 2 dimension"),
    ({"k": np.ones((2, 5, 4), np.float32)}, {}, TypeError, r"must share one dtype"),
    ({"k": np.ones((2, 0, 4)), "v": np.ones((2, 0, 3))}, {}, ValueError, r"at least one key"),
    ({}, {"causal": 1}, TypeError, r"causal must be True or False; got 1"),
    ({}, {"scale": float("nan")}, ValueError, r"scale must be finite"),
]


@pytest.mark.parametrize("fn", [attention, flash_attention], ids=lambda f: f.__name__)
@pytest.mark.parametrize("args, kwargs, exc, match", BAD)
def test_bad_input_is_refused(fn, args, kwargs, exc, match):
    a = {**_GOOD, **args}
    with pytest.raises(exc, match=match):
        fn(a["q"], a["k"], a["v"], **kwargs)


@pytest.mark.parametrize("block_size", [0, -3, 2.0, True])
def test_flash_refuses_a_bad_block_size(block_size):
    with pytest.raises(ValueError, match=r"block_size must be a positive int.*block_size=128"):
        flash_attention(_GOOD["q"], _GOOD["k"], _GOOD["v"], block_size=block_size)


def test_traced_scale_is_refused_with_the_fix():
    q = jnp.ones((2, 5, 4))
    for fn in (attention, flash_attention):
        with pytest.raises(TypeError, match=r"scale must be a concrete number.*q \* s, k, v"):
            jax.jit(lambda s, fn=fn: fn(q, q, q, scale=s))(0.5)


def test_flash_takes_a_numpy_int_block_size():
    q, k, v = _qkv(7, 7)(jax.random.key(3), (2,))
    want = flash_attention(q, k, v, causal=True, block_size=3)
    got = flash_attention(q, k, v, causal=True, block_size=np.int64(3))
    assert np.array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=lambda d: d.__name__)
@pytest.mark.parametrize("fn", [attention, partial(flash_attention, block_size=3)],
                         ids=["attention", "flash"])
def test_low_precision_scores_do_not_overflow(fn, dtype):
    """|q·k| reaches ~9·10⁴ here (float16 holds up to 65,504 and its scores overflowed to inf,
    then NaN): output and gradients match float64 autodiff of the reference, taken at the same
    rounded inputs, to the dtype's rounding."""
    q, k, v = _qkv(6, 6, d=8)(jax.random.key(5), (2,))
    q, k, v = (q * 120).astype(dtype), (k * 120).astype(dtype), v.astype(dtype)
    g = jax.random.normal(jax.random.key(6), (2, 6, 3)).astype(dtype)
    out, pull = jax.vjp(lambda q, k, v: fn(q, k, v, causal=True), q, k, v)
    want, pull_ref = jax.vjp(lambda q, k, v: ref_attention(q, k, v, causal=True),
                             *(a.astype(F64) for a in (q, k, v)))
    assert float(jnp.max(jnp.abs(q.astype(F64) @ jnp.swapaxes(k.astype(F64), -1, -2)))) > 7e4
    tol = 8 * float(jnp.finfo(dtype).eps)
    assert out.dtype == dtype
    np.testing.assert_allclose(np.asarray(out, np.float64), want, atol=tol * 4, rtol=tol)
    for got, ref in zip(pull(g), pull_ref(g.astype(F64))):
        assert got.dtype == dtype
        scale = float(jnp.max(jnp.abs(ref))) + 1e-30
        assert float(jnp.max(jnp.abs(got.astype(F64) - ref))) <= 4 * tol * scale
