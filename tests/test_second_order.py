"""fbp.hvp (the hand-written R-operator) against three independent second derivatives.

1. forward-over-reverse ``jax.jvp(jax.grad(loss))`` of a reference loss built only from
   jax.nn / plain jnp (forward mode cannot pass through a custom_vjp, so no fbp op in it);
2. reverse-over-reverse through fbp's own rules: ``jax.grad`` of ⟨jax.grad(fbp.mlp_loss), v⟩;
3. central differences of ``fbp.backprop`` gradients along v, and the full Hessian of the
   XOR network by ``jacrev(jacrev)`` of the reference.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import fbp
from fbp.second_order import hessian, hvp

REF_ACTIVATIONS = {
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "gelu": lambda z: jax.nn.gelu(z, approximate=False),
    "relu": jax.nn.relu,
    "leaky_relu": lambda z: jax.nn.leaky_relu(z, 0.01),
}


def ref_loss(params, x, y, activation, loss, residual=False):
    """The MLP loss from jax.nn / jnp only (no fbp op, no custom_vjp)."""
    a = x
    for W, b in params[:-1]:
        h = REF_ACTIVATIONS[activation](a @ W.T + b[None, :])
        a = a + h if residual and W.shape[0] == W.shape[1] else h
    z = a @ params[-1][0].T + params[-1][1][None, :]
    if loss == "mse":
        return jnp.mean((z - y) ** 2)
    if loss == "bce_with_logits":
        return jnp.mean(jax.nn.softplus(z) - y * z)
    logp = jax.nn.log_softmax(z, axis=-1)
    if jnp.issubdtype(y.dtype, jnp.integer):
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))
    return -jnp.mean(jnp.sum(y * logp, axis=-1))


def problem(depth, loss, *, seed=0, width=5, m=7, n_in=3, soft=False):
    """Params with non-zero biases, a batch, targets and a random direction v (float64)."""
    n_out = 3  # one set of layer shapes for every case, so eager op caches are reused
    k = jax.random.split(jax.random.key(seed), 5)
    sizes = [n_in] + [width] * (depth - 1) + [n_out]
    params = fbp.init_mlp(k[0], sizes, scheme="xavier", dtype=jnp.float64)
    params = [fbp.Dense(W, 0.3 * jax.random.normal(kb, b.shape, b.dtype))
              for (W, b), kb in zip(params, jax.random.split(k[1], depth), strict=True)]
    x = jax.random.normal(k[2], (m, n_in), jnp.float64)
    if loss == "softmax_cross_entropy":
        y = (jax.random.dirichlet(k[3], jnp.ones(n_out), (m,)) * 1.5 if soft
             else jax.random.randint(k[3], (m,), 0, n_out))
    else:
        y = jax.random.uniform(k[3], (m, n_out), jnp.float64)
    leaves, tree = jax.tree.flatten(params)
    v = jax.tree.unflatten(tree, [jax.random.normal(kv, a.shape, a.dtype)
                                  for a, kv in zip(leaves, jax.random.split(k[4], len(leaves)),
                                                   strict=True)])
    return params, x, y, v


def flat(tree):
    return np.asarray(ravel_pytree(tree)[0])


def rel(a, b):
    return float(np.linalg.norm(flat(a) - flat(b)) / np.linalg.norm(flat(b)))


LOSSES = ["bce_with_logits", "softmax_cross_entropy", "mse"]
# depths 1–4 × every smooth activation, the loss rotating so each (activation, loss) pair
# occurs; relu / leaky_relu (σ'' = 0 off the kink); residual MLPs.
CASES = (
    [(d, act, LOSSES[(d + i) % 3], False) for d in (1, 2, 3, 4)
     for i, act in enumerate(("sigmoid", "tanh", "gelu"))]
    + [(3, "relu", "softmax_cross_entropy", False), (3, "leaky_relu", "mse", False)]
    + [(3, act, LOSSES[i], True) for i, act in enumerate(("sigmoid", "tanh", "gelu"))]
)


@pytest.mark.parametrize("depth, activation, loss, residual", CASES)
def test_hvp_equals_forward_over_reverse_and_reverse_over_reverse(depth, activation, loss,
                                                                  residual):
    params, x, y, v = problem(depth, loss, seed=depth)
    got = hvp(params, x, y, v, activation, loss, residual=residual)

    def ref_grad(p):
        return jax.grad(ref_loss)(p, x, y, activation, loss, residual)

    fwd_over_rev = jax.jvp(ref_grad, (params,), (v,))[1]

    def grad_dot_v(p):  # reverse-over-reverse through fbp's hand-written bwd rules
        g = jax.grad(fbp.mlp_loss)(p, x, y, activation, loss, residual=residual)
        return jnp.vdot(ravel_pytree(g)[0], ravel_pytree(v)[0])

    rev_over_rev = jax.grad(grad_dot_v)(params)
    assert jax.tree.structure(got) == jax.tree.structure(params)
    assert rel(got, fwd_over_rev) <= 1e-10
    assert rel(got, rev_over_rev) <= 1e-10


def test_hvp_soft_targets_softmax_cross_entropy():
    params, x, y, v = problem(2, "softmax_cross_entropy", soft=True)  # Σ_k t_k = 1.5
    got = hvp(params, x, y, v, "tanh", "softmax_cross_entropy")
    want = jax.jvp(lambda p: jax.grad(ref_loss)(p, x, y, "tanh", "softmax_cross_entropy"),
                   (params,), (v,))[1]
    assert rel(got, want) <= 1e-10


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "gelu"])
def test_hvp_equals_central_difference_of_backprop(activation):
    params, x, y, v = problem(3, "bce_with_logits", seed=7)
    eps = 1e-5

    def grads_at(t):
        shifted = jax.tree.map(lambda p, d: p + t * d, params, v)
        return flat(fbp.backprop(shifted, x, y, activation).grads)

    fd = (grads_at(eps) - grads_at(-eps)) / (2 * eps)
    got = flat(hvp(params, x, y, v, activation))
    assert np.linalg.norm(got - fd) / np.linalg.norm(fd) <= 1e-8


XOR_X = jnp.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], jnp.float64)
XOR_Y = jnp.array([[0.0], [1.0], [1.0], [0.0]], jnp.float64)


def test_xor_full_hessian_equals_jacrev_jacrev():
    params = fbp.init_mlp(jax.random.key(3), [2, 4, 1], dtype=jnp.float64)
    theta, unravel = ravel_pytree(params)
    assert theta.size == 17

    def flat_loss(t):
        return ref_loss(unravel(t), XOR_X, XOR_Y, "sigmoid", "bce_with_logits")

    want = np.asarray(jax.jit(jax.jacrev(jax.jacrev(flat_loss)))(theta))
    got = np.asarray(jax.jit(hessian, static_argnums=(3, 4))(
        params, XOR_X, XOR_Y, "sigmoid", "bce_with_logits"))
    assert got.shape == (17, 17)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12 * np.abs(want).max())
    np.testing.assert_allclose(got, got.T, rtol=0, atol=1e-14 * np.abs(want).max())
    v = jax.random.normal(jax.random.key(4), (17,), jnp.float64)
    hv = flat(hvp(params, XOR_X, XOR_Y, unravel(v), "sigmoid", "bce_with_logits"))
    np.testing.assert_allclose(hv, want @ np.asarray(v), rtol=1e-10,
                               atol=1e-12 * np.abs(want).max())


@pytest.mark.parametrize("transform", [lambda f: f, jax.jit])
def test_hvp_under_jit_and_vmap_over_directions(transform):
    params, x, y, v = problem(2, "mse", seed=5)
    f = transform(lambda v: hvp(params, x, y, v, "tanh", "mse"))
    vs = jax.tree.map(lambda a: jnp.stack([a, -2 * a]), v)
    batched = jax.vmap(f)(vs)
    one = f(v)
    np.testing.assert_allclose(flat(jax.tree.map(lambda a: a[0], batched)), flat(one),
                               rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(flat(jax.tree.map(lambda a: a[1], batched)), -2 * flat(one),
                               rtol=1e-12, atol=1e-14)


def _bad(case):
    params, x, y, v = problem(2, "bce_with_logits")
    if case == "v_structure":
        return (params, x, y, v[:1]), {}
    if case == "v_shape":
        return (params, x, y, [fbp.Dense(v[0].W.T, v[0].b), v[1]]), {}
    if case == "v_dtype":
        return (params, x, y, jax.tree.map(lambda a: a.astype(jnp.float32), v)), {}
    if case == "activation":
        return (params, x, y, v), {"activation": fbp.softmax}
    if case == "loss":
        return (params, x, y, v), {"loss": fbp.bce}
    if case == "x":
        return (params, x[:, :2], y, v), {}
    raise AssertionError(case)


@pytest.mark.parametrize("case, error, match", [
    ("v_structure", ValueError, "v must have the pytree structure"),
    ("v_shape", ValueError, "v leaf 0 must have the shape"),
    ("v_dtype", TypeError, "v leaf 0 must have the dtype"),
    ("activation", ValueError, "activation must be one of"),
    ("loss", ValueError, "loss must be one of"),
    ("x", ValueError, "x must have shape"),
])
def test_hvp_bad_input_errors(case, error, match):
    args, kwargs = _bad(case)
    with pytest.raises(error, match=match):
        hvp(*args, **kwargs)


# ── fbp.check_vjp's second-order check: the hand-written rules are themselves differentiable ──

def _second_order_cases():
    k = jax.random.split(jax.random.key(11), 4)
    z = jax.random.normal(k[0], (4, 3), jnp.float64)
    params = fbp.init_mlp(k[1], [3, 4, 2], dtype=jnp.float64)
    labels = jax.random.randint(k[2], (4,), 0, 3)
    t = jax.random.uniform(k[3], (4, 3), jnp.float64)
    return {
        "sigmoid": (fbp.sigmoid, (z,)),
        "tanh": (fbp.tanh, (z,)),
        "gelu": (fbp.gelu, (z,)),
        "softmax": (fbp.softmax, (z,)),
        "dense": (fbp.dense, (params[0], z)),
        "bce_with_logits": (lambda z: fbp.bce_with_logits(z, t), (z,)),
        "softmax_cross_entropy": (lambda z: fbp.softmax_cross_entropy(z, labels), (z,)),
        "mse": (lambda z: fbp.mse(z, t), (z,)),
        "mlp_loss": (lambda p, x: fbp.mlp_loss(p, x, t[:, :2], "gelu", "mse"), (params, z)),
    }


@pytest.mark.parametrize("name", list(_second_order_cases()))
def test_fbp_rules_pass_check_vjp_second_order(name):
    f, args = _second_order_cases()[name]
    report = fbp.check_vjp(f, *args, checks=("rev-over-rev",))
    assert report.ok, str(report)
    assert report.rows and all(r.check == "rev-over-rev" for r in report.rows)


def test_check_vjp_second_order_catches_a_rule_that_is_only_first_order_right():
    """Negative control: σ' computed from a stop_gradient'ed output is right to first order
    and wrong to second, so the rev-over-rev check must fail on it."""
    @jax.custom_vjp
    def bad_tanh(z):
        return jnp.tanh(z)

    bad_tanh.defvjp(lambda z: (jnp.tanh(z), jnp.tanh(z)),
                    lambda h, g: (g * (1 - jax.lax.stop_gradient(h) ** 2),))
    z = jax.random.normal(jax.random.key(12), (4, 3), jnp.float64)
    assert fbp.check_vjp(bad_tanh, z, checks=("autodiff",)).ok
    assert not fbp.check_vjp(bad_tanh, z, checks=("rev-over-rev",)).ok
