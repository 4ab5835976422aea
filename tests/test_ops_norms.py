"""batch_norm, layer_norm and residual against plain-jnp references, jacrev and finite differences.

Each reference below is built only from plain ``jnp`` (mean, var, sqrt, tanh), so ``jax.vjp``
of it is JAX's own autodiff through the batch statistics: exactly what the hand-written
rules must reproduce without running it.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import fbp
from fbp.ops.norms import (
    BatchNormParams,
    BatchNormState,
    LayerNormParams,
    _batch_norm_eval,
    batch_norm,
    init_batch_norm,
    init_layer_norm,
    layer_norm,
    residual,
)
from tests._proof import central_vjp, rel_err, vjp

F64 = jnp.float64
EPS = 1e-5
FAST = {"xla_backend_optimization_level": 0}   # these small programs run once: compile fast


# ── independent references: plain jnp only ──

def _row(v, x):
    return v.reshape((1,) * (x.ndim - 1) + v.shape)


def ref_batch_norm(params, x, eps=EPS):
    x2 = x.reshape(-1, x.shape[-1])
    mu, var = jnp.mean(x2, axis=0, keepdims=True), jnp.var(x2, axis=0, keepdims=True)
    y = params.gamma[None] * (x2 - mu) / jnp.sqrt(var + eps) + params.beta[None]
    return y.reshape(x.shape)


def ref_layer_norm(params, x, eps=EPS):
    mu, var = jnp.mean(x, axis=-1, keepdims=True), jnp.var(x, axis=-1, keepdims=True)
    return _row(params.gamma, x) * (x - mu) / jnp.sqrt(var + eps) + _row(params.beta, x)


def tanh_block(p, x):          # built from fbp ops: their rules run inside residual's rule
    return fbp.tanh(fbp.dense(p, x))


def ref_residual(p, x):
    return x + jnp.tanh(x @ p.W.T + _row(p.b, x))


fbp_residual = residual(tanh_block)


def fbp_batch_norm(params, x):
    return batch_norm(params, x)[0]


def _params(key, n, cls):
    k1, k2 = jax.random.split(key)
    return cls(1 + 0.5 * jax.random.normal(k1, (n,), F64), jax.random.normal(k2, (n,), F64))


def _args(op, shape, constant, key):
    k1, k2 = jax.random.split(key)
    n = shape[-1]
    x = 2 * jax.random.normal(k2, shape, F64) + 0.3
    if constant and op == "batch_norm":
        x = x.at[..., n // 2].set(2.5)           # a constant column: batch variance 0
    if constant and op == "layer_norm":
        x = x.at[0].set(2.5)                     # a constant example: its variance is 0
    if op == "batch_norm":
        return _params(k1, n, BatchNormParams), x
    if op == "layer_norm":
        return _params(k1, n, LayerNormParams), x
    ka, kb = jax.random.split(k1)
    return fbp.Dense(jax.random.normal(ka, (n, n), F64) / np.sqrt(n),
                     jax.random.normal(kb, (n,), F64)), x


OPS = {"batch_norm": (fbp_batch_norm, ref_batch_norm),
       "layer_norm": (layer_norm, ref_layer_norm),
       "residual": (fbp_residual, ref_residual)}

# (op, x shape, constant column/row): batch sizes 1, 2, 64, features 1 and 33, 3-d batches.
CASES = [("batch_norm", (2, 33), False), ("batch_norm", (64, 1), False),
         ("batch_norm", (64, 33), True), ("batch_norm", (4, 3, 5), False),
         ("layer_norm", (1, 33), False), ("layer_norm", (64, 33), True),
         ("residual", (64, 33), False)]


def _four_way(f, ref, primals, g):
    """The custom VJP, autodiff of the reference, both full Jacobians, central differences."""
    return (vjp(f, primals, g), vjp(ref, primals, g), jax.jacrev(f, (0, 1))(*primals),
            jax.jacrev(ref, (0, 1))(*primals), central_vjp(f, primals, g))


def _forward(f, ref, primals):
    return f(*primals), ref(*primals)


@pytest.mark.parametrize("op, shape, constant", CASES, ids=str)
def test_four_way(op, shape, constant):
    """Forward and VJP vs the reference's autodiff, jacrev and central differences."""
    f, ref = OPS[op]
    primals = _args(op, shape, constant, jax.random.PRNGKey(sum(shape)))
    y, y_ref = jax.jit(partial(_forward, f, ref), compiler_options=FAST)(primals)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    g = jax.random.normal(jax.random.PRNGKey(7), y.shape, F64)
    ours, theirs, jac, jac_ref, fd = jax.jit(partial(_four_way, f, ref),
                                             compiler_options=FAST)(primals, g)
    assert jax.tree.structure(ours) == jax.tree.structure(primals)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves((y, ours)))
    e_ad, e_jac, e_fd = rel_err(ours, theirs), rel_err(jac, jac_ref), rel_err(ours, fd)
    print(f"\n{op} x{shape}{' const' if constant else ''}: autodiff {e_ad:.1e}  "
          f"jacrev {e_jac:.1e}  finite-diff {e_fd:.1e}")
    assert e_ad <= 1e-12 and e_jac <= 1e-12
    assert e_fd <= 1e-8


