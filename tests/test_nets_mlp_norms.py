"""fbp.mlp's norm and residual options against the same networks built from reference ops.

The reference network uses only jax.nn activations, plain-jnp dense layers and
normalisation, and optax's loss, so its ``jax.grad`` is JAX's own autodiff throughout.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import fbp
from fbp.nets.mlp import NormDense
from fbp.ops.norms import BatchNormParams, BatchNormState, LayerNormParams

F64 = jnp.float64
EPS, MOMENTUM = 1e-5, 0.9
REF_ACT = {"sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "relu": jax.nn.relu}


def ref_mlp(params, x, act, residual, state, training):
    """The network by hand: z = a Wᵀ + b, norm(z), σ, optional skip; returns (logits, state)."""
    a, new_state = x, []
    for l, p in enumerate(params[:-1]):
        d = p.dense if isinstance(p, NormDense) else p
        z = a @ d.W.T + d.b[None]
        if isinstance(p, NormDense) and isinstance(p.norm, BatchNormParams):
            if training:
                mu, var = jnp.mean(z, axis=0), jnp.var(z, axis=0)
                old = state[l]
                new_state.append(BatchNormState(
                    MOMENTUM * old.mean + (1 - MOMENTUM) * jax.lax.stop_gradient(mu),
                    MOMENTUM * old.var + (1 - MOMENTUM) * jax.lax.stop_gradient(var)))
            else:
                mu, var = state[l]
                new_state.append(state[l])
            z = p.norm.gamma[None] * (z - mu[None]) / jnp.sqrt(var[None] + EPS) + p.norm.beta[None]
        elif isinstance(p, NormDense):
            mu, var = jnp.mean(z, axis=-1, keepdims=True), jnp.var(z, axis=-1, keepdims=True)
            z = p.norm.gamma[None] * (z - mu) / jnp.sqrt(var + EPS) + p.norm.beta[None]
        h = REF_ACT[act](z)
        a = a + h if residual and d.W.shape[0] == d.W.shape[1] else h
    W, b = params[-1]
    return a @ W.T + b[None], new_state


def ref_loss(params, x, y, act, residual, state, training):
    logits, new_state = ref_mlp(params, x, act, residual, state, training)
    return jnp.mean(optax.losses.sigmoid_binary_cross_entropy(logits, y)), new_state


def fbp_loss(params, x, y, act, residual, state, training):
    out = fbp.mlp_loss(params, x, y, act, "bce_with_logits", residual=residual, state=state,
                       training=training)
    return out if state is not None else (out, [])


def _net(norm, sizes, key=0):
    out = fbp.init_mlp(jax.random.PRNGKey(key), sizes, dtype=F64, norm=norm)
    params, state = out if norm == "batch" else (out, None)
    if norm is not None:        # move γ, β off 1, 0 so that they matter
        k1, k2 = jax.random.split(jax.random.PRNGKey(key + 1))
        params = [NormDense(p.dense, type(p.norm)(
            1 + 0.3 * jax.random.normal(jax.random.fold_in(k1, i), p.norm.gamma.shape, F64),
            0.3 * jax.random.normal(jax.random.fold_in(k2, i), p.norm.beta.shape, F64)))
                  for i, p in enumerate(params[:-1])] + [params[-1]]
    return params, state


def _data(m, n_in, n_out, key=3):
    k1, k2 = jax.random.split(jax.random.PRNGKey(key))
    x = jax.random.normal(k1, (m, n_in), F64)
    return x, (jax.random.uniform(k2, (m, n_out)) < 0.5).astype(F64)


def _grads(loss_fn, params, x, y, act, residual, state, training=True):
    fn = partial(loss_fn, act=act, residual=residual, training=training)
    return jax.jit(jax.value_and_grad(fn, has_aux=True),
                   compiler_options={"xla_backend_optimization_level": 0})(params, x, y,
                                                                          state=state)


def rel_err(a, b) -> float:
    fa, fb = (np.asarray(ravel_pytree(t)[0], np.float64) for t in (a, b))
    den = np.linalg.norm(fa) + np.linalg.norm(fb)
    return 0.0 if den == 0 else float(np.linalg.norm(fa - fb) / den)


@pytest.mark.parametrize("norm", [None, "layer", "batch"])
@pytest.mark.parametrize("residual", [False, True])
def test_mlp_gradients_equal_the_reference_network(norm, residual):
    act = "relu" if norm == "layer" else "sigmoid"
    params, state = _net(norm, [5, 6, 6, 7, 7, 2])
    x, y = _data(16, 5, 2)
    (loss, new_state), grads = _grads(fbp_loss, params, x, y, act, residual, state)
    (loss_ref, state_ref), grads_ref = _grads(ref_loss, params, x, y, act, residual, state)
    assert abs(float(loss) - float(loss_ref)) <= 1e-13 * abs(float(loss_ref))
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert rel_err(grads, grads_ref) <= 1e-12
    assert rel_err(new_state, state_ref) <= 1e-14


def test_batch_norm_mlp_in_evaluation_uses_the_running_state():
    params, state = _net("batch", [4, 6, 6, 3])
    x, y = _data(12, 4, 3)
    _, state = jax.jit(partial(fbp.mlp, residual=True))(params, x, state=state)  # a step
    evaluate = jax.jit(partial(fbp.mlp, residual=True, training=False))
    logits, same = evaluate(params, x, state=state)
    expected, _ = ref_mlp(params, x, "sigmoid", True, state, training=False)
    np.testing.assert_allclose(logits, expected, rtol=1e-13)
    assert rel_err(same, state) == 0.0
    one, _ = evaluate(params, x[3], state=state)
    np.testing.assert_allclose(one, logits[3], rtol=1e-13)   # a single example is fine here
    (_, _), grads = _grads(fbp_loss, params, x, y, "sigmoid", True, state, training=False)
    (_, _), grads_ref = _grads(ref_loss, params, x, y, "sigmoid", True, state, training=False)
    assert rel_err(grads, grads_ref) <= 1e-12


def test_init_mlp_shapes_and_shared_weights():
    sizes, key = [3, 4, 4, 2], jax.random.PRNGKey(0)
    plain = fbp.init_mlp(key, sizes, dtype=F64)
    layer = fbp.init_mlp(key, sizes, dtype=F64, norm="layer", residual=True)
    params, state = fbp.init_mlp(key, sizes, dtype=F64, norm="batch")
    assert all(type(p) is fbp.Dense for p in plain) and len(plain) == 3
    for net, cls in ((layer, LayerNormParams), (params, BatchNormParams)):
        assert [type(p) for p in net] == [NormDense, NormDense, fbp.Dense]
        assert all(type(p.norm) is cls and p.norm.gamma.shape == (4,) for p in net[:-1])
        np.testing.assert_array_equal(net[0].dense.W, plain[0].W)   # same key, same weights
        np.testing.assert_array_equal(net[-1].W, plain[-1].W)
    assert [(type(s), s.mean.shape) for s in state] == [(BatchNormState, (4,))] * 2
    np.testing.assert_array_equal(state[0].var, np.ones(4))


def test_twenty_layer_sigmoid_first_layer_gradient_norms():
    """‖∂L/∂W₁‖ at initialisation: plain vs residual vs batch norm (printed; run with -s).

    Only correctness is asserted: each equals jax.grad of the same reference network.
    """
    sizes = [16] * 20 + [1]                   # 20 dense layers, 19 hidden of width 16
    x, y = _data(64, 16, 1, key=11)
    norms = {}
    for label, norm, residual in [("plain", None, False), ("residual", None, True),
                                  ("batch norm", "batch", False)]:
        out = fbp.init_mlp(jax.random.PRNGKey(5), sizes, dtype=F64, norm=norm)
        params, state = out if norm else (out, None)
        _, grads = _grads(fbp_loss, params, x, y, "sigmoid", residual, state)
        _, grads_ref = _grads(ref_loss, params, x, y, "sigmoid", residual, state)
        W1_bar = grads[0].dense.W if norm else grads[0].W
        W1_ref = grads_ref[0].dense.W if norm else grads_ref[0].W
        assert rel_err(W1_bar, W1_ref) <= 1e-10
        if norm is None:
            bp = jax.jit(partial(fbp.backprop, residual=residual))(params, x, y)
            assert rel_err(bp.grads[0].W, W1_ref) <= 1e-10
        norms[label] = float(jnp.linalg.norm(W1_bar))
    print("\n20-layer sigmoid MLP, ‖∂L/∂W₁‖ at init (He, batch 64): "
          + ", ".join(f"{k} {v:.3e}" for k, v in norms.items()))
    assert all(np.isfinite(v) and v > 0 for v in norms.values())


_p3 = fbp.init_mlp(jax.random.PRNGKey(0), [3, 3, 3, 1], dtype=F64)
_l3 = fbp.init_mlp(jax.random.PRNGKey(0), [3, 3, 3, 1], dtype=F64, norm="layer")
_b3, _s3 = fbp.init_mlp(jax.random.PRNGKey(0), [3, 3, 3, 1], dtype=F64, norm="batch")
_x3, _y3 = jnp.ones((4, 3), F64), jnp.ones((4, 1), F64)

BAD = [
    (lambda: fbp.init_mlp(jax.random.PRNGKey(0), [3, 3, 1], norm="group"), ValueError, "norm"),
    (lambda: fbp.init_mlp(jax.random.PRNGKey(0), [3, 4, 5, 1], residual=True), ValueError,
     "residual=True needs a hidden layer"),
    (lambda: fbp.init_mlp(jax.random.PRNGKey(0), [3, 3, 1], residual=1), TypeError, "residual"),
    (lambda: fbp.mlp(_b3, _x3), ValueError, "needs state"),
    (lambda: fbp.mlp(_b3, _x3, state=_s3[:1]), ValueError, "one per hidden layer"),
    (lambda: fbp.mlp(_p3, _x3, state=_s3), ValueError, "state is only for"),
    (lambda: fbp.mlp(_l3, _x3, state=_s3), ValueError, "state is only for"),
    (lambda: fbp.mlp(_b3, _x3[0], state=_s3), ValueError, "batch of one"),
    (lambda: fbp.mlp(_b3, _x3, state=_s3, training="yes"), TypeError, "training"),
    (lambda: fbp.mlp(_p3, _x3, residual="yes"), TypeError, "residual"),
    (lambda: fbp.mlp([_l3[0], _p3[1], _p3[2]], _x3), TypeError, "mixture"),
    (lambda: fbp.mlp(_l3[:1], _x3), TypeError, "last layer"),
    (lambda: fbp.backprop(_l3, _x3, _y3), ValueError, "backprop covers plain and residual"),
    (lambda: fbp.backprop(_b3, _x3, _y3), ValueError, "backprop covers plain and residual"),
]


@pytest.mark.parametrize("call, exc, match", BAD, ids=[m for _, _, m in BAD])
def test_bad_mlp_options_raise_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
