"""softmax_cross_entropy(..., where=): the mean over the selected positions, proven four ways.

The reference masks optax's per-example losses with plain jnp, independent of fbp's rule.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fbp
from fbp.check import check_vjp
from fbp.check.op_cases_losses import cases
from tests import _proof
from tests._proof import Op

TIGHT, FD = 1e-12, 1e-7
F64 = jnp.float64


def _mask(key, batch):
    w = jax.random.uniform(key, batch) < 0.6
    return w.at[(0,) * len(batch)].set(True)          # at least one position counts


def _labels_args(key, batch, n, dtype=F64):
    k1, k2, k3 = jax.random.split(key, 3)
    return (3 * jax.random.normal(k1, (*batch, n), dtype), jax.random.randint(k2, batch, 0, n),
            _mask(k3, batch))


def _soft_args(key, batch, n, dtype=F64):
    k1, k2, k3 = jax.random.split(key, 3)
    return (3 * jax.random.normal(k1, (*batch, n), dtype),
            jax.nn.softmax(jax.random.normal(k2, (*batch, n), dtype), axis=-1), _mask(k3, batch))


def _masked_mean(per_position, w):
    return jnp.sum(jnp.where(w, per_position, 0.0)) / jnp.sum(w)


def _sce_where(z, t, w):
    return fbp.softmax_cross_entropy(z, t, where=w)


OPS = [
    Op("where(labels)", _sce_where, lambda z, t, w: _masked_mean(
        optax.losses.softmax_cross_entropy_with_integer_labels(z, t), w),
       _labels_args, diff=(0,), batched=(0, 1, 2)),
    Op("where(soft)", _sce_where, lambda z, t, w: _masked_mean(
        optax.losses.softmax_cross_entropy(z, t), w),
       _soft_args, diff=(0, 1), batched=(0, 1, 2)),
]


@pytest.mark.parametrize("op", OPS, ids=repr)
def test_the_four_way_proof(op):
    args = op.make(jax.random.PRNGKey(0), (3, 2), 4)
    assert _proof.vjp_vs_reference(op, args, jax.random.PRNGKey(1)) <= TIGHT
    assert _proof.jacobian_vs_jacrev(op, op.make(jax.random.PRNGKey(2), (4,), 3)) <= TIGHT
    assert _proof.vjp_vs_finite_differences(op, args, jax.random.PRNGKey(3)) <= FD
    assert _proof.jit_vs_eager(op, args, jax.random.PRNGKey(4)) <= 1e-14
    # vmap over examples: each example's own masked mean (its position in or out)
    assert _proof.vmap_vs_loop(op, op.make(jax.random.PRNGKey(5), (5,), 4),
                               jax.random.PRNGKey(6)) <= 1e-14
    assert _proof.uses_custom_rule(op, args)


def test_op_table_cases_pass_check_vjp_in_float32():
    for case in cases():
        args = case.make_args(np.random.default_rng(0), jnp.dtype("float32"))
        report = check_vjp(case.fn, *args, reference=case.reference, name=case.name,
                           checks=("structure", "autodiff", "jacobian", "finite-diff", "jit"))
        assert report.ok, str(report)


@pytest.mark.parametrize("make", [_labels_args, _soft_args])
def test_all_false_where_gives_zero_loss_and_zero_gradient(make):
    z, t, w = make(jax.random.PRNGKey(7), (3, 2), 4)
    none = jnp.zeros_like(w)
    loss, grads = jax.value_and_grad(_sce_where, argnums=(0, 1) if make is _soft_args
                                     else (0,))(z, t, none)
    assert float(loss) == 0.0
    for g in grads:
        np.testing.assert_array_equal(g, np.zeros(g.shape))
    # the plain mean over no positions would be 0/0
    assert np.isnan(float(jnp.mean(jnp.zeros(w.shape), where=none)))


def test_all_true_where_is_the_unmasked_mean():
    z, t, _ = _labels_args(jax.random.PRNGKey(8), (3, 2), 4)
    every = jnp.ones(t.shape, bool)
    np.testing.assert_allclose(_sce_where(z, t, every), fbp.softmax_cross_entropy(z, t),
                               rtol=1e-15)
    np.testing.assert_allclose(jax.grad(_sce_where)(z, t, every),
                               jax.grad(fbp.softmax_cross_entropy)(z, t), rtol=1e-14)


def test_labels_of_masked_positions_are_never_read():
    z, t, w = _labels_args(jax.random.PRNGKey(9), (4,), 3)
    w = jnp.array([True, False, True, False])
    padded = jnp.where(w, t, -1)                       # padding holds −1
    np.testing.assert_allclose(_sce_where(z, padded, w), _sce_where(z, t, w), rtol=1e-15)
    g = jax.jit(jax.grad(_sce_where))(z, padded, w)    # traced too: no NaN leaks
    np.testing.assert_allclose(g, jax.grad(_sce_where)(z, t, w), rtol=1e-15)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).*where"):
        _sce_where(z, jnp.where(w, -1, t), w)          # a selected position's label is read


def test_where_under_jit_with_a_traced_mask_and_infinite_padding_logits():
    z, t, _ = _labels_args(jax.random.PRNGKey(10), (4,), 3)
    w = jnp.array([True, True, False, False])
    z = z.at[2:].set(-jnp.inf)                          # padded positions may hold anything
    loss, g = jax.jit(jax.value_and_grad(_sce_where))(z, t, w)
    ref = optax.losses.softmax_cross_entropy_with_integer_labels(z[:2], t[:2]).mean()
    np.testing.assert_allclose(loss, ref, rtol=1e-14)
    assert bool(jnp.all(jnp.isfinite(g))) and bool(jnp.all(g[2:] == 0))


@pytest.mark.parametrize("where, exc, match", [
    (jnp.ones((4,), jnp.int32), TypeError, r"where must be a boolean array.*int32"),
    (jnp.ones((2, 2), bool), ValueError, r"where must have shape logits\.shape\[:-1\] = \(4,\)"),
])
def test_where_errors_name_where(where, exc, match):
    z, t, _ = _labels_args(jax.random.PRNGKey(11), (4,), 3)
    with pytest.raises(exc, match=match):
        _sce_where(z, t, where)