@pytest.mark.parametrize("op", OPS)
def test_check_vjp_passes(op):
    """fbp.check_vjp: structure, autodiff, jacobian, finite-diff, jit (equals eager), vmap
    (over a new axis of independent batches: valid for batch_norm too; the per-example check,
    an error for batch_norm, is asked for only for layer_norm), rev-over-rev."""
    f, ref = OPS[op]
    report = fbp.check_vjp(f, *_args(op, (8, 5), False, jax.random.PRNGKey(3)), reference=ref,
                           batch_argnums=() if op == "batch_norm" else None, name=op)
    print("\n" + str(report))
    assert report.ok, str(report)
    checks = {r.check for r in report.rows if r.status == "ok"}
    assert checks >= {"autodiff", "jacobian", "finite-diff", "jit", "rev-over-rev"}
    assert "vmap" in checks


@pytest.mark.parametrize("op, saved", [
    ("batch_norm", lambda m, n: m * n + n + n),        # x̂, 1/σ per feature, γ
    ("layer_norm", lambda m, n: m * n + m + n),        # x̂, 1/σ per example, γ
    ("residual", lambda m, n: n * n + m * n + m * n),  # f's own: dense's W and x, tanh's h
])
def test_saves_what_the_docstring_says_and_less_than_autodiff(op, saved):
    f, ref = OPS[op]
    primals = _args(op, (64, 33), False, jax.random.PRNGKey(0))

    def held(fn):
        pullback = jax.vjp(fn, *primals)[1]
        return sum(leaf.nbytes for leaf in jax.tree.leaves(pullback) if hasattr(leaf, "nbytes"))

    assert held(f) == 8 * saved(64, 33)
    assert held(f) < held(ref)


@pytest.mark.parametrize("fn", [batch_norm, layer_norm, fbp_residual], ids=lambda f: f.__name__)
def test_uses_the_hand_written_rule(fn):
    params, x = _args({"block": "residual"}.get(fn.__name__, fn.__name__), (8, 5), False,
                      jax.random.PRNGKey(0))
    assert "custom_vjp_call" in str(jax.make_jaxpr(fn)(params, x))


# ── batch_norm: the batch of one, vmap, the state ──

@pytest.mark.parametrize("shape", [(33,), (1, 33), (1, 1, 33)])
def test_batch_norm_refuses_a_batch_of_one(shape):
    params, _ = init_batch_norm(33, F64)
    with pytest.raises(ValueError, match="batch of one.*jax.vmap"):
        batch_norm(params, jnp.ones(shape, F64))


def test_batch_norm_under_per_example_vmap_says_what_to_do():
    params, _ = init_batch_norm(5, F64)
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 5), F64)
    with pytest.raises(ValueError, match="call batch_norm on the whole batch"):
        jax.vmap(lambda xi: batch_norm(params, xi)[0])(x)


def test_batch_norm_under_vmap_over_independent_batches_equals_loop():
    params, state = init_batch_norm(5, F64)
    xs = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 5), F64)
    g = jax.random.normal(jax.random.PRNGKey(2), xs.shape, F64)

    def one(x, g):
        y, pull, new_state = jax.vjp(lambda p, x: batch_norm(p, x, state), params, x,
                                     has_aux=True)
        return y, new_state, pull(g)

    batched = jax.jit(jax.vmap(one))(xs, g)
    one = jax.jit(one)
    looped = jax.tree.map(lambda *a: jnp.stack(a), *[one(xs[i], g[i]) for i in range(3)])
    assert rel_err(batched, looped) <= 1e-14


