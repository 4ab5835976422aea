"""batch_norm, layer_norm and group_norm at the edges: half precision, empty batches, NumPy ints.

The references are plain ``jnp`` (``tests.test_ops_norms``, ``fbp.check.op_cases_conv``);
in half precision they run in float32 and their results are cast to the input's dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fbp
from fbp.check.op_cases_conv import ref_group_norm
from tests._proof import vjp
from tests.test_ops_norms import ref_batch_norm, ref_layer_norm

F32 = jnp.float32

# (name, fbp op, plain-jnp reference, params maker, x shape)
NORMS = [
    ("batch_norm", lambda p, x: fbp.batch_norm(p, x)[0], ref_batch_norm, fbp.BatchNormParams,
     (64, 5)),
    ("layer_norm", fbp.layer_norm, ref_layer_norm, fbp.LayerNormParams, (8, 33)),
    ("group_norm", lambda p, x: fbp.group_norm(p, x, 2), lambda p, x: ref_group_norm(p, x, 2),
     fbp.GroupNormParams, (3, 4, 4, 6)),
]


def _half_args(cls, shape, dtype, key):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    n = shape[-1]
    params = cls((1 + 0.5 * jax.random.normal(k1, (n,), F32)).astype(dtype),
                 jax.random.normal(k2, (n,), F32).astype(dtype))
    x = (300 * jax.random.normal(k3, shape, F32)).astype(dtype)   # (x − μ)² > 65,504 often
    g = jax.random.normal(k4, shape, F32).astype(dtype)
    return params, x, g


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=lambda d: d.__name__)
@pytest.mark.parametrize("name, f, ref, cls, shape", NORMS, ids=[c[0] for c in NORMS])
def test_half_precision_inputs_of_magnitude_300_normalise_like_float32(name, f, ref, cls,
                                                                      shape, dtype):
    """Before, float16 took (x − μ)² in float16: inf above 256², so σ = inf and y = β, x̄ = 0."""
    params, x, g = _half_args(cls, shape, dtype, jax.random.PRNGKey(0))
    up = lambda t: jax.tree.map(lambda a: a.astype(F32), t)  # noqa: E731
    y, bars = f(params, x), vjp(f, (params, x), g)
    y_ref, bars_ref = ref(up(params), up(x)), vjp(ref, up((params, x)), up(g))
    tol = 2 * float(jnp.finfo(dtype).eps)          # 2 ulps of 1 (of the largest entry)
    for ours, theirs in zip(jax.tree.leaves((y, bars)), jax.tree.leaves((y_ref, bars_ref)),
                            strict=True):
        assert ours.dtype == dtype and bool(jnp.all(jnp.isfinite(ours)))
        theirs = np.asarray(theirs.astype(dtype), np.float64)
        np.testing.assert_allclose(np.asarray(ours, np.float64), theirs, rtol=tol,
                                   atol=tol * np.max(np.abs(theirs)))


def test_batch_norm_float16_running_state_stays_float16():
    params, state = fbp.init_batch_norm(5, jnp.float16)
    x = (10 * jax.random.normal(jax.random.PRNGKey(1), (64, 5), F32)).astype(jnp.float16)
    _, new = fbp.batch_norm(params, x, state, momentum=0.0)
    assert new.mean.dtype == new.var.dtype == jnp.float16
    x32 = np.asarray(x, np.float64)
    np.testing.assert_allclose(np.asarray(new.var, np.float64), x32.var(axis=0), rtol=2e-3)
    np.testing.assert_allclose(np.asarray(new.mean, np.float64), x32.mean(axis=0), atol=2e-2)


# ── group_norm's integer hyperparameters: any integer type, still no bools or floats ──

@pytest.mark.parametrize("c, groups", [(np.int64(4), np.int64(2)), (np.int32(4), np.uint8(2)),
                                       (4, jnp.int32(2))], ids=["int64", "int32-uint8", "jax"])
def test_group_norm_takes_numpy_ints(c, groups):
    params = fbp.init_group_norm(c, jnp.float64)
    assert params.gamma.shape == (4,) and isinstance(params, fbp.GroupNormParams)
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 3, 3, 4), jnp.float64)
    np.testing.assert_allclose(fbp.group_norm(params, x, groups), ref_group_norm(params, x, 2),
                               rtol=1e-12, atol=1e-12)


_P4 = fbp.GroupNormParams(jnp.ones(4, jnp.float64), jnp.zeros(4, jnp.float64))
_X4 = jnp.ones((2, 3, 3, 4), jnp.float64)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: fbp.init_group_norm(True), TypeError, r"c must be a positive int.*got bool True"),
    (lambda: fbp.init_group_norm(4.0), TypeError, r"c must be a positive int.*got float 4\.0"),
    (lambda: fbp.init_group_norm(np.int64(0)), ValueError, r"c must be a positive int.*got 0"),
    (lambda: fbp.init_group_norm(-3), ValueError, r"c must be a positive int.*got -3"),
    (lambda: fbp.group_norm(_P4, _X4, True), TypeError,
     r"groups must be a positive int dividing the 4 channels of x; got bool True"),
    (lambda: fbp.group_norm(_P4, _X4, np.bool_(True)), TypeError, r"groups .* got bool"),
    (lambda: fbp.group_norm(_P4, _X4, 2.0), TypeError, r"groups .* got float 2\.0"),
    (lambda: fbp.group_norm(_P4, _X4, np.int64(0)), ValueError, r"groups .* got 0"),
    (lambda: fbp.group_norm(_P4, _X4, np.int64(3)), ValueError,
     r"groups must be a positive int dividing the 4 channels of x; got 3\. E\.g\. groups=1"),
], ids=["c bool", "c float", "c 0", "c -3", "groups bool", "groups np.bool_", "groups float",
        "groups 0", "groups 3"])
def test_group_norm_bad_hyperparameters_are_explained(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ── empty batches: what the plain-jnp computation does ──

def _ref_gn_any_rank(params, x, groups):
    """ref_group_norm on x (..., H, W, C), the leading axes flattened without a −1."""
    x4 = x.reshape(int(np.prod(x.shape[:-3])), *x.shape[-3:])
    return ref_group_norm(params, x4, groups).reshape(x.shape)


@pytest.mark.parametrize("shape, groups", [((0, 3, 3, 4), 2), ((0, 3, 4), 2), ((2, 0, 3, 4), 2),
                                           ((2, 3, 0, 4), 4), ((5, 0, 2, 3, 3, 4), 1),
                                           ((2, 3, 3, 0), 1)], ids=str)
def test_group_norm_of_an_empty_input_is_empty_with_zero_param_gradients(shape, groups):
    """Before, any empty x but one with only the leading axes empty raised ZeroDivisionError
    (a reshape to −1 of zero elements)."""
    c = shape[-1]
    params = fbp.GroupNormParams(jnp.ones(c, jnp.float64), jnp.zeros(c, jnp.float64))
    x = jnp.ones(shape, jnp.float64)
    f = lambda p, x: fbp.group_norm(p, x, groups)  # noqa: E731
    ref = lambda p, x: _ref_gn_any_rank(p, x, groups)  # noqa: E731
    y = f(params, x)
    assert y.shape == shape and y.dtype == jnp.float64
    g = jnp.ones(shape, jnp.float64)
    ours, theirs = vjp(f, (params, x), g), vjp(ref, (params, x), g)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ours[0].gamma, np.zeros(c))


def test_layer_norm_and_batch_norm_eval_of_an_empty_batch_are_empty_like_plain_jnp():
    params, state = fbp.init_batch_norm(4, jnp.float64)
    ln = fbp.init_layer_norm(4, jnp.float64)
    x, g = jnp.ones((0, 4), jnp.float64), jnp.ones((0, 4), jnp.float64)
    bn_eval = lambda p, x: fbp.batch_norm(p, x, state, training=False)[0]  # noqa: E731
    for f, ref, p in [(fbp.layer_norm, ref_layer_norm, ln),
                      (bn_eval, lambda p, x: p.gamma[None] * (x - state.mean[None]) / jnp.sqrt(
                          state.var[None] + 1e-5) + p.beta[None], params)]:
        assert f(p, x).shape == (0, 4)
        ours, theirs = vjp(f, (p, x), g), vjp(ref, (p, x), g)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
            assert a.shape == b.shape
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape", [(0, 4), (0, 3, 4), (3, 0, 4)], ids=str)
def test_batch_norm_training_on_an_empty_batch_is_a_clear_error(shape):
    """Batch statistics of zero examples are undefined (0/0): refused, as documented."""
    params, _ = fbp.init_batch_norm(4, jnp.float64)
    with pytest.raises(ValueError, match=r"needs at least 2 rows; got x of shape .*an empty "
                                         r"batch \(0 rows.*training=False"):
        fbp.batch_norm(params, jnp.ones(shape, jnp.float64))
