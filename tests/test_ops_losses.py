"""Losses: values by hand, the fused output delta ŷ − y, extremes, and bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fbp

BIG = 1e4


def test_bce_with_logits_by_hand():
    z, y = jnp.array([0.0, 2.0]), jnp.array([1.0, 0.0])
    # ½ [−log σ(0) − log(1 − σ(2))] = ½ [log 2 + log(1 + e²)]
    expected = 0.5 * (math.log(2) + math.log(1 + math.exp(2)))
    assert float(fbp.bce_with_logits(z, y)) == pytest.approx(expected, rel=1e-15)


def test_output_delta_is_prediction_minus_target_over_m():
    """The tutorial's "惊人的简洁性": ∂L/∂z = (σ(z) − y)/m, and (softmax − onehot)/m."""
    z = jnp.array([[0.3], [-1.2], [2.0], [0.0]])
    y = jnp.array([[1.0], [0.0], [1.0], [0.0]])
    np.testing.assert_allclose(jax.grad(fbp.bce_with_logits)(z, y),
                               (1 / (1 + np.exp(-np.asarray(z))) - y) / 4, rtol=1e-14)
    logits = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    labels = jnp.array([2, 0])
    e = np.exp(np.asarray(logits))
    expected = (e / e.sum(-1, keepdims=True) - np.eye(3)[[2, 0]]) / 2
    np.testing.assert_allclose(jax.grad(fbp.softmax_cross_entropy)(logits, labels), expected,
                               rtol=1e-14)


def test_bce_on_probabilities_uses_the_tutorial_rule():
    y_hat, y = jnp.array([0.2, 0.9]), jnp.array([0.0, 1.0])
    expected = -0.5 * (math.log(0.8) + math.log(0.9))
    assert float(fbp.bce(y_hat, y)) == pytest.approx(expected, rel=1e-15)
    # ∂L/∂ŷ = (−y/ŷ + (1−y)/(1−ŷ)) / m
    np.testing.assert_allclose(jax.grad(fbp.bce)(y_hat, y), [1 / 0.8 / 2, -1 / 0.9 / 2], rtol=1e-14)


def test_integer_labels_and_one_hot_targets_agree():
    logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5))
    labels = jax.random.randint(jax.random.PRNGKey(1), (2, 3), 0, 5)
    onehot = jax.nn.one_hot(labels, 5, dtype=logits.dtype)
    assert float(fbp.softmax_cross_entropy(logits, labels)) == pytest.approx(
        float(fbp.softmax_cross_entropy(logits, onehot)), rel=1e-14)
    np.testing.assert_allclose(jax.grad(fbp.softmax_cross_entropy)(logits, labels),
                               jax.grad(fbp.softmax_cross_entropy)(logits, onehot), rtol=1e-14)


def test_mse_by_hand():
    assert float(fbp.mse(jnp.array([1.0, 3.0]), jnp.array([0.0, 1.0]))) == 2.5
    np.testing.assert_array_equal(jax.grad(fbp.mse)(jnp.array([1.0, 3.0]), jnp.array([0.0, 1.0])),
                                  [1.0, 2.0])


def test_bce_with_logits_exact_at_extreme_logits():
    """|z| = 1e4: the loss is exactly |z| on the wrong side, 0 on the right one; ∂ = ±1/m."""
    z, y = jnp.array([BIG, -BIG, BIG, -BIG]), jnp.array([0.0, 1.0, 1.0, 0.0])
    assert float(fbp.bce_with_logits(z, y)) == pytest.approx(2 * BIG / 4, rel=1e-15)
    np.testing.assert_array_equal(jax.grad(fbp.bce_with_logits)(z, y), [0.25, -0.25, 0.0, 0.0])


def test_softmax_cross_entropy_exact_at_extreme_logits():
    z, labels = jnp.array([[BIG, -BIG], [BIG, -BIG]]), jnp.array([1, 0])
    assert float(fbp.softmax_cross_entropy(z, labels)) == pytest.approx(BIG, rel=1e-15)
    np.testing.assert_array_equal(jax.grad(fbp.softmax_cross_entropy)(z, labels),
                                  [[0.5, -0.5], [0.0, 0.0]])