def test_batch_norm_eval_is_the_affine_map_of_the_running_statistics():
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(3), 4)
    params = _params(k1, 5, BatchNormParams)
    state = BatchNormState(jax.random.normal(k2, (5,), F64),
                           jax.random.uniform(k3, (5,), F64, 0.0, 3.0).at[0].set(0.0))
    x = jax.random.normal(k4, (8, 5), F64)
    y, same = batch_norm(params, x, state, training=False)
    scale = np.asarray(params.gamma) / np.sqrt(np.asarray(state.var) + EPS)
    shift = np.asarray(params.beta) - scale * np.asarray(state.mean)
    np.testing.assert_allclose(y, np.asarray(x) * scale + shift, rtol=1e-13, atol=1e-13)
    assert rel_err(same, state) == 0.0
    np.testing.assert_allclose(batch_norm(params, x[0], state, training=False)[0], y[0],
                               rtol=1e-14)   # one example is fine in evaluation

    def affine(p, x):
        return _row(p.gamma, x) * (x - _row(state.mean, x)) / jnp.sqrt(
            _row(state.var, x) + EPS) + _row(p.beta, x)

    g = jax.random.normal(k1, y.shape, F64)
    fn = lambda p, x: batch_norm(p, x, state, training=False)[0]  # noqa: E731
    ours, theirs, fd = jax.jit(lambda p, g: (vjp(fn, p, g), vjp(affine, p, g),
                                             central_vjp(fn, p, g)))((params, x), g)
    assert rel_err(ours, theirs) <= 1e-13 and rel_err(ours, fd) <= 1e-8
    state_grad = jax.grad(lambda s: jnp.sum(g * batch_norm(params, x, s, training=False)[0]))(
        state)
    assert float(jnp.max(jnp.abs(ravel_pytree(state_grad)[0]))) == 0.0


def test_batch_norm_eval_rule_for_the_statistics_matches_autodiff():
    """The private eval rule also returns μ̄ = −γ β̄/σ and v̄ = −½ γ γ̄/σ², checked here."""
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(4), 4)
    params = _params(k1, 5, BatchNormParams)
    x = jax.random.normal(k2, (8, 5), F64)
    mean, var = jax.random.normal(k3, (5,), F64), jax.random.uniform(k4, (5,), F64, 0.1, 2.0)

    def ref(p, x, mean, var):
        return p.gamma[None] * (x - mean[None]) / jnp.sqrt(var[None] + EPS) + p.beta[None]

    ours = lambda p, x, mean, var: _batch_norm_eval(p, x, mean, var, EPS)  # noqa: E731
    primals = (params, x, mean, var)
    g = jax.random.normal(k1, x.shape, F64)
    assert rel_err(vjp(ours, primals, g), vjp(ref, primals, g)) <= 1e-13


def test_running_statistics_after_n_steps_follow_the_formula():
    momentum, n_steps = 0.7, 5
    params, state = init_batch_norm(5, F64)
    xs = 3 * jax.random.normal(jax.random.PRNGKey(5), (n_steps, 8, 5), F64) + 1.0
    step = jax.jit(partial(batch_norm, momentum=momentum))
    for x in xs:
        _, state = step(params, x, state)
    # mean_N = m^N·0 + (1 − m) Σ_t m^(N−1−t) μ_t, var_N = m^N·1 + (1 − m) Σ_t m^(N−1−t) v_t
    w = (1 - momentum) * momentum ** np.arange(n_steps - 1, -1, -1)
    xs = np.asarray(xs)
    mean = w @ xs.mean(axis=1)
    var = momentum**n_steps + w @ xs.var(axis=1)          # biased (ddof = 0)
    np.testing.assert_allclose(state.mean, mean, rtol=1e-13)
    np.testing.assert_allclose(state.var, var, rtol=1e-13)


