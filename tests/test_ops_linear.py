"""Dense: the tutorial's shapes, initialisers, section 9's identities, and bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fbp
from fbp import Dense


def test_forward_by_hand():
    params = Dense(jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), jnp.array([0.5, 0.0, -1.0]))
    np.testing.assert_array_equal(fbp.dense(params, jnp.array([1.0, -1.0])), [-0.5, -1.0, -2.0])


def test_gradient_shapes_equal_parameter_shapes():
    """§9.2: ∂L/∂W has W's shape, ∂L/∂b has b's, for any leading batch dims."""
    params = fbp.init_dense(jax.random.PRNGKey(0), 4, 3, dtype=jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 4))
    grads, x_bar = jax.grad(lambda p, x: jnp.sum(fbp.dense(p, x) ** 2), (0, 1))(params, x)
    assert grads.W.shape == (3, 4) and grads.b.shape == (3,) and x_bar.shape == x.shape


def test_weight_gradient_is_delta_outer_activation():
    """§5: ∂L/∂W = δ aᵀ per example, summed over the batch;  ∂L/∂b = Σ δ."""
    params = fbp.init_dense(jax.random.PRNGKey(0), 3, 2, dtype=jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
    delta = jax.random.normal(jax.random.PRNGKey(2), (4, 2))
    grads, x_bar = jax.vjp(fbp.dense, params, x)[1](delta)
    np.testing.assert_allclose(grads.W, sum(np.outer(delta[i], x[i]) for i in range(4)), rtol=1e-13)
    np.testing.assert_allclose(grads.b, np.asarray(delta).sum(0), rtol=1e-13)
    np.testing.assert_allclose(x_bar, np.asarray(delta) @ np.asarray(params.W), rtol=1e-13)


def test_identity_gradient_of_a_dot_x_is_a():
    """§9.1: ∂(aᵀx)/∂x = a, with aᵀx as a 1-output dense layer."""
    a = jnp.array([0.3, -1.2, 2.0, 0.7])
    x = jnp.array([1.0, 2.0, -3.0, 0.5])
    f = lambda x: fbp.dense(Dense(a[None, :], jnp.zeros(1)), x)[0]
    np.testing.assert_allclose(jax.grad(f)(x), a, rtol=1e-15)


def test_identity_gradient_of_quadratic_form():
    """§9.1: ∂(xᵀAx)/∂x = (A + Aᵀ)x, with both products as dense layers."""
    A = jax.random.normal(jax.random.PRNGKey(0), (4, 4))
    x = jax.random.normal(jax.random.PRNGKey(1), (4,))
    zeros = jnp.zeros(4)
    f = lambda x: fbp.dense(Dense(x[None, :], jnp.zeros(1)), fbp.dense(Dense(A, zeros), x))[0]
    np.testing.assert_allclose(jax.grad(f)(x), (A + A.T) @ x, rtol=1e-13)


def test_he_init_matches_the_tutorial_scale():
    """He: W = randn · √(2/n_in); xavier: √(2/(n_in + n_out)).  Checked on the sample std."""
    key = jax.random.PRNGKey(0)
    he = fbp.init_dense(key, 400, 300, dtype=jnp.float64)
    xavier = fbp.init_dense(key, 400, 300, scheme="xavier", dtype=jnp.float64)
    raw = jax.random.normal(key, (300, 400), jnp.float64)
    np.testing.assert_allclose(he.W, raw * math.sqrt(2 / 400), rtol=1e-15)
    np.testing.assert_allclose(xavier.W, raw * math.sqrt(2 / 700), rtol=1e-15)
    assert float(jnp.std(he.W)) == pytest.approx(math.sqrt(2 / 400), rel=0.02)
    np.testing.assert_array_equal(he.b, 0.0)


W = jnp.ones((3, 4))
b = jnp.zeros(3)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: fbp.dense(Dense(W, b), jnp.ones((2, 5))), ValueError,
     r"x must have shape \(\.\.\., n_in\)"),
    (lambda: fbp.dense(Dense(W, b), jnp.ones((4, 2))), ValueError, r"use x\.T"),
    (lambda: fbp.dense(Dense(W, jnp.zeros(4)), jnp.ones(4)), ValueError, "b must have shape"),
    (lambda: fbp.dense(Dense(W[0], b), jnp.ones(4)), ValueError, "W must have at least 2"),
    (lambda: fbp.dense(Dense(jnp.ones((3, 4, 1)), b), jnp.ones(4)), ValueError,
     "W must have shape"),
    (lambda: fbp.dense(Dense(W, b), jnp.ones(4, jnp.int32)), TypeError, "x must have a floating"),
    (lambda: fbp.dense(Dense(W, b), jnp.float32(1.0)), ValueError, "x must have at least 1"),
    (lambda: fbp.dense(Dense(W, b.astype(jnp.float64)), jnp.ones(4, jnp.float32)), TypeError,
     "must share one dtype"),
    (lambda: fbp.dense(W, jnp.ones(4)), TypeError, "params must be Dense"),
    (lambda: fbp.init_dense(jax.random.PRNGKey(0), 0, 3), ValueError, "n_in must be a positive"),
    (lambda: fbp.init_dense(jax.random.PRNGKey(0), 2, 3, scheme="lecun"), ValueError, "scheme"),
    (lambda: fbp.init_dense(jax.random.PRNGKey(0), 2, 3, dtype=jnp.int32), TypeError, "dtype"),
])
def test_bad_input_is_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
