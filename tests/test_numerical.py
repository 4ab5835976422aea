"""fbp.numerical: central differences against hand-derived derivatives, and the XOR check."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fbp
from fbp.numerical import default_eps

XOR_X = jnp.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
XOR_Y = jnp.array([[0.0], [1.0], [1.0], [0.0]])


def xor_loss(params, x, y):
    return fbp.mlp_loss(params, x, y, "sigmoid", "bce_with_logits")


def xor_grads(params, x, y):
    return fbp.backprop(params, x, y, "sigmoid", "bce_with_logits").grads


@jax.jit
def train_xor(params, x, y):
    """2000 steps of plain SGD (lr 0.5) on backprop's gradients, in one lax.scan."""
    def step(p, _):
        return jax.tree_util.tree_map(lambda w, g: w - 0.5 * g, p, xor_grads(p, x, y)), None
    return jax.lax.scan(step, params, None, length=2000)[0]


@pytest.fixture(scope="module")
def xor_params():
    init = fbp.init_mlp(jax.random.key(0), [2, 4, 1], dtype=jnp.float64)
    trained = train_xor(init, XOR_X, XOR_Y)
    return init, trained


def test_xor_numerical_gradient_matches_backprop_at_init_and_after_training(xor_params):
    init, trained = xor_params
    probs = jax.nn.sigmoid(fbp.mlp(trained, XOR_X))
    assert np.all(np.round(np.asarray(probs)) == np.asarray(XOR_Y))   # it did learn XOR
    for params in (init, trained):
        num = fbp.numerical_grad(xor_loss, params, XOR_X, XOR_Y)
        assert fbp.rel_error(num, xor_grads(params, XOR_X, XOR_Y)) <= 1e-9


def test_tutorials_fixed_step_loses_to_rounding_after_training(xor_params):
    """The tutorial's ε = 1e-7 two-point difference divides the loss's rounding error by 2ε and
    loses two orders of magnitude on the trained net; the dtype-aware default does not."""
    _, trained = xor_params
    exact = xor_grads(trained, XOR_X, XOR_Y)
    tutorial = fbp.numerical_grad(xor_loss, trained, XOR_X, XOR_Y, eps=1e-7, order=2)
    default = fbp.numerical_grad(xor_loss, trained, XOR_X, XOR_Y)
    assert fbp.rel_error(tutorial, exact) > 1e-9 > 10 * fbp.rel_error(default, exact)


class Params(NamedTuple):
    a: jax.Array
    b: jax.Array


def cubic(params, k):
    """Σ a³ + Σ sin(b) · k — derivative by hand: 3a², cos(b) · k; k an integer, held fixed."""
    return jnp.sum(params.a ** 3) + jnp.sum(jnp.sin(params.b)) * k


@pytest.mark.parametrize("order", [2, 4])
def test_numerical_grad_of_a_pytree_matches_the_hand_derivative(order):
    params = Params(jnp.linspace(-2.0, 3.0, 7), jnp.linspace(-1.0, 1.0, 3).reshape(3, 1))
    k = jnp.asarray(3)
    grad_params, grad_k = fbp.numerical_grad(cubic, params, k, argnums=(0, 1), order=order)
    assert grad_k is None                       # integer arguments get no derivative
    want = Params(3 * params.a ** 2, jnp.cos(params.b) * 3)
    assert fbp.rel_error(grad_params, want) <= (1e-9 if order == 2 else 1e-11)


def test_five_point_stencil_is_more_accurate_than_two_point():
    x = jnp.linspace(-3.0, 3.0, 11)
    exact = np.exp(np.asarray(x))
    errs = {o: fbp.rel_error(fbp.numerical_grad(lambda v: jnp.sum(jnp.exp(v)), x, order=o),
                             exact) for o in (2, 4)}
    assert errs[4] < errs[2] / 10