def test_running_state_carries_no_gradient():
    params, state = init_batch_norm(5, F64)
    x = jax.random.normal(jax.random.PRNGKey(6), (8, 5), F64)

    def of_state(p, x, s):
        new = batch_norm(p, x, s)[1]
        return jnp.sum(new.mean) + jnp.sum(new.var)

    grads = jax.grad(of_state, argnums=(0, 1, 2))(params, x, state)
    assert float(jnp.max(jnp.abs(ravel_pytree(grads)[0]))) == 0.0


def test_state_none_in_training_starts_from_zero_mean_unit_var():
    params, state = init_batch_norm(5, F64)
    x = jax.random.normal(jax.random.PRNGKey(8), (8, 5), F64)
    assert rel_err(batch_norm(params, x)[1], batch_norm(params, x, state)[1]) == 0.0
    np.testing.assert_allclose(batch_norm(params, x, momentum=0.0)[1].var,
                               np.var(np.asarray(x), axis=0), rtol=1e-13)


# ── layer_norm: vmap and one feature ──

def test_layer_norm_per_example_vmap_equals_batch_and_loop():
    params = _params(jax.random.PRNGKey(9), 5, LayerNormParams)
    x = jax.random.normal(jax.random.PRNGKey(10), (8, 5), F64)
    g = jax.random.normal(jax.random.PRNGKey(11), (8, 5), F64)

    def one(x, g):
        y, pull = jax.vjp(layer_norm, params, x)
        return y, pull(g)

    batched = jax.vmap(one)(x, g)
    looped = jax.tree.map(lambda *a: jnp.stack(a), *[one(x[i], g[i]) for i in range(8)])
    assert rel_err(batched, looped) <= 1e-14
    np.testing.assert_allclose(batched[0], layer_norm(params, x), rtol=1e-14)
    per_example_x_bar = vjp(layer_norm, (params, x), g)[1]
    np.testing.assert_allclose(batched[1][1], per_example_x_bar, rtol=1e-13, atol=1e-15)


def test_layer_norm_of_one_feature_is_beta_with_zero_input_gradient():
    params = _params(jax.random.PRNGKey(12), 1, LayerNormParams)
    x = jax.random.normal(jax.random.PRNGKey(13), (8, 1), F64)
    y, pull = jax.vjp(layer_norm, params, x)
    np.testing.assert_array_equal(y, jnp.broadcast_to(params.beta, (8, 1)))
    assert float(jnp.max(jnp.abs(pull(jnp.ones_like(y))[1]))) == 0.0


# ── residual: the identity path and aux ──

def test_residual_passes_the_cotangent_through_the_identity():
    """With f ≡ 0 (W = 0, f(x) = tanh(b) with b = 0) the rule is x̄ = ḡ exactly."""
    n = 5
    p = fbp.Dense(jnp.zeros((n, n), F64), jnp.zeros((n,), F64))
    x = jax.random.normal(jax.random.PRNGKey(14), (8, n), F64)
    g = jax.random.normal(jax.random.PRNGKey(15), (8, n), F64)
    np.testing.assert_array_equal(vjp(fbp_residual, (p, x), g)[1], g)


def test_residual_f_must_take_what_is_differentiated_through_params():
    """As documented: closing over a value an outer grad differentiates is a JAX error."""
    x = jax.random.normal(jax.random.PRNGKey(17), (5,), F64)

    def closing_over(c):
        return jnp.sum(residual(lambda p, x: jnp.tanh(p * x * c))(jnp.ones(5, F64), x))

    with pytest.raises(jax.errors.UnexpectedTracerError):
        jax.grad(closing_over)(2.0)
    through_params = jax.grad(lambda pc: jnp.sum(residual(
        lambda pc, x: jnp.tanh(pc[0] * x * pc[1]))(pc, x)))((jnp.ones(5, F64), 2.0))
    expected = jax.grad(lambda pc: jnp.sum(x + jnp.tanh(pc[0] * x * pc[1])))((jnp.ones(5, F64),
                                                                              2.0))
    assert rel_err(through_params, expected) <= 1e-14


