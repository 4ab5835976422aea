"""conv2d, max/avg pooling, group_norm and dropout: the four-way proof and everything else.

References (fbp.check.op_cases_conv): ``lax.conv_general_dilated``, ``lax.reduce_window`` and
plain ``jnp`` — never fbp.  The op table proves its cases (plain and strided-padded conv2d,
im2col, max and avg pooling, group_norm, dropout) with every check of fbp.check_vjp in
float64 and float32 (tests/test_check_op_table.py) and forward mode through fbp.transposed
(tests/test_transposed.py); here the four-way proof covers the other configurations, then
hypothesis shapes (any leading dims, none included), vmap, float32.  Beyond: direct and
im2col convolution agree, the max-pool tie rule holds against a NumPy loop, batch_norm on
images is spatial batch norm, dropout regenerates its mask from typed and raw keys, residual
bytes against autodiff, forward mode through ``fbp.transposed``, and every bad input names
itself.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fbp
from fbp.check.op_cases_conv import (
    ref_avg_pool2d,
    ref_conv2d,
    ref_dropout,
    ref_group_norm,
    ref_max_pool2d,
)
from tests import _proof
from tests._proof import Op

F64 = jnp.float64
PADS = ((1, 0), (0, 1))


def _hw(n):
    return 3 + n % 4, 4 + n % 3


def _conv_make(key, batch, n, dtype=F64):
    k1, k2, k3 = jax.random.split(key, 3)
    W = jax.random.normal(k1, (3, 3, 2, n), dtype) / np.sqrt(6 * n)
    return (fbp.Conv(W, jax.random.normal(k2, (3,), dtype)),
            jax.random.normal(k3, (*batch, *_hw(n), n), dtype))


def _distinct(key, batch, n, dtype=F64):
    shape = (*batch, *_hw(n), n)
    size = int(np.prod(shape))
    return ((jax.random.permutation(key, size).reshape(shape) - size / 2).astype(dtype) * 0.1,)


def _images(key, batch, n, dtype=F64):
    return (jax.random.normal(key, (*batch, *_hw(n), n), dtype),)


def _gn_make(key, batch, n, dtype=F64):
    k1, k2, k3 = jax.random.split(key, 3)
    c = 2 * (1 + n % 3)
    return (fbp.GroupNormParams(1 + 0.3 * jax.random.normal(k1, (c,), dtype),
                                jax.random.normal(k2, (c,), dtype)),
            jax.random.normal(k3, (*batch, 3, 2, c), dtype))


def _dropout_make(key, batch, n, dtype=F64):
    return (jax.random.PRNGKey(int(jax.random.randint(key, (), 0, 2**30))),
            jax.random.normal(key, (*batch, n), dtype))


def _ref_conv_batched(p, x, stride=1, padding="VALID"):
    lead = x.shape[:-3]
    y = ref_conv2d(p, x.reshape(-1, *x.shape[-3:]), stride, padding)
    return y.reshape(*lead, *y.shape[1:])


def _batched(ref):
    """A reference on (N, H, W, C) applied to x of any leading dims."""
    def f(x, *args):
        y = ref(x.reshape(-1, *x.shape[-3:]), *args)
        return y.reshape(*x.shape[:-3], *y.shape[1:])
    return f


def _ref_gn(p, x):
    return ref_group_norm(p, x.reshape(-1, *x.shape[-3:]), 2).reshape(x.shape)


OPS = [
    Op("conv2d", fbp.conv2d, _ref_conv_batched, _conv_make, diff=(0, 1), batched=(1,)),
    Op("conv2d(stride 2, padded)", lambda p, x: fbp.conv2d(p, x, stride=2, padding=PADS),
       lambda p, x: _ref_conv_batched(p, x, 2, PADS), _conv_make, diff=(0, 1), batched=(1,)),
    Op("conv2d(im2col, stride (2, 1), SAME)",
       lambda p, x: fbp.conv2d(p, x, stride=(2, 1), padding="SAME", method="im2col"),
       lambda p, x: _ref_conv_batched(p, x, (2, 1), "SAME"), _conv_make, diff=(0, 1),
       batched=(1,)),
    Op("max_pool2d(2, stride 1)", lambda x: fbp.max_pool2d(x, 2, stride=1),
       lambda x: _batched(ref_max_pool2d)(x, 2, 1), _distinct),
    Op("max_pool2d(3, stride 2, SAME)", lambda x: fbp.max_pool2d(x, 3, stride=2, padding="SAME"),
       lambda x: _batched(ref_max_pool2d)(x, 3, 2, "SAME"), _distinct),
    Op("avg_pool2d(3, stride 1, padding 1)", lambda x: fbp.avg_pool2d(x, 3, stride=1, padding=1),
       lambda x: _batched(ref_avg_pool2d)(x, 3, 1, ((1, 1), (1, 1))), _images),
    Op("group_norm(groups 2)", lambda p, x: fbp.group_norm(p, x, 2), _ref_gn, _gn_make,
       diff=(0, 1), batched=(1,)),
    Op("dropout(0.3)", lambda key, x: fbp.dropout(key, x, 0.3),
       lambda key, x: ref_dropout(key, x, 0.3), _dropout_make, diff=(1,), batched=(1,)),
]
KEY = jax.random.PRNGKey
# one op per family for the tests that add little per extra case (the op table, run in
# float64 and float32 by tests/test_check_op_table.py, and tests/test_transposed.py cover all)
SOME = [OPS[i] for i in (1, 4, 6)]          # strided padded conv, SAME max pool, group norm
# the configurations the op table (fbp/check/op_cases_conv.py) does not already prove four ways
NOT_IN_TABLE = [OPS[i] for i in (2, 4, 5)]  # im2col (2, 1) SAME, max SAME, avg padded


def _four_way(op, args):
    """The forward, the VJP and autodiff of the reference, both full Jacobians and central
    differences, in one compiled program (jit against eager is the op table's jit check)."""
    f, primals = _proof.restrict(op.f, args, op.diff)
    ref, _ = _proof.restrict(op.ref, args, op.diff)
    g = _proof.cotangent(KEY(1), f(*primals))
    argnums = tuple(range(len(primals)))

    def everything(p, g):
        return (f(*p), ref(*p), _proof.vjp(f, p, g), _proof.vjp(ref, p, g),
                jax.jacrev(f, argnums)(*p), jax.jacrev(ref, argnums)(*p),
                _proof.central_vjp(f, p, g))

    y, y_ref, ours, theirs, jac, jac_ref, fd = jax.jit(everything)(primals, g)
    return y, y_ref, _proof.rel_err(ours, theirs), _proof.rel_err(jac, jac_ref), \
        _proof.rel_err(ours, fd)


@pytest.mark.parametrize("op", NOT_IN_TABLE, ids=repr)
def test_four_way_proof(op):
    args = op.make(KEY(0), (2,), 2)
    y, y_ref, e_ad, e_jac, e_fd = _four_way(op, args)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    print(f"\n{op.name}: autodiff {e_ad:.1e}  jacobian {e_jac:.1e}  finite-diff {e_fd:.1e}")
    assert e_ad <= 1e-12 and e_jac <= 1e-12
    assert e_fd <= 1e-7
    assert "custom_vjp_call" in str(jax.make_jaxpr(_proof.restrict(op.f, args, op.diff)[0])(
        *[args[i] for i in op.diff]))


@pytest.mark.parametrize("op", OPS[:6], ids=repr)
def test_forward_over_reverse_equals_the_reference(op):
    """jax.jvp of jax.grad (a Hessian-vector product, what jax.hessian runs) differentiates
    each rule's forward and backward in forward mode: equal to that of the plain reference."""
    args = op.make(KEY(0), (2,), 2)
    f, primals = _proof.restrict(op.f, args, op.diff)
    ref, _ = _proof.restrict(op.ref, args, op.diff)
    g = _proof.cotangent(KEY(1), f(*primals))
    leaves, treedef = jax.tree.flatten(primals)
    tangents = jax.tree.unflatten(treedef, [_proof.cotangent(KEY(2 + i), a)
                                            for i, a in enumerate(leaves)])

    def hvp(fn):
        loss = lambda *p: jnp.sum(g * jnp.sin(fn(*p)))               # noqa: E731
        return jax.jvp(jax.grad(loss, tuple(range(len(primals)))), primals, tangents)

    assert _proof.rel_err(hvp(f), hvp(ref)) <= 1e-12


@pytest.mark.parametrize("op", SOME[1:], ids=repr)
def test_vmap_per_example_equals_loop(op):
    assert _proof.vmap_vs_loop(op, op.make(KEY(4), (3,), 1), KEY(5)) <= 1e-14


@pytest.mark.parametrize("op", SOME[:2], ids=repr)
@settings(max_examples=2)
@given(batch=st.lists(st.integers(1, 3), min_size=0, max_size=2), n=st.integers(1, 5),
       seed=st.integers(0, 2**30))
def test_random_shapes(op, batch, n, seed):
    args = op.make(KEY(seed), tuple(batch), n)
    assert _proof.vjp_vs_reference(op, args, KEY(seed + 1)) <= 1e-12


@pytest.mark.parametrize("op", SOME[:1], ids=repr)
def test_float32_matches_reference(op):
    args = jax.tree.map(lambda a: a.astype(jnp.float32) if a.dtype == F64 else a,
                        op.make(KEY(6), (2,), 3))
    assert _proof.vjp_vs_reference(op, args, KEY(7)) <= 1e-5


def test_residual_bytes_against_autodiff(capsys):
    rows = []
    for op in OPS:
        args = op.make(KEY(8), (2,), 2)
        ours = _proof.residual_bytes(op.f, args, op.diff)
        theirs = _proof.residual_bytes(op.ref, args, op.diff)
        rows.append((op.name, ours, theirs))
        if "im2col" not in op.name:       # im2col saves the patches: kh·kw × x, on purpose
            assert ours <= theirs, f"{op.name}: rule saves {ours} B, autodiff {theirs} B"
    by_name = {name: ours for name, ours, _ in rows}
    p, x = OPS[0].make(KEY(8), (2,), 2)
    assert by_name["max_pool2d(2, stride 1)"] == fbp.max_pool2d(x, 2, stride=1).size  # uint8
    assert by_name["dropout(0.3)"] == 8                             # the raw key: 2 × uint32
    assert by_name["conv2d"] == x.nbytes + p.W.nbytes               # x and W
    with capsys.disabled():
        print("\nresidual bytes at batch 2, 2 channels, float64:  op | fbp rule | autodiff")
        for name, ours, theirs in rows:
            print(f"  {name:40s} {ours:8d} {theirs:8d}")


# ── conv2d: the two derivations agree; stride remainder; leading dims ──

@pytest.mark.parametrize("stride, padding", [(1, "VALID"), (2, "SAME"), ((3, 2), PADS),
                                             (2, 2)])
def test_direct_and_im2col_agree_in_value_and_gradient(stride, padding):
    params, x = _conv_make(KEY(9), (2,), 3)
    g_fn = jax.jit(lambda m: jax.value_and_grad(lambda p, x: jnp.sum(jnp.sin(fbp.conv2d(
        p, x, stride=stride, padding=padding, method=m))), argnums=(0, 1))(params, x),
        static_argnums=0)
    (v1, g1), (v2, g2) = g_fn("direct"), g_fn("im2col")
    assert abs(float(v1 - v2)) <= 1e-12 and _proof.rel_err(g1, g2) <= 1e-13


def test_the_im2col_path_runs_dense_rule_and_patches_rule():
    params, x = _conv_make(KEY(10), (2,), 2)
    jaxpr = str(jax.make_jaxpr(lambda p, x: fbp.conv2d(p, x, method="im2col"))(params, x))
    assert jaxpr.count("custom_vjp_call") == 2            # _im2col, then dense's _dense


def test_cropped_remainder_gets_zero_gradient():
    """H = 6, kh = 3, stride 2: rows 0..4 are seen, row 5 is in no window, so x̄ = 0 there."""
    params, _ = _conv_make(KEY(11), (), 2)
    x = jax.random.normal(KEY(12), (6, 6, 2), F64)
    x_bar = jax.jit(jax.grad(lambda x: jnp.sum(fbp.conv2d(params, x, stride=2) ** 2)))(x)
    assert float(jnp.max(jnp.abs(x_bar[5]))) == 0.0 and float(jnp.max(jnp.abs(x_bar[:5]))) > 0


def test_conv_is_dense_over_patches():
    """W.reshape(c_out, −1) is the Dense weight over im2col patches, in (a, b, c) order."""
    params, x = _conv_make(KEY(13), (2,), 3)
    xs = np.asarray(x)
    kh, kw = params.W.shape[1:3]                                    # (3, 2)
    patches = np.stack([xs[:, i:i + kh, j:j + kw, :].reshape(2, -1)
                        for i in range(xs.shape[1] - kh + 1)
                        for j in range(xs.shape[2] - kw + 1)], 1)
    y = patches @ np.asarray(params.W).reshape(3, -1).T + np.asarray(params.b)
    np.testing.assert_allclose(fbp.conv2d(params, x).reshape(2, -1, 3), y, rtol=1e-12)
    np.testing.assert_array_equal(fbp.im2col(x, (kh, kw)).reshape(patches.shape), patches)


def test_init_conv_shapes_and_scale():
    p = fbp.init_conv(KEY(14), 4, 64, 3, dtype=F64)
    assert p.W.shape == (64, 3, 3, 4) and p.b.shape == (64,)
    assert abs(float(jnp.std(p.W)) / np.sqrt(2 / 36) - 1) < 0.1
    assert float(jnp.max(jnp.abs(p.b))) == 0.0


# ── max_pool2d: ties go to the first maximum in row-major window order ──

def _first_max_rule(x, k, s):
    """NumPy loop: each window's ḡ to the first (row-major) position of its maximum."""
    h, w, c = x.shape
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    x_bar = np.zeros_like(x)
    for i, j, ch in itertools.product(range(ho), range(wo), range(c)):
        win = x[i * s:i * s + k, j * s:j * s + k, ch]
        a, b = divmod(int(np.argmax(win)), k)       # np.argmax: the first maximum, row-major
        x_bar[i * s + a, j * s + b, ch] += 1.0
    return x_bar


@pytest.mark.parametrize("k, s", [(2, 2), (3, 1)])
def test_max_pool_ties_go_to_the_first_maximum(k, s):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, (6, 6, 2)).astype(np.float64)          # many ties of 0s and 1s
    x[:3, :3, 0] = 1.0                                             # a window all equal
    x_bar = jax.grad(lambda x: jnp.sum(fbp.max_pool2d(x, k, stride=s)))(jnp.asarray(x))
    np.testing.assert_array_equal(x_bar, _first_max_rule(x, k, s))
    assert float(x_bar[0, 0, 0]) >= 1.0 and float(x_bar[0, 1, 0]) == 0.0 if s == 2 else True


