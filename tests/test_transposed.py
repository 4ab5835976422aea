"""fbp.transposed: forward mode from the hand-written reverse rule, by transposition.

Every op of the op table (not the forward twins, which have JVPs of their own) gets a JVP
that equals ``jax.jvp`` of the op's independent reference, and a Jacobian by ``jax.jacfwd``
that equals ``jax.jacrev`` of that reference; under jit and vmap too.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fbp
from fbp.check.op_table import op_cases

CASES = [c for c in op_cases() if not c.name.startswith("forward.")]


def _floats_like(rng, tree):
    return jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(np.shape(x)), x.dtype)
                        if jnp.issubdtype(jnp.result_type(x), jnp.inexact) else x, tree)


def _split(args):
    """Positions of array arguments with float leaves (differentiated) and the rest."""
    dyn = [i for i, a in enumerate(args)
           if jax.tree.leaves(a) and all(isinstance(x, jax.Array) and
                                         jnp.issubdtype(x.dtype, jnp.floating)
                                         for x in jax.tree.leaves(a))]
    return dyn


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_jvp_of_transposed_rule_equals_reference_jvp(case):
    rng = np.random.default_rng(0)
    args = case.make_args(rng, jnp.float64)
    dyn = _split(args)

    def restrict(fn):
        def g(*d):
            full = list(args)
            for i, v in zip(dyn, d):
                full[i] = v
            return fn(*full)
        return g

    primals = tuple(args[i] for i in dyn)
    tangents = _floats_like(rng, primals)
    twin = fbp.transposed(case.fn)
    out, out_dot = jax.jvp(restrict(twin), primals, tangents)
    ref, ref_dot = jax.jvp(restrict(case.reference), primals, tangents)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(out_dot, ref_dot, rtol=1e-11, atol=1e-13)
    jit_dot = jax.jit(lambda p, t: jax.jvp(restrict(twin), p, t)[1])(primals, tangents)
    np.testing.assert_allclose(jit_dot, ref_dot, rtol=1e-11, atol=1e-13)


def test_jacfwd_and_vmap_of_a_twin():
    rng = np.random.default_rng(1)
    params = fbp.Dense(jnp.asarray(rng.standard_normal((3, 4))),
                       jnp.asarray(rng.standard_normal(3)))
    x = jnp.asarray(rng.standard_normal((5, 4)))
    twin = fbp.transposed(fbp.dense)
    jac = jax.jacfwd(lambda z: twin(params, z))(x)
    ref = jax.jacrev(lambda z: z @ params.W.T + params.b[None, :])(x)
    np.testing.assert_allclose(jac, ref, rtol=1e-12, atol=1e-14)
    per_example = jax.vmap(lambda z, t: jax.jvp(lambda u: twin(params, u), (z,), (t,))[1])
    t = jnp.asarray(rng.standard_normal(x.shape))
    np.testing.assert_allclose(per_example(x, t), t @ params.W.T, rtol=1e-12, atol=1e-14)


def test_the_twin_keeps_the_hand_rule_in_reverse_mode():
    """Reverse mode of the twin is the transpose of the transposed rule: the same gradient,
    and the op's custom_vjp is what runs (its call is in the twin's jaxpr)."""
    rng = np.random.default_rng(2)
    z = jnp.asarray(rng.standard_normal((4, 3)))
    labels = jnp.asarray([0, 2, 1, 1])
    twin = fbp.transposed(fbp.softmax_cross_entropy)
    g_twin = jax.grad(lambda u: twin(u, labels))(z)
    g_ref = (jax.nn.softmax(z) - jax.nn.one_hot(labels, 3)) / 4
    np.testing.assert_allclose(g_twin, g_ref, rtol=1e-12, atol=1e-15)
    assert "custom_vjp_call" in str(jax.make_jaxpr(lambda u: twin(u, labels))(z))
