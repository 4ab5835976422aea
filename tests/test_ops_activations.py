"""Activations: values by hand, the derivative conventions, extremes, and bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fbp

BIG = 1e4


def grad_of_sum(f, z):
    return jax.grad(lambda z: jnp.sum(f(z)))(z)


@pytest.mark.parametrize("f,z,value,slope", [
    (fbp.sigmoid, 0.0, 0.5, 0.25),                               # σ(0) = ½, σ'(0) = ¼
    (fbp.sigmoid, math.log(3.0), 0.75, 0.75 * 0.25),              # σ(ln 3) = 3/4
    (fbp.tanh, 0.0, 0.0, 1.0),
    (fbp.tanh, math.atanh(0.5), 0.5, 0.75),                       # 1 − ½²
    (fbp.relu, 2.0, 2.0, 1.0),
    (fbp.relu, -2.0, 0.0, 0.0),
    (fbp.relu, 0.0, 0.0, 0.0),                                    # derivative 0 at 0, stated
    (fbp.leaky_relu, -2.0, -0.02, 0.01),
    (fbp.leaky_relu, 0.0, 0.0, 0.01),
    (fbp.gelu, 0.0, 0.0, 0.5),                                    # Φ(0) + 0·φ(0)
    (fbp.gelu, 1.0, 0.5 * (1 + math.erf(1 / math.sqrt(2))),
     0.5 * (1 + math.erf(1 / math.sqrt(2))) + math.exp(-0.5) / math.sqrt(2 * math.pi)),
])
def test_values_and_slopes_by_hand(f, z, value, slope):
    z = jnp.float64(z)
    assert float(f(z)) == pytest.approx(value, rel=1e-14, abs=1e-15)
    assert float(jax.grad(f)(z)) == pytest.approx(slope, rel=1e-13, abs=1e-15)


def test_gelu_tanh_form_by_hand():
    z = 1.0
    u = math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)
    assert float(fbp.gelu(jnp.float64(z), approximate=True)) == pytest.approx(
        0.5 * z * (1 + math.tanh(u)), rel=1e-14)


def test_softmax_rows_sum_to_one_and_vjp_needs_no_jacobian():
    z = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    s = fbp.softmax(z)
    np.testing.assert_allclose(s.sum(-1), 1.0, rtol=1e-15)
    np.testing.assert_allclose(s[1], 1 / 3, rtol=1e-15)
    # a constant cotangent is orthogonal to the simplex: its VJP is exactly zero
    _, pullback = jax.vjp(fbp.softmax, z)
    np.testing.assert_allclose(pullback(jnp.ones_like(z))[0], 0.0, atol=1e-16)


@pytest.mark.parametrize("f,limits", [
    (fbp.sigmoid, ((1.0, 0.0), (0.0, 0.0))),   # (value, slope) at +BIG, then at −BIG
    (fbp.tanh, ((1.0, 0.0), (-1.0, 0.0))),
])
def test_saturated_activations_stay_finite_at_the_exact_limits(f, limits):
    z = jnp.array([BIG, -BIG])
    np.testing.assert_array_equal(f(z), [limits[0][0], limits[1][0]])
    np.testing.assert_array_equal(grad_of_sum(f, z), [limits[0][1], limits[1][1]])


def test_softmax_at_extreme_logits():
    z = jnp.array([BIG, 0.0, -BIG])
    np.testing.assert_array_equal(fbp.softmax(z), [1.0, 0.0, 0.0])
    g = jnp.array([1.0, 2.0, 3.0])
    _, pullback = jax.vjp(fbp.softmax, z)
    np.testing.assert_array_equal(pullback(g)[0], [0.0, 0.0, 0.0])


def test_naive_textbook_forms_fail_where_fbp_does_not():
    """Written down as a test: autodiff of 1/(1+e^{−z}) and e^z/Σe^z gives NaN at |z| = 1e4."""
    naive_sigmoid = lambda z: 1 / (1 + jnp.exp(-z))
    naive_softmax = lambda z: jnp.exp(z) / jnp.sum(jnp.exp(z))
    z = jnp.array([BIG, -BIG])
    assert jnp.isnan(grad_of_sum(naive_sigmoid, z)[1])             # e^{1e4} = inf, inf/inf²
    assert jnp.all(jnp.isfinite(grad_of_sum(fbp.sigmoid, z)))
    assert jnp.isnan(naive_softmax(z)).any()                      # inf / inf
    assert jnp.all(jnp.isfinite(fbp.softmax(z)))


@pytest.mark.parametrize("call,exc,match", [
    (lambda: fbp.sigmoid(jnp.arange(3)), TypeError, "z must have a floating-point dtype"),
    (lambda: fbp.relu("1.0"), TypeError, "z must be a floating-point array"),
    (lambda: fbp.leaky_relu(jnp.ones(3), alpha=float("nan")), ValueError, "alpha must be finite"),
    (lambda: fbp.leaky_relu(jnp.ones(3), alpha=jnp.ones(2)), TypeError, "alpha must be a real"),
    (lambda: fbp.gelu(jnp.ones(3), approximate="tanh"), TypeError, "approximate must be"),
    (lambda: fbp.softmax(jnp.float32(1.0)), ValueError, "z must have at least 1 dimension"),
])
def test_bad_input_is_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ── second order: forward-over-reverse runs through every rule ──

def _gelu_tanh_ref(z):
    return 0.5 * z * (1 + jnp.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))


# (fbp activation, a plain-jnp reference): jax.hessian is jacfwd of jacrev, so it needs the
# rule's fwd and bwd to be plain JAX (a fwd that calls the custom_vjp again has no JVP).
SECOND_ORDER = [
    ("sigmoid", fbp.sigmoid, jax.nn.sigmoid),
    ("tanh", fbp.tanh, jnp.tanh),
    ("relu", fbp.relu, lambda z: jnp.maximum(z, 0)),
    ("leaky_relu", fbp.leaky_relu, lambda z: jnp.where(z > 0, z, 0.01 * z)),
    ("gelu", fbp.gelu, lambda z: jax.nn.gelu(z, approximate=False)),
    ("gelu_tanh", lambda z: fbp.gelu(z, approximate=True), _gelu_tanh_ref),
    ("softmax", fbp.softmax, jax.nn.softmax),
]


@pytest.mark.parametrize("name, f, ref", SECOND_ORDER, ids=[c[0] for c in SECOND_ORDER])
def test_hessian_and_hvp_equal_those_of_a_plain_jnp_reference(name, f, ref):
    z = jnp.array([-2.5, -0.7, 0.3, 1.1, 3.0])
    w = jnp.array([0.5, -1.0, 2.0, 1.5, -0.3])       # softmax: a weighted sum, not Σ s = 1
    v = jnp.array([1.0, -2.0, 0.5, 0.25, 3.0])
    loss = lambda z: jnp.sum(w * f(z))  # noqa: E731
    loss_ref = lambda z: jnp.sum(w * ref(z))  # noqa: E731
    np.testing.assert_allclose(jax.hessian(loss)(z), jax.hessian(loss_ref)(z), rtol=1e-12,
                               atol=1e-14)
    hvp = jax.jvp(jax.grad(loss), (z,), (v,))[1]
    np.testing.assert_allclose(hvp, jax.hessian(loss_ref)(z) @ v, rtol=1e-12, atol=1e-14)


def test_gelu_second_derivative_by_hand():
    """GELU''(z) = 2φ(z) − z² φ(z) = φ(z)(2 − z²), from GELU'(z) = Φ(z) + z φ(z), φ' = −z φ."""
    z = jnp.array([-2.0, -0.5, 0.0, 0.8, 2.5])
    phi = np.exp(-0.5 * np.asarray(z) ** 2) / math.sqrt(2 * math.pi)
    hessian = jax.hessian(lambda z: jnp.sum(fbp.gelu(z)))(z)
    np.testing.assert_allclose(hessian, np.diag(phi * (2 - np.asarray(z) ** 2)), rtol=1e-13,
                               atol=1e-16)