def test_numerical_vjp_of_a_vector_function():
    x = jnp.linspace(-2.0, 2.0, 12).reshape(3, 4)
    w = jnp.linspace(0.5, 1.5, 4)
    g = jnp.arange(12.0).reshape(3, 4) - 5

    def f(x, w):
        return {"s": jnp.sin(x) * jnp.broadcast_to(w, x.shape)}

    x_bar, w_bar = fbp.numerical_vjp(f, (x, w), {"s": g})
    assert fbp.rel_error(x_bar, g * jnp.cos(x) * w[None, :]) <= 1e-10   # ∂/∂x: ḡ cos(x) w
    assert fbp.rel_error(w_bar, jnp.sum(g * jnp.sin(x), axis=0)) <= 1e-10   # Σ_rows ḡ sin(x)


def test_chunked_map_equals_one_vmap_and_ten_thousand_parameters_run():
    key = jax.random.key(1)
    w = jax.random.normal(key, (100, 100)) / 10

    def f(w):
        return jnp.sum(jnp.tanh(w @ w) ** 2)

    full = fbp.numerical_grad(f, w)                 # 10⁴ coordinates, chunked by lax.map
    assert fbp.rel_error(full, jax.grad(f)(w)) <= 1e-9
    small = w[:5, :5]
    assert fbp.rel_error(fbp.numerical_grad(f, small, batch_size=7),
                         fbp.numerical_grad(f, small)) <= 1e-14


def test_step_is_chosen_from_the_dtype():
    assert default_eps(jnp.float64, order=2) == pytest.approx(np.finfo(np.float64).eps ** (1 / 3))
    assert default_eps(jnp.float32, order=2) == pytest.approx(np.finfo(np.float32).eps ** (1 / 3))
    assert default_eps(jnp.float64) == pytest.approx(np.finfo(np.float64).eps ** (1 / 5))
    # float32: still a usable derivative with the float32 step
    x = jnp.linspace(-1.0, 1.0, 5, dtype=jnp.float32)
    num = fbp.numerical_grad(lambda v: jnp.sum(v ** 3), x)
    assert num.dtype == jnp.float32
    assert fbp.rel_error(num, 3 * np.asarray(x) ** 2) <= 1e-4


@pytest.mark.parametrize("a, b, want", [
    ([3.0, 4.0], [3.0, 4.0], 0.0),
    ([3.0, 4.0], [-3.0, -4.0], 1.0),              # ‖2a‖ / 2‖a‖
    ([3.0, 4.0], [0.0, 0.0], 1.0),
    ([0.0, 0.0], [0.0, 0.0], 0.0),                # 0/0 defined as agreement
    ([1.0, 0.0], [0.0, 1.0], math.sqrt(2) / 2),
])
def test_rel_error_by_hand(a, b, want):
    assert fbp.rel_error(jnp.array(a), jnp.array(b)) == pytest.approx(want, abs=1e-15)


def test_rel_error_over_pytrees_pools_the_norms():
    a = {"x": jnp.array([3.0]), "y": jnp.array([4.0])}
    b = {"x": jnp.array([3.0]), "y": jnp.array([0.0])}
    assert fbp.rel_error(a, b) == pytest.approx(4.0 / (5.0 + 3.0))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="argnums"):
        fbp.numerical_grad(lambda x: jnp.sum(x), jnp.ones(3), argnums=2)
    with pytest.raises(ValueError, match="scalar"):
        fbp.numerical_grad(lambda x: x, jnp.ones(3))
    with pytest.raises(TypeError, match="args"):
        fbp.numerical_vjp(lambda x: x, jnp.ones(3), jnp.ones(3))
    with pytest.raises(ValueError, match="order"):
        fbp.numerical_grad(lambda x: jnp.sum(x), jnp.ones(3), order=3)
    with pytest.raises(ValueError, match="batch_size"):
        fbp.numerical_grad(lambda x: jnp.sum(x), jnp.ones(3), batch_size=0)
    with pytest.raises(ValueError, match="shape"):
        fbp.rel_error(jnp.ones(3), jnp.ones(4))