def test_max_pool_ignores_padding():
    x = -jnp.ones((3, 3, 1), F64) * 5.0                   # padding (−∞) never beats −5
    y = fbp.max_pool2d(x, 2, stride=2, padding="SAME")
    np.testing.assert_array_equal(y, -5.0 * np.ones((2, 2, 1)))


def _argmax_pool(x, k, s, pad):
    """Plain jnp: every (k, k) window of the −∞-padded x stacked, then the element at
    jnp.argmax (the first maximum, a NaN counting as the largest) picked by take_along_axis,
    so jax.grad sends each window's ḡ to exactly that element."""
    xp = jnp.pad(x, ((pad, pad), (pad, pad), (0, 0)), constant_values=-jnp.inf)
    ho, wo = (xp.shape[0] - k) // s + 1, (xp.shape[1] - k) // s + 1
    p = jnp.stack([xp[a:a + (ho - 1) * s + 1:s, b:b + (wo - 1) * s + 1:s]
                   for a in range(k) for b in range(k)], axis=2)       # (ho, wo, k·k, C)
    return jnp.take_along_axis(p, jnp.argmax(p, axis=2)[:, :, None], axis=2)[:, :, 0]


@pytest.mark.parametrize("k, s, pad", [(2, 2, 0), (3, 1, 1), (2, 1, 0)])
def test_max_pool_propagates_nan_and_routes_its_gradient_to_the_first_nan(k, s, pad):
    x = jnp.asarray(np.random.default_rng(1).normal(size=(5, 5, 2)))
    x = x.at[0, 1, 0].set(jnp.nan).at[3, 3, 0].set(jnp.nan).at[2, 2, 1].set(jnp.nan)
    f = lambda x: fbp.max_pool2d(x, k, stride=s, padding=pad)          # noqa: E731
    y_ref = ref_max_pool2d(x[None], k, s, ((pad, pad), (pad, pad)))[0]  # lax.reduce_window
    assert np.isnan(y_ref).any()
    y, vjp = jax.vjp(f, x)                                              # the rule's forward
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(f(x), y_ref)
    g = jnp.asarray(np.random.default_rng(2).normal(size=y.shape))
    x_bar_ref = jax.grad(lambda x: jnp.sum(_argmax_pool(x, k, s, pad) * g))(x)
    x_bar = vjp(g)[0]
    np.testing.assert_array_equal(x_bar == 0, x_bar_ref == 0)           # where ḡ went: exact
    np.testing.assert_allclose(x_bar, x_bar_ref, rtol=1e-14)            # sums: up to rounding


