"""fbp.train: fit against a hand-written gradient-descent loop on a reference model,
gradient accumulation against the full batch, clipping bounds, compilation, validation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fbp
from fbp.train import accumulate_grads, backprop_grad_fn, fit


def reference_loss(params, x, y):
    """The same MLP and loss from plain jnp / jax.nn / optax only (no fbp rule)."""
    a = x
    for W, b in params[:-1]:
        a = jax.nn.sigmoid(a @ W.T + b[None, :])
    W, b = params[-1]
    return jnp.mean(optax.losses.sigmoid_binary_cross_entropy(a @ W.T + b[None, :], y))


reference_value_and_grad = jax.jit(jax.value_and_grad(reference_loss))


def fbp_loss(params, x, y):
    return fbp.mlp_loss(params, x, y, "sigmoid", "bce_with_logits")


def make_problem(dtype=jnp.float64, m=24, sizes=(3, 5, 4, 1), seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    params = fbp.init_mlp(k1, list(sizes), dtype=dtype)
    x = jax.random.normal(k2, (m, sizes[0]), dtype)
    y = (jax.random.uniform(k3, (m, sizes[-1])) > 0.5).astype(dtype)
    return params, x, y


def rel_error(a, b):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    diff = sum(jnp.sum((u - v) ** 2) for u, v in pairs)
    norm = sum(jnp.sum(v**2) for v in jax.tree.leaves(b))
    return float(jnp.sqrt(diff / norm))


@jax.jit
def _gd_step(params, x, y, lr):
    loss, grads = jax.value_and_grad(reference_loss)(params, x, y)
    return jax.tree.map(lambda p, g: p - lr * g, params, grads), loss


def python_gd(params, batches, lr):
    """θ ← θ − η ∇L(θ) written as a Python loop with autodiff of the reference loss."""
    losses = []
    for x, y in batches:
        params, loss = _gd_step(params, x, y, lr)
        losses.append(loss)
    return params, jnp.stack(losses)


SGD = optax.sgd(0.3)


@pytest.mark.parametrize("use_backprop", [False, True], ids=["autodiff-of-fbp", "backprop"])
def test_fit_full_batch_equals_hand_written_gradient_descent(use_backprop):
    params, x, y = make_problem()
    steps = 25
    if use_backprop:
        result = fit(None, params, (x, y), SGD, steps, grad_fn=backprop_grad_fn("sigmoid"))
    else:
        result = fit(fbp_loss, params, (x, y), SGD, steps)
    want_params, want_losses = python_gd(params, [(x, y)] * steps, 0.3)
    chex.assert_trees_all_close(result.params, want_params, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(result.losses, want_losses, rtol=1e-12)
    assert result.losses.shape == (steps,)
    np.testing.assert_allclose(result.losses[0], reference_loss(params, x, y), rtol=1e-14)


def test_fit_stacked_batches_scans_one_batch_per_step():
    params, x, y = make_problem(m=5 * 8)
    xs, ys = x.reshape(5, 8, -1), y.reshape(5, 8, -1)
    result = fit(fbp_loss, params, (xs, ys), SGD, 5, stacked=True)
    want_params, want_losses = python_gd(params, list(zip(xs, ys, strict=True)), 0.3)
    chex.assert_trees_all_close(result.params, want_params, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(result.losses, want_losses, rtol=1e-12)


def test_record_sees_the_parameters_of_each_step():
    params, x, y = make_problem()
    result = fit(fbp_loss, params, (x, y), SGD, 4, record=lambda p: p[0].W)
    want, _ = python_gd(params, [(x, y)] * 3, 0.3)
    assert result.records.shape == (4,) + params[0].W.shape
    np.testing.assert_array_equal(result.records[0], params[0].W)
    np.testing.assert_allclose(result.records[3], want[0].W, rtol=1e-12)


def test_resume_from_opt_state_continues_adam():
    params, x, y = make_problem()
    adam = optax.adam(0.05)
    whole = fit(fbp_loss, params, (x, y), adam, 6)
    first = fit(fbp_loss, params, (x, y), adam, 3)
    second = fit(fbp_loss, first.params, (x, y), adam, 3, opt_state=first.opt_state)
    chex.assert_trees_all_close(second.params, whole.params, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(jnp.concatenate([first.losses, second.losses]), whole.losses,
                               rtol=1e-12)


def test_vmap_over_fit_trains_many_networks_like_a_loop():
    _, x, y = make_problem()
    keys = jax.random.split(jax.random.key(7), 3)
    stacked = jax.vmap(lambda k: fbp.init_mlp(k, [3, 5, 4, 1], dtype=jnp.float64))(keys)
    many = jax.vmap(lambda p: fit(fbp_loss, p, (x, y), SGD, 10).params)(stacked)
    for i in range(3):
        one = jax.tree.map(lambda a, i=i: a[i], stacked)
        want, _ = python_gd(one, [(x, y)] * 10, 0.3)
        chex.assert_trees_all_close(jax.tree.map(lambda a, i=i: a[i], many), want,
                                    rtol=1e-11, atol=1e-13)


# ── gradient accumulation (§11.3) ──

@pytest.mark.parametrize("dtype, tol", [(jnp.float64, 1e-12), (jnp.float32, 1e-6)])
@pytest.mark.parametrize("k", [1, 8, 48])
@pytest.mark.parametrize("use_backprop", [False, True], ids=["autodiff-of-fbp", "backprop"])
def test_accumulated_gradient_equals_full_batch(dtype, tol, k, use_backprop):
    params, x, y = make_problem(dtype, m=96)
    grad_fn = backprop_grad_fn("sigmoid") if use_backprop else jax.value_and_grad(fbp_loss)
    loss, grads = jax.jit(accumulate_grads, static_argnums=(0, 4))(grad_fn, params, x, y, k)
    # the full-batch gradient, computed independently (reference model, plain autodiff)
    full_loss, full = reference_value_and_grad(params, x, y)
    assert rel_error(grads, full) <= tol
    assert abs(float(loss - full_loss)) <= tol * abs(float(full_loss))
    chex.assert_trees_all_equal_shapes_and_dtypes(grads, params)


def test_accumulation_with_integer_labels_and_softmax():
    k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
    params = fbp.init_mlp(k1, [4, 6, 3], dtype=jnp.float64)
    x = jax.random.normal(k2, (12, 4), jnp.float64)
    labels = jax.random.randint(k3, (12,), 0, 3)
    loss_fn = lambda p, x, y: fbp.mlp_loss(p, x, y, "tanh", "softmax_cross_entropy")

    def reference(p, x, y):
        h = jnp.tanh(x @ p[0].W.T + p[0].b[None, :])
        z = h @ p[1].W.T + p[1].b[None, :]
        return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(z, y))

    accumulate = jax.jit(accumulate_grads, static_argnums=(0, 4))
    _, grads = accumulate(jax.value_and_grad(loss_fn), params, x, labels, 3)
    assert rel_error(grads, jax.jit(jax.grad(reference))(params, x, labels)) <= 1e-12


def test_accumulation_peak_memory_is_set_by_the_micro_batch():
    params, x, y = make_problem(jnp.float32, m=2048, sizes=(16, 256, 256, 1))
    grad_fn = jax.value_and_grad(fbp_loss)

    def temp_bytes(k):
        f = jax.jit(lambda p, x, y: accumulate_grads(grad_fn, p, x, y, k))
        return f.lower(params, x, y).compile().memory_analysis().temp_size_in_bytes

    full, eighth = temp_bytes(1), temp_bytes(8)
    activations = 2048 * 256 * 4          # one (m, 256) float32 activation of the full batch
    assert full >= activations            # the full batch keeps its activations alive
    assert eighth < full / 4              # k = 8 micro-batches: a fraction of that


def test_fit_with_micro_batches_equals_full_batch_fit():
    params, x, y = make_problem(m=24)
    whole = fit(fbp_loss, params, (x, y), SGD, 10)
    micro = fit(fbp_loss, params, (x, y), SGD, 10, micro_batches=6)
    chex.assert_trees_all_close(micro.params, whole.params, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(micro.losses, whole.losses, rtol=1e-12)


# ── clipping ──

@pytest.mark.parametrize("via", ["clip_norm", "optax.chain"])
@pytest.mark.parametrize("max_norm", [1e-3, 0.05, 1e3])
def test_clipping_bounds_the_update(via, max_norm):
    params, x, y = make_problem()
    lr = 0.3
    if via == "clip_norm":
        result = fit(fbp_loss, params, (x, y), optax.sgd(lr), 1, clip_norm=max_norm)
    else:
        chained = optax.chain(optax.clip_by_global_norm(max_norm), optax.sgd(lr))
        result = fit(fbp_loss, params, (x, y), chained, 1)
    _, grads = reference_value_and_grad(params, x, y)
    g_norm = float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads))))
    update = jax.tree.map(lambda a, b: a - b, result.params, params)
    u_norm = float(jnp.sqrt(sum(jnp.sum(u**2) for u in jax.tree.leaves(update))))
    assert u_norm <= lr * max_norm * (1 + 1e-12)
    np.testing.assert_allclose(u_norm, lr * min(g_norm, max_norm), rtol=1e-10)
    # the direction is the gradient's: update = −η · g · min(1, c/‖g‖)
    scale = min(1.0, max_norm / g_norm)
    chex.assert_trees_all_close(update, jax.tree.map(lambda g: -lr * scale * g, grads),
                                rtol=1e-10, atol=1e-16)


# ── compilation ──

def test_fit_does_not_retrace_for_new_values_of_the_same_shapes():
    chex.clear_trace_counter()

    # two traces in all: fit's abstract pre-compile check (once per loss and shapes) and the
    # compiled loop; none for the later calls with new values
    @chex.assert_max_traces(n=2)
    def loss_fn(params, x, y):
        return fbp.mlp_loss(params, x, y, "tanh", "mse")

    params, x, y = make_problem()
    opt = optax.adam(1e-2)
    for scale in (1.0, 2.0, 3.0):
        fit(loss_fn, params, (scale * x, y), opt, 7, micro_batches=4)
    fit(loss_fn, fit(loss_fn, params, (x, y), opt, 7, micro_batches=4).params, (x, y), opt, 7,
        micro_batches=4)


# ── validation ──

def _bad(**overrides):
    params, x, y = make_problem()
    args = dict(loss_fn=fbp_loss, params=params, data=(x, y), optimizer=SGD, steps=3)
    args.update(overrides)
    return args


@pytest.mark.parametrize("overrides, error, match", [
    (dict(steps=0), ValueError, "steps"),
    (dict(steps=-2), ValueError, "steps"),
    (dict(steps=2.0), TypeError, "steps"),
    (dict(steps=True), TypeError, "steps"),
    (dict(micro_batches=5), ValueError, "micro_batches must divide"),
    (dict(micro_batches=0), ValueError, "micro_batches"),
    (dict(optimizer=lambda g: g), TypeError, "optimizer"),
    (dict(loss_fn="mse"), TypeError, "loss_fn"),
    (dict(grad_fn=backprop_grad_fn()), ValueError, "not both"),
    (dict(clip_norm=0.0), ValueError, "clip_norm"),
    (dict(clip_norm=float("inf")), ValueError, "clip_norm"),
    (dict(stacked=1), TypeError, "stacked"),
    (dict(stacked=True), ValueError, "steps, m"),
    (dict(data=(jnp.zeros((24, 3)), jnp.zeros((23, 1)))), ValueError, "leading"),
    (dict(data=(jnp.zeros((24, 3), jnp.int32), jnp.zeros((24, 1)))), TypeError, "x"),
    (dict(data=jnp.zeros((24, 3))), TypeError, "data"),
    (dict(params=[]), ValueError, "params"),
    (dict(record=3), TypeError, "record"),
])
def test_fit_rejects_bad_input(overrides, error, match):
    with pytest.raises(error, match=match):
        fit(**_bad(**overrides))


@pytest.mark.parametrize("k, error, match", [
    (7, ValueError, "24 examples cannot be split into 7"),
    (0, ValueError, "micro_batches"),
    (2.5, TypeError, "micro_batches"),
])
def test_accumulate_grads_rejects_bad_micro_batches(k, error, match):
    params, x, y = make_problem()
    with pytest.raises(error, match=match):
        accumulate_grads(jax.value_and_grad(fbp_loss), params, x, y, k)
