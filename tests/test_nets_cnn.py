"""fbp.cnn: shapes, its loss gradient against jax.grad of a lax-only network, both conv forms."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fbp
from fbp.check.op_cases_conv import ref_cnn
from tests._proof import rel_err

F64 = jnp.float64


def test_init_cnn_shapes():
    p = fbp.init_cnn(jax.random.PRNGKey(0), (8, 8, 1), (16, 32), 10, dtype=F64)
    assert [c.W.shape for c in p.convs] == [(16, 3, 3, 1), (32, 3, 3, 16)]
    assert p.head.W.shape == (10, 2 * 2 * 32)
    assert fbp.cnn(p, jnp.zeros((5, 8, 8, 1), F64)).shape == (5, 10)
    assert fbp.cnn(p, jnp.zeros((8, 8, 1), F64)).shape == (10,)       # one image


def test_init_cnn_refuses_too_many_pools():
    with pytest.raises(ValueError, match="too small"):
        fbp.init_cnn(jax.random.PRNGKey(0), (4, 4, 1), (2, 2, 2))


@pytest.mark.parametrize("method", ["direct", "im2col"])
def test_cnn_loss_gradient_equals_jax_grad_of_the_reference(method):
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    params = fbp.init_cnn(k1, (8, 6, 2), (3, 4), 5, dtype=F64)
    x = jax.random.normal(k2, (4, 8, 6, 2), F64)
    labels = jnp.array([0, 3, 4, 1])

    def ref(p):
        return optax.losses.softmax_cross_entropy_with_integer_labels(ref_cnn(p, x), labels).mean()

    both = jax.jit(lambda p: (jax.value_and_grad(lambda p: fbp.cnn_loss(
        p, x, labels, method=method))(p), jax.value_and_grad(ref)(p)))
    (v, g), (v_ref, g_ref) = both(params)
    np.testing.assert_allclose(v, v_ref, rtol=1e-13)
    assert rel_err(g, g_ref) <= 1e-12
    assert "custom_vjp_call" in str(jax.make_jaxpr(fbp.cnn_loss)(params, x, labels))