def test_avg_pool_divides_by_the_valid_count():
    x = jnp.ones((3, 3, 1), F64)
    np.testing.assert_array_equal(fbp.avg_pool2d(x, 2, stride=2, padding="SAME"),
                                  np.ones((2, 2, 1)))     # border windows: the mean of 1s is 1
    g = jax.grad(lambda x: jnp.sum(fbp.avg_pool2d(x, 2, stride=2, padding="SAME")))(x)
    np.testing.assert_allclose(g[..., 0], [[1 / 4, 1 / 4, 1 / 2], [1 / 4, 1 / 4, 1 / 2],
                                           [1 / 2, 1 / 2, 1.0]], rtol=1e-15)


# ── batch_norm on images is spatial batch norm; group_norm special cases ──

def test_batch_norm_on_images_is_spatial_batch_norm():
    k1, k2, k3 = jax.random.split(KEY(15), 3)
    x = 2 * jax.random.normal(k1, (4, 3, 5, 6), F64) + 1
    params = fbp.BatchNormParams(1 + jax.random.normal(k2, (6,), F64),
                                 jax.random.normal(k3, (6,), F64))

    def spatial(p, x):     # statistics per channel over N, H, W, in plain jnp
        mu = jnp.mean(x, axis=(0, 1, 2), keepdims=True)
        var = jnp.mean((x - mu) ** 2, axis=(0, 1, 2), keepdims=True)
        return (p.gamma.reshape(1, 1, 1, -1) * (x - mu) / jnp.sqrt(var + 1e-5)
                + p.beta.reshape(1, 1, 1, -1))

    fn = lambda p, x: fbp.batch_norm(p, x)[0]  # noqa: E731
    g = jax.random.normal(k1, x.shape, F64)
    y, y_ref, ours, theirs = jax.jit(lambda p, g: (fn(*p), spatial(*p), _proof.vjp(fn, p, g),
                                                   _proof.vjp(spatial, p, g)))((params, x), g)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    assert _proof.rel_err(ours, theirs) <= 1e-12