def test_naive_compositions_fail_where_the_fused_losses_do_not():
    """Written down: autodiff of BCE(σ(z)) and −log softmax(z)[k] at |z| = 1e4."""
    z, y = jnp.array([-BIG]), jnp.array([1.0])
    naive_bce = lambda z: -jnp.mean(y * jnp.log(jax.nn.sigmoid(z)) +
                                    (1 - y) * jnp.log(1 - jax.nn.sigmoid(z)))
    tutorial_bce = lambda z: -jnp.mean(y * jnp.log(jax.nn.sigmoid(z) + 1e-8) +
                                       (1 - y) * jnp.log(1 - jax.nn.sigmoid(z) + 1e-8))
    assert jnp.isinf(naive_bce(z))                                   # log 0
    assert jnp.isnan(jax.grad(naive_bce)(z)[0])                      # 0 · ∞
    assert float(jax.grad(tutorial_bce)(z)[0]) == 0.0                # +1e-8 hides the gradient
    assert float(tutorial_bce(z)) == pytest.approx(-math.log(1e-8))  # loss capped at 18.4, not 1e4
    assert float(jax.grad(fbp.bce_with_logits)(z, y)[0]) == -1.0
    naive_ce = lambda z: -jnp.log(jnp.exp(z[1]) / jnp.sum(jnp.exp(z)))
    logits = jnp.array([BIG, -BIG])
    assert not jnp.isfinite(naive_ce(logits))
    assert jnp.isnan(jax.grad(naive_ce)(logits)).all()
    assert jnp.isfinite(jax.grad(fbp.softmax_cross_entropy)(logits, jnp.array(1))).all()


Z = jnp.zeros((4, 3))


@pytest.mark.parametrize("call,exc,match", [
    (lambda: fbp.bce_with_logits(Z, jnp.zeros((4, 2))), ValueError, "y must have the same shape"),
    (lambda: fbp.bce_with_logits(Z, 2 * jnp.ones((4, 3))), ValueError,
     r"y must lie in \[0.0, 1.0\]"),
    (lambda: fbp.bce_with_logits(jnp.zeros(3, jnp.int32), jnp.zeros(3)), TypeError, "logits"),
    (lambda: fbp.bce(Z - 1, jnp.zeros((4, 3))), ValueError, "y_hat must lie in"),
    (lambda: fbp.bce(Z, jnp.zeros(3)), ValueError, "y must have the same shape as y_hat"),
    (lambda: fbp.softmax_cross_entropy(Z, jnp.array([0, 1, 2, 3])), ValueError,
     r"labels must lie in \[0, 3\)"),
    (lambda: fbp.softmax_cross_entropy(Z, jnp.array([0, -1, 2, 1])), ValueError, "labels must lie"),
    (lambda: fbp.softmax_cross_entropy(Z, jnp.array([0, 1])), ValueError,
     r"integer labels must have shape logits.shape\[:-1\]"),
    (lambda: fbp.softmax_cross_entropy(Z, jnp.zeros((4, 4))), ValueError,
     "soft/one-hot labels must have the shape of logits"),
    (lambda: fbp.softmax_cross_entropy(jnp.float64(1.0), jnp.array(0)), ValueError,
     "logits must have at least 1"),
    (lambda: fbp.softmax_cross_entropy(Z, jnp.zeros((4, 3), jnp.float32)), TypeError,
     "labels must have the dtype of logits"),
    (lambda: fbp.mse(Z, jnp.zeros((3, 4))), ValueError, "y must have the same shape as y_hat"),
    (lambda: fbp.mse(Z, jnp.zeros((4, 3), jnp.float32)), TypeError, "y must have the dtype"),
])
def test_bad_input_is_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_label_range_is_checked_in_eager_mode_only_where_values_exist():
    """Inside jit the labels are abstract: the shape is still checked, the range cannot be."""
    with pytest.raises(ValueError, match="integer labels must have shape"):
        jax.jit(fbp.softmax_cross_entropy)(Z, jnp.array([0, 1]))


