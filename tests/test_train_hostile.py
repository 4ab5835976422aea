"""fit, accumulate_grads and data_parallel on hostile input: a cached trace, a bad label in a
late micro-batch, integer x, an empty batch, gradients in another dtype than the params, a
mask that selects unequal counts per micro-batch.  Every result is compared with plain
jnp / optax autodiff of a reference written without fbp's rules."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fbp
from fbp.parallel import data_parallel
from fbp.train import accumulate_grads, fit

SGD = optax.sgd(0.1)


def softmax_problem(m=12, dtype=jnp.float64):
    k1, k2 = jax.random.split(jax.random.key(0))
    params = fbp.init_mlp(k1, [4, 6, 3], dtype=dtype)
    x = jax.random.normal(k2, (m, 4), dtype)
    return params, x, jnp.arange(m) % 3


def softmax_loss(params, x, y):
    return fbp.mlp_loss(params, x, y, "tanh", "softmax_cross_entropy")


def reference_loss(params, x, y):
    """The same two-layer net and loss from plain jnp / optax only (no fbp rule)."""
    h = jnp.tanh(x @ params[0].W.T + params[0].b[None, :])
    z = h @ params[1].W.T + params[1].b[None, :]
    return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(z, y))


def assert_trees_close(a, b, rtol):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=rtol * float(jnp.max(jnp.abs(v))))


# ── 1. labels are checked even when JAX has the loss's trace cached ──

@pytest.mark.parametrize("bad", [3, -1])
def test_a_jitted_loss_traced_before_still_gets_its_labels_checked(bad):
    params, x, y = softmax_problem()
    jitted = jax.jit(softmax_loss)
    jitted(params, x, y)                            # JAX caches this trace (these shapes)
    with pytest.raises(ValueError, match=rf"y \(data\[1\]\) holds integer class labels in "
                                         rf"\[{min(bad, 0)}, {max(bad, 2)}\].*3 classes"):
        fit(jitted, params, (x, y.at[-1].set(bad)), SGD, 2)
    grad_fn = jax.jit(jax.value_and_grad(softmax_loss))
    grad_fn(params, x, y)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        fit(None, params, (x, y.at[-1].set(bad)), SGD, 2, grad_fn=grad_fn)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        data_parallel(grad_fn)(params, x, y.at[-1].set(bad))


# ── 2. accumulate_grads checks the labels of every micro-batch ──

@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("bad, at", [(3, -1), (-1, -1), (3, 5)])
@pytest.mark.parametrize("jitted", [False, True], ids=["eager-grad_fn", "jitted-grad_fn"])
def test_accumulate_grads_refuses_a_bad_label_in_any_micro_batch(k, bad, at, jitted):
    params, x, y = softmax_problem()
    grad_fn = jax.value_and_grad(softmax_loss)
    grad_fn = jax.jit(grad_fn) if jitted else grad_fn
    with pytest.raises(ValueError, match=r"y holds integer class labels .* labels must lie in "
                                         r"\[0, 3\)"):
        accumulate_grads(grad_fn, params, x, y.at[at].set(bad), k)


# ── 3. integer x (pixel values) is refused with the cast to use, not cast silently ──

@pytest.mark.parametrize("dtype", [np.uint8, np.int64])
@pytest.mark.parametrize("call", [
    lambda p, x, y: fit(softmax_loss, p, (x, y), SGD, 2),
    lambda p, x, y: accumulate_grads(jax.value_and_grad(softmax_loss), p, x, y, 3),
    lambda p, x, y: data_parallel(jax.value_and_grad(softmax_loss))(p, x, y),
], ids=["fit", "accumulate_grads", "data_parallel"])
def test_integer_x_is_refused_with_the_cast(call, dtype):
    params, x, y = softmax_problem()
    pixels = np.arange(x.size, dtype=dtype).reshape(x.shape)
    name = np.dtype(dtype).name
    with pytest.raises(TypeError, match=rf"x must have a floating-point dtype; got {name}\. "
                                        r"Cast it first, e\.g\. x\.astype\(jnp\.float32\)"):
        call(params, pixels, y)


# ── 4. an empty batch is refused (its mean would be 0/0) ──

EMPTY = "x holds no examples \\(shape \\({}\\)\\).*0/0 = NaN.*at least one example"


@pytest.mark.parametrize("call, shape", [
    (lambda p, x, y: fit(softmax_loss, p, (x[:0], y[:0]), SGD, 2), "0, 4"),
    (lambda p, x, y: fit(softmax_loss, p, (x[None, :0], y[None, :0]), SGD, 1, stacked=True),
     "1, 0, 4"),
    (lambda p, x, y: accumulate_grads(jax.value_and_grad(softmax_loss), p, x[:0], y[:0], 1),
     "0, 4"),
    (lambda p, x, y: data_parallel(jax.value_and_grad(softmax_loss))(p, x[:0], y[:0]), "0, 4"),
], ids=["fit", "fit-stacked", "accumulate_grads", "data_parallel"])
def test_an_empty_batch_is_refused(call, shape):
    params, x, y = softmax_problem()
    with pytest.raises(ValueError, match=EMPTY.format(shape)):
        call(params, x, y)


# ── 5. micro-batch gradients in another dtype than the params' ──

def _f64_grads(p, x, y):       # float32 params, gradients computed and returned in float64
    wide = jax.tree.map(lambda a: a.astype(jnp.float64), p)
    return jax.value_and_grad(softmax_loss)(wide, x.astype(jnp.float64), y)


def _f32_grads(p, x, y):       # bfloat16 params, float32 gradients (a float32 master copy)
    wide = jax.tree.map(lambda a: a.astype(jnp.float32), p)
    return jax.value_and_grad(softmax_loss)(wide, x, y)


@pytest.mark.parametrize("grad_fn, p_dtype, x_dtype, g_dtype, rtol", [
    (_f64_grads, jnp.float32, jnp.float32, jnp.float64, 1e-12),
    (_f32_grads, jnp.bfloat16, jnp.float32, jnp.float32, 1e-5),
], ids=["f32-params-f64-grads", "bf16-params-f32-grads"])
def test_micro_batches_sum_gradients_in_the_gradients_dtype(grad_fn, p_dtype, x_dtype,
                                                            g_dtype, rtol):
    params, x, y = softmax_problem(m=12)
    params = jax.tree.map(lambda a: a.astype(p_dtype), params)
    x = x.astype(x_dtype)
    wide = lambda t: jax.tree.map(lambda a: a.astype(g_dtype), t)
    want_loss, want = jax.value_and_grad(reference_loss)(wide(params), wide(x), y)
    loss, grads = accumulate_grads(grad_fn, params, x, y, 3)
    assert {a.dtype for a in jax.tree.leaves(grads)} == {jnp.dtype(g_dtype)}
    assert_trees_close(grads, want, rtol)
    np.testing.assert_allclose(loss, want_loss, rtol=rtol)
    # fit: one SGD step from the accumulated gradient; optax keeps the params' dtype
    result = fit(None, params, (x, y), SGD, 1, grad_fn=grad_fn, micro_batches=3)
    step = jax.tree.map(lambda p, g: (p - 0.1 * g).astype(p_dtype), wide(params), want)
    assert {a.dtype for a in jax.tree.leaves(result.params)} == {jnp.dtype(p_dtype)}
    ulp = 1e-6 if p_dtype == jnp.float32 else 1e-2      # bfloat16 keeps 8 bits: 2^-8 ≈ 4e-3
    assert_trees_close(wide(result.params), wide(step), ulp)


# ── 6. a mask selecting unequal counts per micro-batch: the mean of means, with a warning ──

def masked_loss(params, x, y):                 # y = −1 marks padding
    logits = fbp.mlp(params, x, "tanh")
    return fbp.softmax_cross_entropy(logits, jnp.maximum(y, 0), where=y >= 0)


def masked_reference(params, x, y):
    h = jnp.tanh(x @ params[0].W.T + params[0].b[None, :])
    z = h @ params[1].W.T + params[1].b[None, :]
    ce = optax.losses.softmax_cross_entropy_with_integer_labels(z, jnp.maximum(y, 0))
    return jnp.sum(jnp.where(y >= 0, ce, 0.0)) / jnp.sum(y >= 0)


MASKED = r"softmax_cross_entropy with where=.*mean of 2 such means.*same number of positions"


def test_unequal_mask_counts_per_micro_batch_warn_and_give_the_mean_of_means():
    params, x, y = softmax_problem(m=12)
    y = y.at[:5].set(-1)                       # micro-batch 1 selects 1 position, 2 selects 6
    grad_fn = jax.value_and_grad(masked_loss)
    with pytest.warns(UserWarning, match=MASKED):
        _, grads = accumulate_grads(grad_fn, params, x, y, 2)
    halves = [jax.grad(masked_reference)(params, x[s], y[s]) for s in (slice(0, 6),
                                                                       slice(6, 12))]
    assert_trees_close(grads, jax.tree.map(lambda a, b: (a + b) / 2, *halves), 1e-12)
    full = jax.grad(masked_reference)(params, x, y)
    gap = max(float(jnp.max(jnp.abs(a - b)))
              for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(full), strict=True))
    assert gap > 1e-3                          # what the warning is about
    with pytest.warns(UserWarning, match=MASKED):
        fit(masked_loss, params, (x, y), SGD, 1, micro_batches=2)


def test_equal_mask_counts_per_micro_batch_equal_the_full_batch_gradient():
    params, x, y = softmax_problem(m=12)
    y = y.at[jnp.array([0, 1, 6, 7])].set(-1)  # each micro-batch selects 4 positions
    with pytest.warns(UserWarning, match=MASKED):
        _, grads = accumulate_grads(jax.value_and_grad(masked_loss), params, x, y, 2)
    assert_trees_close(grads, jax.grad(masked_reference)(params, x, y), 1e-12)
    with warnings.catch_warnings():            # an unmasked loss is a mean over examples
        warnings.simplefilter("error")
        accumulate_grads(jax.value_and_grad(softmax_loss), params, x, y % 3, 2)
        fit(softmax_loss, params, (x, y % 3), SGD, 1, micro_batches=2)


# ── linear_cross_entropy's labels are checked by fit like softmax_cross_entropy's ──

def _lm_loss(params, h, y):
    return fbp.linear_cross_entropy(h @ params["P"], params["W"], y, block_size=3)


@pytest.mark.parametrize("bad", [5, -1])
def test_fit_refuses_a_label_outside_linear_cross_entropys_vocabulary(bad):
    """Inside fit's compiled loop the labels are traced: a label ≥ V made the loss NaN with no
    error (the op noted no class count for fit to check against)."""
    k1, k2 = jax.random.split(jax.random.key(1))
    params = {"P": jax.random.normal(k1, (4, 4)), "W": jax.random.normal(k2, (5, 4))}
    h, y = jax.random.normal(k2, (8, 4)), jnp.arange(8) % 5
    with pytest.raises(ValueError, match=rf"y \(data\[1\]\) holds integer class labels in "
                                         rf"\[{min(bad, 0)}, {max(bad, 4)}\].*5 classes"):
        fit(_lm_loss, params, (h, y.at[2].set(bad)), SGD, 2)
    result = fit(_lm_loss, params, (h, y), SGD, 2)
    assert bool(jnp.all(jnp.isfinite(result.losses)))