def test_group_norm_with_one_group_is_layer_norm_over_h_w_c():
    _, x = _gn_make(KEY(16), (3,), 2)
    n, c = int(np.prod(x.shape[-3:])), x.shape[-1]

    @jax.jit
    def both(x):
        flat = fbp.layer_norm(fbp.LayerNormParams(jnp.ones(n, F64), jnp.zeros(n, F64)),
                              x.reshape(3, -1))
        return fbp.group_norm(fbp.GroupNormParams(jnp.ones(c, F64), jnp.zeros(c, F64)), x,
                              1).reshape(3, -1), flat

    y, flat = both(x)
    np.testing.assert_allclose(y, flat, rtol=1e-12, atol=1e-12)


# ── dropout ──

def test_dropout_typed_and_raw_keys_give_the_same_mask_and_gradient():
    x = jax.random.normal(KEY(17), (4, 50), F64)
    raw, typed = jax.random.PRNGKey(3), jax.random.wrap_key_data(jax.random.PRNGKey(3))
    y_raw, g_raw = jax.value_and_grad(lambda x: jnp.sum(fbp.dropout(raw, x, 0.5) ** 2))(x)
    y_typed, g_typed = jax.value_and_grad(lambda x: jnp.sum(fbp.dropout(typed, x, 0.5) ** 2))(x)
    assert float(y_raw) == float(y_typed)
    np.testing.assert_array_equal(g_raw, g_typed)
    keep = jax.random.bernoulli(raw, 0.5, x.shape)
    np.testing.assert_allclose(g_raw, np.where(keep, 2 * np.asarray(x) * 4, 0.0), rtol=1e-14)
    _, pullback = jax.vjp(lambda x: fbp.dropout(typed, x, 0.5), x)
    keys = [leaf for leaf in jax.tree.leaves(pullback)]
    assert len(keys) == 1 and jax.random.key_data(keys[0]).nbytes == 8