def test_residual_with_aux_carries_a_batch_norm_state():
    def bn_block(params, x):
        (d, bn), state = params
        z, new_state = batch_norm(bn, fbp.dense(d, x), state)
        return fbp.sigmoid(z), new_state

    def ref(params, x):
        (d, bn), _ = params
        return x + jax.nn.sigmoid(ref_batch_norm(bn, x @ d.W.T + _row(d.b, x)))

    n = 5
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(16), 3)
    bn, state = init_batch_norm(n, F64)
    d = fbp.Dense(jax.random.normal(k1, (n, n), F64), jax.random.normal(k2, (n,), F64))
    params, x = ((d, bn), state), jax.random.normal(k3, (8, n), F64)
    y, aux = residual(bn_block, has_aux=True)(params, x)
    assert rel_err(aux, batch_norm(bn, fbp.dense(d, x), state)[1]) == 0.0
    g = jax.random.normal(k1, y.shape, F64)
    fn = lambda p, x: residual(bn_block, has_aux=True)(p, x)[0]  # noqa: E731
    assert rel_err(vjp(fn, (params, x), g), vjp(ref, (params, x), g)) <= 1e-12
    state_grad = jax.grad(lambda s: jnp.sum(residual(bn_block, has_aux=True)(
        ((d, bn), s), x)[1].mean))(state)
    assert float(jnp.max(jnp.abs(ravel_pytree(state_grad)[0]))) == 0.0


# ── bad input ──

_bn, _st = init_batch_norm(3, F64)
_ln = init_layer_norm(3, F64)
_x = jnp.ones((4, 3), F64)

BAD = [
    (lambda: batch_norm(BatchNormParams(jnp.ones(4, F64), _bn.beta), _x), ValueError, "gamma"),
    (lambda: batch_norm(BatchNormParams(_bn.gamma, jnp.ones(2, F64)), _x), ValueError, "beta"),
    (lambda: batch_norm(_bn, jnp.ones((4, 3), jnp.int32)), TypeError, "x must have a floating"),
    (lambda: batch_norm(_bn, _x.astype(jnp.float32)), TypeError, "share one dtype"),
    (lambda: batch_norm(_bn, _x, momentum=1.5), ValueError, "momentum"),
    (lambda: batch_norm(_bn, _x, momentum=-0.1), ValueError, "momentum"),
    (lambda: batch_norm(_bn, _x, momentum=float("nan")), ValueError, "momentum"),
    (lambda: batch_norm(_bn, _x, eps=0.0), ValueError, "eps"),
    (lambda: batch_norm(_bn, _x, eps=-1e-5), ValueError, "eps"),
    (lambda: batch_norm(_bn, _x, eps=float("inf")), ValueError, "eps"),
    (lambda: batch_norm(_bn, _x, training=1), TypeError, "training"),
    (lambda: batch_norm(_bn, _x, training=False), ValueError, "state"),
    (lambda: batch_norm(_bn, _x, BatchNormState(_st.mean, -_st.var)), ValueError, "state.var"),
    (lambda: batch_norm(_bn, _x, BatchNormState(jnp.zeros(2, F64), _st.var)), ValueError,
     "state.mean"),
    (lambda: batch_norm(_bn, _x, "state"), TypeError, "state"),
    (lambda: batch_norm((_bn.gamma,), _x), TypeError, "BatchNormParams"),
    (lambda: layer_norm(LayerNormParams(jnp.ones(4, F64), _ln.beta), _x), ValueError, "gamma"),
    (lambda: layer_norm(_ln, jnp.ones((4, 3), jnp.int32)), TypeError, "x must have a floating"),
    (lambda: layer_norm(_ln, _x, eps=float("nan")), ValueError, "eps"),
    (lambda: layer_norm(_ln, _x, eps=0), ValueError, "eps"),
    (lambda: init_batch_norm(0), ValueError, "n must be a positive int"),
    (lambda: init_layer_norm(3, jnp.int32), TypeError, "dtype"),
    (lambda: residual("not a function"), TypeError, "residual needs a function"),
    (lambda: residual(tanh_block, has_aux=1), TypeError, "has_aux"),
    (lambda: residual(lambda p, x: x[..., :2])(None, _x), ValueError, "keep the shape"),
    (lambda: residual(tanh_block)(fbp.Dense(jnp.ones((3, 3), F64), jnp.ones(3, F64)),
                                  jnp.ones((4, 3), jnp.int32)), TypeError, "x must have"),
]


@pytest.mark.parametrize("call, exc, match", BAD, ids=[m for _, _, m in BAD])
def test_bad_input_raises_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