def test_bce_with_logits_keeps_relative_precision_when_confidently_right():
    """y softplus(−z) + (1 − y) softplus(z) and (1 − y)σ(z) − yσ(−z): no 1 − 1 cancellation.
    The naive softplus(z) − y z rounds the float32 loss at z = 30, y = 1 to exactly 0."""
    z = jnp.array([30.0, -30.0, 12.0], jnp.float32)
    y = jnp.array([1.0, 0.0, 1.0], jnp.float32)
    exact_terms = np.log1p(np.exp(-np.abs(np.asarray(z, np.float64))))
    exact_grad = np.array([-1 / (1 + np.exp(30.0)), 1 / (1 + np.exp(30.0)),
                           -1 / (1 + np.exp(12.0))]) / 3                   # (σ(z) − y)/N
    assert float(fbp.bce_with_logits(z, y)) == pytest.approx(exact_terms.mean(), rel=1e-6)
    np.testing.assert_allclose(jax.grad(fbp.bce_with_logits)(z, y), exact_grad, rtol=1e-6)
    naive = jnp.mean(jax.nn.softplus(z) - y * z)
    assert float(naive) != pytest.approx(exact_terms.mean(), rel=1e-2)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_narrow_integer_labels_pick_their_class_when_there_are_more_classes_than_the_dtype_holds(
        dtype):
    """300 classes do not fit an int8 or uint8 (300 wraps to 44): the rules compare, clip and
    one-hot the labels against C, so they must do it in int32.  Before, int8 labels gave NaN
    for C = 200 and, for C = 300, the right loss with a gradient 0.33 off per entry."""
    rng = np.random.default_rng(0)
    C = 300
    z = jnp.asarray(rng.normal(size=(4, C)))
    narrow = np.array([0, 1, 100, 120], dtype)
    labels = narrow.astype(np.int64)              # the same classes, in a dtype that holds C

    def reference(z):  # independent: log-sum-exp minus the picked logit, by NumPy indexing
        return jnp.mean(jax.scipy.special.logsumexp(z, axis=-1) - z[np.arange(4), labels])

    value, grad = jax.value_and_grad(reference)(z)
    mask = np.array([True, True, False, True])
    masked = jax.grad(lambda z: jnp.sum(
        jnp.where(mask, jax.scipy.special.logsumexp(z, axis=-1) - z[np.arange(4), labels], 0))
        / 3)(z)
    for f in (fbp.softmax_cross_entropy, jax.jit(fbp.softmax_cross_entropy)):  # traced, too
        v, g = jax.value_and_grad(f)(z, narrow)
        np.testing.assert_allclose(v, value, rtol=1e-13)
        np.testing.assert_allclose(g, grad, rtol=1e-12, atol=1e-15)
    g = jax.grad(lambda z: fbp.softmax_cross_entropy(z, narrow, where=mask))(z)
    np.testing.assert_allclose(g, masked, rtol=1e-12, atol=1e-15)
    # the same labels through the δ recursion and the linear head
    params = fbp.init_mlp(jax.random.PRNGKey(0), [3, C])
    x = jnp.asarray(rng.normal(size=(4, 3)))
    bp = fbp.backprop(params, x, narrow, "tanh", "softmax_cross_entropy").grads
    ref_grads = jax.grad(fbp.mlp_loss)(params, x, labels, "tanh", "softmax_cross_entropy")
    for a, b in zip(jax.tree.leaves(bp), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    h, W = jnp.asarray(rng.normal(size=(4, 3))), jnp.asarray(rng.normal(size=(C, 3)))
    np.testing.assert_allclose(fbp.linear_cross_entropy(h, W, narrow),
                               reference(h @ W.T), rtol=1e-13)