def test_dropout_keeps_one_minus_rate_and_the_mean():
    x = jnp.ones((200, 200), F64)
    y = fbp.dropout(jax.random.key(0), x, 0.25)
    assert abs(float(jnp.mean(y != 0)) - 0.75) < 0.01
    assert abs(float(jnp.mean(y)) - 1.0) < 0.015                  # inverted: E[y] = x
    assert set(np.unique(np.asarray(y)).tolist()) == {0.0, 1 / 0.75}


@pytest.mark.parametrize("rate, training", [(0.0, True), (0.5, False)])
def test_dropout_identity_cases(rate, training):
    x = jax.random.normal(KEY(18), (3, 4), F64)
    y, pullback = jax.vjp(lambda x: fbp.dropout(KEY(0), x, rate, training=training), x)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(pullback(2 * x)[0], 2 * x)


# ── forward mode: fbp.transposed against jax.jvp of the references ──

@pytest.mark.parametrize("op", SOME, ids=repr)
def test_forward_mode_by_transposition(op):
    args = op.make(KEY(19), (2,), 2)
    f, primals = _proof.restrict(fbp.transposed(op.f), args, op.diff)
    ref, _ = _proof.restrict(op.ref, args, op.diff)
    tangents = jax.tree.map(lambda p: jax.random.normal(KEY(20), p.shape, p.dtype), primals)
    both = jax.jit(lambda p, t: (jax.jvp(f, p, t)[1], jax.jvp(ref, p, t)[1]))
    assert _proof.rel_err(*both(primals, tangents)) <= 1e-12


