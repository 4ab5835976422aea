"""MLP and the δ recursion: backprop equals jax.grad of a network built from reference ops."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fbp
from tests._proof import rel_err

REF_ACT = {
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "leaky_relu": lambda z: jax.nn.leaky_relu(z, 0.01),
    "gelu": lambda z: jax.nn.gelu(z, approximate=False),
}
REF_LOSS = {
    "bce_with_logits": lambda z, y: jnp.mean(optax.losses.sigmoid_binary_cross_entropy(z, y)),
    "softmax_cross_entropy": lambda z, y: jnp.mean(
        optax.losses.softmax_cross_entropy_with_integer_labels(z, y)),
    "mse": lambda z, y: jnp.mean((z - y) ** 2),
}


def reference_loss(params, x, y, activation, loss, residual=False):
    a = x
    for W, b in params[:-1]:
        h = REF_ACT[activation](a @ W.T + b[None, :])
        a = a + h if residual and W.shape[0] == W.shape[1] else h
    W, b = params[-1]
    return REF_LOSS[loss](a @ W.T + b[None, :], y)


def problem(depth, loss, width=5, n_out=3, m=7, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    sizes = [4] + [width] * (depth - 1) + [n_out]
    params = fbp.init_mlp(keys[0], sizes, dtype=jnp.float64)
    x = jax.random.normal(keys[1], (m, 4), jnp.float64)
    if loss == "softmax_cross_entropy":
        y = jax.random.randint(keys[2], (m,), 0, n_out)
    else:
        y = (jax.random.uniform(keys[2], (m, n_out)) > 0.5).astype(jnp.float64)
    return params, x, y


CASES = list(itertools.product(range(1, 7), REF_ACT, ["bce_with_logits", "softmax_cross_entropy"]))


@pytest.mark.parametrize("depth,activation,loss", CASES)
def test_backprop_equals_jax_grad_of_reference(depth, activation, loss):
    params, x, y = problem(depth, loss, seed=depth)
    result = fbp.backprop(params, x, y, activation, loss)
    value, grads = jax.value_and_grad(reference_loss)(params, x, y, activation, loss)
    assert float(result.loss) == pytest.approx(float(value), rel=1e-13)
    assert rel_err(result.grads, grads) <= 1e-12


@pytest.mark.parametrize("activation,loss,residual", [
    ("tanh", "mse", False), ("sigmoid", "mse", True), ("relu", "softmax_cross_entropy", True),
    ("gelu", "bce_with_logits", True)])
def test_composed_rules_and_backprop_agree_with_reference(activation, loss, residual):
    """Two independent paths: jax.grad through the composed custom VJPs, and the δ recursion."""
    params, x, y = problem(4, loss, seed=11)
    want = jax.grad(reference_loss)(params, x, y, activation, loss, residual)
    composed = jax.grad(fbp.mlp_loss)(params, x, y, activation, loss, residual=residual)
    recursion = fbp.backprop(params, x, y, activation, loss, residual=residual).grads
    assert rel_err(composed, want) <= 1e-12
    assert rel_err(recursion, want) <= 1e-12


def test_deltas_are_the_gradients_with_respect_to_each_pre_activation():
    params, x, y = problem(3, "bce_with_logits", seed=3)
    result = fbp.backprop(params, x, y, "tanh", "bce_with_logits")

    def loss_from_z(zs_offsets):
        a = x
        for l, (W, b) in enumerate(params):
            z = a @ W.T + b[None, :] + zs_offsets[l]
            a = jnp.tanh(z) if l < len(params) - 1 else z
        return REF_LOSS["bce_with_logits"](a, y)

    offsets = [jnp.zeros((7, W.shape[0])) for W, _ in params]
    for got, want in zip(result.deltas, jax.grad(loss_from_z)(offsets)):
        assert got.shape == want.shape
        assert rel_err(got, want) <= 1e-12
    # the output delta is (σ(z) − y)/N: the tutorial's ŷ − y
    logits = fbp.mlp(params, x, "tanh")
    np.testing.assert_allclose(result.deltas[-1], (jax.nn.sigmoid(logits) - y) / y.size, rtol=1e-13)


def test_leading_batch_dims_and_single_examples():
    params, x, y = problem(3, "softmax_cross_entropy", m=6)
    x3, y3 = x.reshape(2, 3, 4), y.reshape(2, 3)
    a = fbp.backprop(params, x, y, "relu", "softmax_cross_entropy").grads
    b = fbp.backprop(params, x3, y3, "relu", "softmax_cross_entropy").grads
    assert rel_err(a, b) <= 1e-14
    per_example = jax.vmap(lambda x, y: fbp.backprop(params, x, y, "relu",
                                                     "softmax_cross_entropy").grads)(x, y)
    mean = jax.tree.map(lambda g: g.mean(0), per_example)
    assert rel_err(mean, a) <= 1e-13


def test_names_and_functions_are_interchangeable():
    params, x, y = problem(2, "bce_with_logits")
    by_name = fbp.backprop(params, x, y, "gelu", "bce_with_logits")
    by_function = fbp.backprop(params, x, y, fbp.gelu, fbp.bce_with_logits)
    assert rel_err(by_name.grads, by_function.grads) == 0.0
    np.testing.assert_array_equal(fbp.mlp(params, x, "gelu"), fbp.mlp(params, x, fbp.gelu))


def test_backprop_under_jit():
    params, x, y = problem(3, "bce_with_logits")
    f = jax.jit(lambda p, x, y: fbp.backprop(p, x, y, "sigmoid", "bce_with_logits").grads)
    assert rel_err(f(params, x, y), fbp.backprop(params, x, y).grads) <= 1e-14


def test_backprop_uses_no_autodiff(monkeypatch):
    """The δ recursion is written out: with JAX's autodiff entry points disabled it still runs,
    and its program calls the custom rules only for the forward values (6 calls, no bwd)."""
    params, x, y = problem(3, "bce_with_logits")
    want = fbp.backprop(params, x, y).grads
    for name in ("grad", "value_and_grad", "vjp", "jvp", "linearize", "jacrev", "jacfwd"):
        monkeypatch.setattr(jax, name, lambda *a, **k: pytest.fail("backprop used autodiff"))
    assert rel_err(fbp.backprop(params, x, y).grads, want) == 0.0
    jaxpr = str(jax.make_jaxpr(lambda p: fbp.backprop(p, x, y).grads)(params))
    assert jaxpr.count("custom_vjp_call") == 2 * 2 + 1 + 1  # 2 × (dense, σ), last dense, loss


@pytest.mark.parametrize("call,exc,match", [
    (lambda: fbp.init_mlp(jax.random.PRNGKey(0), []), ValueError, "sizes must list at least two"),
    (lambda: fbp.init_mlp(jax.random.PRNGKey(0), [3]), ValueError, "sizes must list"),
    (lambda: fbp.init_mlp(jax.random.PRNGKey(0), [3, 0, 2]), ValueError, r"sizes\[1\]"),
    (lambda: fbp.mlp([], jnp.ones((2, 3))), TypeError, "params must be a non-empty list"),
    (lambda: fbp.mlp(fbp.init_mlp(jax.random.PRNGKey(0), [3, 2]), jnp.ones((2, 3)), "swish"),
     ValueError, "unknown activation 'swish'; known: gelu, leaky_relu, relu, sigmoid, tanh"),
    (lambda: fbp.backprop(fbp.init_mlp(jax.random.PRNGKey(0), [3, 2]), jnp.ones((2, 3)),
                          jnp.zeros((2, 2)), loss="hinge"), ValueError, "unknown loss 'hinge'"),
    (lambda: fbp.backprop(fbp.init_mlp(jax.random.PRNGKey(0), [3, 4, 2]), jnp.ones((2, 3)),
                          jnp.zeros((2, 2)), activation=jax.nn.swish), ValueError,
     "backprop knows σ'"),
    (lambda: fbp.mlp(fbp.init_mlp(jax.random.PRNGKey(0), [3, 2]), jnp.ones((2, 3)), 3),
     TypeError, "activation must be a name"),
    (lambda: fbp.backprop(fbp.init_mlp(jax.random.PRNGKey(0), [3, 2]), jnp.ones((2, 3)),
                          jnp.array([0, 2]), loss="softmax_cross_entropy"), ValueError,
     "labels must lie in"),
])
def test_bad_input_is_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
