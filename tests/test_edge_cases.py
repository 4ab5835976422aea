"""Issue 13: no silent wrong gradient, fit's contract, errors that name what is wrong.

One test per bullet; each failed on the code before the fix (the values are in the notes).
Where JAX's own derivative is NaN (bce at ŷ = 1) the rule is held to the analytic limit.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fbp
from fbp.train import accumulate_grads

F64, F32 = jnp.float64, jnp.float32
N_BIG = 70_000        # > 65,504, float16's largest number


# ── silent 1: low-precision losses over ≥ 65,520 elements ──

def _big_args(loss, dtype):
    rng = np.random.default_rng(0)
    if loss == "softmax_cross_entropy":
        z = jnp.asarray(rng.standard_normal((N_BIG, 3)), dtype)
        return z, jnp.asarray(rng.integers(0, 3, N_BIG))
    z = jnp.asarray(rng.standard_normal(N_BIG), dtype)
    y = jnp.asarray(rng.uniform(0.0, 1.0, N_BIG), dtype)
    return (jax.nn.sigmoid(z), y) if loss == "bce" else (z, y)


def _as_f32(args):
    return tuple(a.astype(F32) if jnp.issubdtype(a.dtype, jnp.floating) else a for a in args)


def _agrees_with_f32(g, ref):
    """Elementwise within the low dtype's rounding, and no bias: a count rounded in bfloat16
    (70,000 → 70,144) scales every gradient by 0.998, which the projection ratio shows."""
    g, ref = np.asarray(g, np.float64), np.asarray(ref, np.float64)
    scale = np.max(np.abs(ref))
    np.testing.assert_allclose(g, ref, rtol=2e-2, atol=2e-2 * scale)
    assert abs(np.vdot(g, ref) / np.vdot(ref, ref) - 1) < 5e-4


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("loss", ["bce_with_logits", "mse", "bce", "softmax_cross_entropy"])
def test_low_precision_loss_gradient_over_70000_elements_matches_float32(loss, dtype):
    f = getattr(fbp, loss)
    args = _big_args(loss, dtype)
    grad = jax.jit(jax.grad(f))              # jit: one compile, not one per primitive
    g = grad(*args)
    assert g.dtype == dtype
    ref = grad(*_as_f32(args))                              # the same numbers, in float32
    _agrees_with_f32(g, ref)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=["float16", "bfloat16"])
def test_low_precision_backprop_and_hvp_over_70000_examples_match_float32(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N_BIG, 1)) * 0.5
    y = (rng.uniform(size=(N_BIG, 1)) > 0.5).astype(np.float64)
    params = [fbp.Dense(jnp.asarray([[0.7]], F32), jnp.asarray([0.1], F32))]
    low = [fbp.Dense(p.W.astype(dtype), p.b.astype(dtype)) for p in params]
    x_low, y_low = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
    backprop = jax.jit(lambda p, x, y: fbp.backprop(p, x, y, "sigmoid", "mse"))
    hvp = jax.jit(lambda p, x, y: fbp.hvp(p, x, y, p, "sigmoid", "mse"))
    out, ref = backprop(low, x_low, y_low), backprop(params, x_low.astype(F32), y_low.astype(F32))
    _agrees_with_f32(out.deltas[0], ref.deltas[0])          # δ_L = 2(ŷ − y)/N per example
    hv, hv_ref = hvp(low, x_low, y_low), hvp(params, x_low.astype(F32), y_low.astype(F32))
    for a, b in zip(jax.tree.leaves(hv), jax.tree.leaves(hv_ref), strict=True):
        assert float(jnp.max(jnp.abs(a))) > 0
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b), rtol=5e-2)


# ── silent 2: labels outside [0, C) read the same way by forward and rule ──

Z2 = jnp.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]])


@pytest.mark.parametrize("bad", [-1, 3, -7])
def test_label_outside_range_under_jit_is_nan_in_loss_and_gradient_alike(bad):
    labels = jnp.array([bad, 0])
    loss, g = jax.jit(jax.value_and_grad(fbp.softmax_cross_entropy))(Z2, labels)
    assert math.isnan(float(loss))
    assert bool(jnp.all(jnp.isnan(g[0])))                  # the bad example's row: NaN
    # the good example's row is its own rule, (softmax − onehot)/m
    want = (jax.nn.softmax(Z2[1]) - jnp.array([1.0, 0.0, 0.0])) / 2
    np.testing.assert_allclose(g[1], want, rtol=1e-12)
    # the forward alone (no rule) reads the label the same way
    plain = jax.jit(lambda z, t: fbp.softmax_cross_entropy(z, t))(Z2, labels)
    assert math.isnan(float(plain))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        fbp.softmax_cross_entropy(Z2, labels)              # concrete: refused up front


def _class_problem(m=8):
    key = jax.random.key(0)
    x = jax.random.normal(key, (m, 2), F64)
    return fbp.init_mlp(key, [2, 3, 2], dtype=F64), x


def _ce_loss(p, x, y):
    return fbp.mlp_loss(p, x, y, "tanh", "softmax_cross_entropy")


@pytest.mark.parametrize("bad", [-1, 2])
def test_fit_and_data_parallel_check_concrete_labels_before_compiling(bad):
    params, x = _class_problem()
    y = jnp.array([0, 1, 1, 0, 1, 0, 1, bad])
    with pytest.raises(ValueError, match=r"y \(data\[1\]\) holds integer class labels.*"
                                         r"2 classes: labels must lie in \[0, 2\)"):
        fbp.fit(_ce_loss, params, (x, y), optax.sgd(0.1), 2)
    with pytest.raises(ValueError, match=r"y holds integer class labels"):
        fbp.data_parallel(jax.value_and_grad(_ce_loss))(params, x, y)
    good = fbp.fit(_ce_loss, params, (x, jnp.where(y == bad, 0, y)), optax.sgd(0.1), 2)
    assert bool(jnp.all(jnp.isfinite(good.losses)))


def test_fit_leaves_the_labels_of_masked_positions_alone():
    params, x = _class_problem()
    y = jnp.array([0, 1, 1, 0, 1, 0, -1, -1])               # −1: padding

    def masked(p, x, y):
        logits = fbp.mlp(p, x, "tanh")
        return fbp.softmax_cross_entropy(logits, jnp.maximum(y, 0), where=y >= 0)

    result = fbp.fit(masked, params, (x, y), optax.sgd(0.1), 2)
    assert bool(jnp.all(jnp.isfinite(result.losses)))


# ── silent 3: bce at ŷ exactly 0 or 1 ──

def test_bce_at_the_ends_gives_the_analytic_limit():
    y_hat, y = jnp.array([1.0, 0.0]), jnp.array([1.0, 0.0])
    assert float(fbp.bce(y_hat, y)) == 0.0
    # L = −(1/N)[y log ŷ + (1 − y) log(1 − ŷ)]: with y = 1 only −log ŷ / N is left, ∂ = −1/(N ŷ)
    np.testing.assert_array_equal(jax.grad(fbp.bce)(y_hat, y), [-1 / 2, 1 / 2])
    # against the wrong label the derivative really is infinite: +1/(N(1 − ŷ)) at ŷ = 1
    assert float(jax.grad(fbp.bce)(jnp.array([1.0]), jnp.array([0.0]))[0]) == math.inf


def test_bce_of_a_saturated_float32_sigmoid_has_a_finite_gradient():
    z = jnp.array([20.0], F32)                          # sigmoid(20) rounds to 1 in float32
    assert float(jax.nn.sigmoid(z)[0]) == 1.0
    g = jax.grad(lambda z: fbp.bce(fbp.sigmoid(z), jnp.ones_like(z)))(z)
    # analytic: d/dz −log σ(z) = σ(z) − 1 = −2.06e-9; float32's σ(20) = 1 makes σ' = 0
    analytic = 1 / (1 + math.exp(20.0)) * -1
    assert bool(jnp.all(jnp.isfinite(g)))
    assert abs(float(g[0]) - analytic) <= 1.01 * abs(analytic)


# ── fit's contract ──

def _bce_problem():
    key = jax.random.key(3)
    x = jax.random.normal(key, (8, 2), F64)
    y = (x[:, :1] > 0).astype(F64)
    return fbp.init_mlp(key, [2, 3, 1], dtype=F64), x, y


def _bce_loss(p, x, y):
    return fbp.mlp_loss(p, x, y, "tanh")


def test_fit_trains_with_an_optimiser_whose_state_holds_the_params():
    params, x, y = _bce_problem()
    opt = optax.contrib.prodigy(1.0)
    result = fbp.fit(_bce_loss, params, (x, y), opt, 3)
    # the same three updates by hand, in Python
    @jax.jit
    def step(p, s):
        u, s = opt.update(jax.grad(_bce_loss)(p, x, y), s, p)
        return optax.apply_updates(p, u), s

    p, s = params, opt.init(params)
    for _ in range(3):
        p, s = step(p, s)
    for a, b in zip(jax.tree.leaves(result.params), jax.tree.leaves(p), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10)


def test_fit_threads_a_batch_norm_state_and_names_loss_fn_without_it():
    key = jax.random.key(4)
    x = jax.random.normal(key, (8, 2), F64)
    y = (x[:, :1] > 0).astype(F64)
    params, state = fbp.init_mlp(key, [2, 3, 1], dtype=F64, norm="batch")
    with pytest.raises(TypeError, match=r"loss_fn returns a pair \(loss, aux\).*state="):
        fbp.fit(lambda p, x, y: fbp.mlp_loss(p, x, y, state=state), params, (x, y),
                optax.sgd(0.1), 2)

    def loss(p, x, y, s):
        return fbp.mlp_loss(p, x, y, "tanh", state=s)

    result = fbp.fit(loss, params, (x, y), optax.sgd(0.1), 3, state=state)
    p, s, losses = params, state, []
    for _ in range(3):
        (value, s_next), g = jax.value_and_grad(loss, has_aux=True)(p, x, y, s)
        p, s = jax.tree.map(lambda a, b: a - 0.1 * b, p, g), s_next
        losses.append(value)
    np.testing.assert_allclose(result.losses, losses, rtol=1e-12)
    for a, b in zip(jax.tree.leaves(result.state), jax.tree.leaves(s), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_fit_names_grad_fn_and_its_contract_when_it_returns_grads_alone():
    params, x, y = _bce_problem()
    with pytest.raises(TypeError, match=r"grad_fn\(params, x, y\) must return \(loss, grads\)"
                                        r".*grads alone"):
        fbp.fit(None, params, (x, y), optax.sgd(0.1), 2, grad_fn=jax.grad(_bce_loss))


def test_plain_pairs_as_params_get_gradients_in_their_own_structure():
    params, x, y = _bce_problem()
    pairs = [(p.W, p.b) for p in params]
    grads = fbp.backprop(pairs, x, y, "tanh").grads
    assert jax.tree.structure(grads) == jax.tree.structure(pairs)
    assert jax.tree.structure(fbp.hvp(pairs, x, y, pairs, "tanh")) == jax.tree.structure(pairs)
    trained = fbp.fit(None, pairs, (x, y), optax.sgd(0.1), 3, grad_fn=fbp.backprop_grad_fn("tanh"))
    named = fbp.fit(None, params, (x, y), optax.sgd(0.1), 3, grad_fn=fbp.backprop_grad_fn("tanh"))
    for a, b in zip(jax.tree.leaves(trained.params), jax.tree.leaves(named.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-14)


def test_resuming_with_clip_norm_from_an_unclipped_opt_state_names_opt_state():
    params, x, y = _bce_problem()
    first = fbp.fit(_bce_loss, params, (x, y), optax.adam(1e-2), 2)
    with pytest.raises(ValueError, match=r"opt_state does not match.*clip_norm"):
        fbp.fit(_bce_loss, first.params, (x, y), optax.adam(1e-2), 2, clip_norm=1.0,
                opt_state=first.opt_state)


# ── errors that were raw or misleading ──

@pytest.mark.parametrize("n_out, n_in", [(3, 0), (0, 4)])
def test_zero_width_dense_has_empty_gradients(n_out, n_in):
    W, b, x = jnp.ones((n_out, n_in)), jnp.zeros((n_out,)), jnp.ones((2, n_in))
    W_bar, x_bar = jax.grad(lambda W, x: jnp.sum(fbp.dense(fbp.Dense(W, b), x)),
                            argnums=(0, 1))(W, x)
    assert W_bar.shape == (n_out, n_in) and x_bar.shape == (2, n_in)
    np.testing.assert_array_equal(x_bar, np.zeros((2, n_in)))   # z has no n_in-dependence


def test_init_mlp_names_a_bad_key_and_takes_typed_keys():
    with pytest.raises(TypeError, match=r"key must be a jax\.random key.*got int 0"):
        fbp.init_mlp(0, [2, 3])
    with pytest.raises(ValueError, match=r"key must be one key; got a stack of keys of shape "
                                         r"\(3, 2\)"):
        fbp.init_mlp(jax.random.split(jax.random.PRNGKey(0), 3), [2, 3])
    typed = fbp.init_mlp(jax.random.key(0), [2, 3])
    raw = fbp.init_mlp(jax.random.PRNGKey(0), [2, 3])
    np.testing.assert_array_equal(typed[0].W, raw[0].W)       # the same threefry bits


def test_numpy_integers_are_accepted_as_sizes_and_steps():
    key = jax.random.key(0)
    params = fbp.init_mlp(key, [np.int64(2), np.int32(3), np.uint8(1)])
    assert [p.W.shape for p in params] == [(3, 2), (1, 3)]
    assert fbp.init_dense(key, np.int64(2), np.int16(4)).W.shape == (4, 2)
    assert fbp.init_batch_norm(np.int64(3))[0].gamma.shape == (3,)
    assert fbp.init_layer_norm(np.int32(3)).gamma.shape == (3,)
    x = jax.random.normal(key, (4, 2))
    y = jnp.zeros((4, 1))
    out = fbp.fit(fbp.mlp_loss, params, (x, y), optax.sgd(0.1), np.int64(2),
                  micro_batches=np.int32(2))
    assert out.losses.shape == (2,)
    loss, _ = accumulate_grads(jax.value_and_grad(fbp.mlp_loss), params, x, y, np.int64(2))
    assert np.isfinite(float(loss))
    assert fbp.numerical_grad(lambda a: jnp.sum(a**2), jnp.ones(3), argnums=np.int64(0),
                              batch_size=np.int64(2)).shape == (3,)


def test_norm_inits_default_to_the_dense_dtype_and_dtype_hints_work():
    dense_dtype = fbp.init_dense(jax.random.key(0), 2, 3).W.dtype
    assert fbp.init_batch_norm(3)[0].gamma.dtype == dense_dtype
    assert fbp.init_batch_norm(3)[1].var.dtype == dense_dtype
    assert fbp.init_layer_norm(3).gamma.dtype == dense_dtype
    x = jnp.ones((4, 3), F64)
    ln32 = fbp.init_layer_norm(3, F32)
    with pytest.raises(TypeError, match=r"init_layer_norm\(3, dtype=x\.dtype\)") as err:
        fbp.layer_norm(ln32, x)
    assert "x.astype(x.dtype)" not in str(err.value)
    fbp.layer_norm(fbp.init_layer_norm(3, dtype=x.dtype), x)              # the hint works
    bn32, state32 = fbp.init_batch_norm(3, F32)
    with pytest.raises(TypeError, match=r"init_batch_norm\(3, dtype=x\.dtype\)"):
        fbp.batch_norm(bn32, x, state32)
    fbp.batch_norm(*fbp.init_batch_norm(3, dtype=x.dtype)[:1], x)
    fbp.layer_norm(ln32, x.astype(jnp.float32))                          # the other hint


@pytest.mark.parametrize("labels, fix", [
    (jnp.array([True, False]), "labels.astype(jnp.int32)"),
    (jnp.eye(3, dtype=bool)[:2], "labels.astype(logits.dtype)"),
])
def test_bool_labels_get_a_hint_that_works(labels, fix):
    logits = jnp.ones((2, 3), F64)
    with pytest.raises(TypeError, match=r"got bool.*" + fix.replace(".", r"\.").replace(
            "(", r"\(").replace(")", r"\)")):
        fbp.softmax_cross_entropy(logits, labels)
    fixed = labels.astype(jnp.int32) if "int32" in fix else labels.astype(logits.dtype)
    assert np.isfinite(float(fbp.softmax_cross_entropy(logits, fixed)))


def test_mlp_names_the_layers_whose_widths_do_not_chain():
    key = jax.random.key(0)
    bad = [fbp.init_dense(key, 2, 3), fbp.init_dense(key, 4, 1)]
    x = jnp.ones((5, 2))
    msg = (r"params\[1\]\.W has shape \(1, 4\), so layer 1 expects inputs of width 4; but "
           r"params\[0\]\.W has shape \(3, 2\), so layer 0 gives 3")
    for f in (fbp.mlp, lambda p, x: fbp.backprop(p, x, jnp.zeros((5, 1))),
              lambda p, x: fbp.hvp(p, x, jnp.zeros((5, 1)), p)):
        with pytest.raises(ValueError, match=msg):
            f(bad, x)
    good = fbp.init_mlp(key, [2, 3, 1])
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 2\): params\[0\]\.W has "
                                         r"shape \(3, 2\), so layer 0 expects inputs of width 2; "
                                         r"got x of shape \(5, 4\), which gives 4"):
        fbp.mlp(good, jnp.ones((5, 4)))


def test_a_dict_among_the_layers_is_named_by_its_index():
    good = fbp.init_mlp(jax.random.key(0), [2, 3, 1])
    with pytest.raises(TypeError, match=r"params\[1\] must be a layer.*got dict"):
        fbp.mlp([good[0], {"W": good[1].W, "b": good[1].b}], jnp.ones((4, 2)))


def test_batch_norm_on_an_empty_batch_says_empty():
    params, state = fbp.init_batch_norm(3)
    with pytest.raises(ValueError, match=r"an empty batch") as err:
        fbp.batch_norm(params, jnp.ones((0, 3)), state)
    assert "a batch of one" not in str(err.value)


def test_numerical_grad_names_argnums_when_it_selects_an_integer():
    with pytest.raises(ValueError, match=r"argnums=1 selects no floating-point argument "
                                         r"\(args\[1\]: int\)"):
        fbp.numerical_grad(lambda a, n: jnp.sum(a) * n, jnp.ones(2), 3, argnums=1)


# ── batch-norm conventions ──

def test_unbiased_running_variance_follows_pytorchs_formula():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 3))
    params, state = fbp.init_batch_norm(3, F64)
    p = 0.1                                      # PyTorch's momentum: the weight of the new value
    _, new = fbp.batch_norm(params, jnp.asarray(x), state, momentum=1 - p, unbiased_var=True)
    np.testing.assert_allclose(new.var, (1 - p) * 1.0 + p * np.var(x, axis=0, ddof=1), rtol=1e-14)
    np.testing.assert_allclose(new.mean, p * np.mean(x, axis=0), rtol=1e-14)
    _, biased = fbp.batch_norm(params, jnp.asarray(x), state, momentum=1 - p)
    np.testing.assert_allclose(biased.var, (1 - p) + p * np.var(x, axis=0), rtol=1e-14)
    for word in ("PyTorch", "Flax", "unbiased_var"):
        assert word in fbp.batch_norm.__doc__


def test_mlp_passes_norm_settings_to_its_norm_layers():
    key = jax.random.key(6)
    x = jax.random.normal(key, (5, 2), F64)
    params, state = fbp.init_mlp(key, [2, 3, 1], dtype=F64, norm="batch")
    _, new = fbp.mlp(params, x, state=state, momentum=0.5, eps=0.1, unbiased_var=True)
    (d, bn), s0 = params[0], state[0]
    _, want = fbp.batch_norm(bn, fbp.dense(d, x), s0, momentum=0.5, eps=0.1, unbiased_var=True)
    np.testing.assert_allclose(new[0].var, want.var, rtol=1e-14)
    lparams = fbp.init_mlp(key, [2, 3, 1], dtype=F64, norm="layer")
    out = fbp.mlp(lparams, x, "tanh", eps=0.5)
    (d, ln), last = lparams
    want = fbp.dense(last, fbp.tanh(fbp.layer_norm(ln, fbp.dense(d, x), 0.5)))
    np.testing.assert_allclose(out, want, rtol=1e-14)
    assert float(jnp.max(jnp.abs(out - fbp.mlp(lparams, x, "tanh")))) > 1e-3