# ── bad input ──

_P, _X = _conv_make(KEY(21), (2,), 2)
_XI = jnp.ones((4, 4, 2), jnp.int32)

BAD = [
    (lambda: fbp.conv2d(fbp.Conv(_P.W[0], _P.b), _X), ValueError, "W must have rank 4"),
    (lambda: fbp.conv2d(_P, _X[..., :1]), ValueError, "c_in = 2 channels"),
    (lambda: fbp.conv2d(_P, jnp.moveaxis(jnp.ones((2, 3, 5, 2)), -1, -3)[..., :3]), ValueError,
     "channels first"),
    (lambda: fbp.conv2d(_P, _X[:, :2, :2]), ValueError, "larger than the padded input"),
    (lambda: fbp.conv2d(_P, _X, stride=0), ValueError, "stride must be ≥ 1"),
    (lambda: fbp.conv2d(_P, _X, stride=(1, -2)), ValueError, "stride must be ≥ 1"),
    (lambda: fbp.conv2d(_P, _X, stride=1.5), TypeError, "stride must be an int"),
    (lambda: fbp.conv2d(_P, _X, padding="FULL"), ValueError, "padding must be"),
    (lambda: fbp.conv2d(_P, _X, padding=-1), ValueError, "padding must be ≥ 0"),
    (lambda: fbp.conv2d(_P, _X, padding=((1,), (1, 1))), ValueError, "padding must be"),
    (lambda: fbp.conv2d(_P, _X.astype(jnp.int32)), TypeError, "x must have a floating"),
    (lambda: fbp.conv2d(_P, _X.astype(jnp.float32)), TypeError, "share one dtype"),
    (lambda: fbp.conv2d(fbp.Conv(_P.W, _P.b[:2]), _X), ValueError, "b must have shape"),
    (lambda: fbp.conv2d(_P, _X[0, 0]), ValueError, "at least rank 3"),
    (lambda: fbp.conv2d(_P, _X, method="fft"), ValueError, "method"),
    (lambda: fbp.conv2d(_P.W, _X), TypeError, "params must be Conv"),
    (lambda: fbp.init_conv(KEY(0), 0, 4, 3), ValueError, "c_in must be a positive int"),
    (lambda: fbp.init_conv(KEY(0), 2, 4, 0), ValueError, "kernel_size must be ≥ 1"),
    (lambda: fbp.init_conv(KEY(0), 2, 4, 3, dtype=jnp.int32), TypeError, "dtype"),
    (lambda: fbp.im2col(_X, 9), ValueError, "larger than the padded input"),
    (lambda: fbp.max_pool2d(_X, 9), ValueError, "window .* is larger than the padded input"),
    (lambda: fbp.max_pool2d(_X, 2, stride=0), ValueError, "stride must be ≥ 1"),
    (lambda: fbp.max_pool2d(_X, 2, padding=2), ValueError, "each side's padding must be <"),
    (lambda: fbp.max_pool2d(_XI, 2), TypeError, "x must have a floating"),
    (lambda: fbp.max_pool2d(_X, (2, 2, 2)), TypeError, "window must be an int or a pair"),
    (lambda: fbp.avg_pool2d(_X[0, 0], 2), ValueError, "at least 3 dimension"),
    (lambda: fbp.avg_pool2d(_X, 9, padding=1), ValueError, "larger than the padded"),
    (lambda: fbp.group_norm(fbp.init_group_norm(4, F64), jnp.ones((2, 3, 3, 4)), 3),
     ValueError, "groups must be a positive int dividing"),
    (lambda: fbp.group_norm(fbp.init_group_norm(3, F64), jnp.ones((2, 3, 3, 4)), 1),
     ValueError, "gamma must have shape"),
    (lambda: fbp.group_norm(fbp.init_group_norm(4, F64), jnp.ones((3, 4)), 1), ValueError,
     "at least 3 dimension"),
    (lambda: fbp.group_norm(fbp.init_group_norm(4), jnp.ones((1, 2, 2, 4)), 1, eps=0.0),
     ValueError, "eps"),
    (lambda: fbp.init_group_norm(0), ValueError, "c must be a positive int"),
    (lambda: fbp.dropout(KEY(0), _X, 1.0), ValueError, "rate must be < 1"),
    (lambda: fbp.dropout(KEY(0), _X, -0.1), ValueError, "rate must be >= 0"),
    (lambda: fbp.dropout(KEY(0), _X, float("nan")), ValueError, "rate must be finite"),
    (lambda: fbp.dropout(KEY(0), _X, 0.5, training=1), TypeError, "training"),
    (lambda: fbp.dropout(jnp.ones(2), _X, 0.5), TypeError, "key must be a jax.random key"),
    (lambda: fbp.dropout(jax.random.split(jax.random.key(0)), _X, 0.5), ValueError,
     "key must be one key"),
    (lambda: fbp.dropout(KEY(0), _XI, 0.5), TypeError, "x must have a floating"),
]


@pytest.mark.parametrize("call, exc, match", BAD, ids=[m for _, _, m in BAD])
def test_bad_input_raises_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
