"""embedding: the scatter-add rule against autodiff of a one-hot matmul and of jnp.take."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fbp
from tests import _proof

F64 = jnp.float64
TIGHT = 1e-12


def _args(key, batch, n, dtype=F64):
    vocab = 7
    k1, k2 = jax.random.split(key)
    ids = jax.random.randint(k2, batch, 0, vocab)
    return jax.random.normal(k1, (vocab, n), dtype), ids


def _onehot_matmul(table, ids):           # the definition: y = onehot(id) · table
    return jax.nn.one_hot(ids, table.shape[0], dtype=table.dtype) @ table


OPS = [
    _proof.Op("embedding vs onehot·table", fbp.embedding, _onehot_matmul, _args, diff=(0,),
              batched=(1,)),
    _proof.Op("embedding vs jnp.take", fbp.embedding,
              lambda t, i: jnp.take(t, i, axis=0), _args, diff=(0,), batched=(1,)),
]


@pytest.mark.parametrize("op", OPS, ids=repr)
@pytest.mark.parametrize("batch", [(), (2, 5)])
def test_vjp_equals_autodiff_of_reference(op, batch):
    args = op.make(jax.random.PRNGKey(0), batch, 4)
    assert _proof.vjp_vs_reference(op, args, jax.random.PRNGKey(1)) <= TIGHT


def test_jacobian_finite_differences_jit_vmap_and_own_rule():
    op = OPS[0]
    args = op.make(jax.random.PRNGKey(2), (6,), 3)
    _proof.assert_proven(op, args)


@settings(max_examples=4)
@given(batch=st.lists(st.integers(1, 4), min_size=0, max_size=3), n=st.integers(1, 9),
       seed=st.integers(0, 2**31 - 1))
def test_random_shapes_and_values(batch, n, seed):
    args = OPS[0].make(jax.random.PRNGKey(seed), tuple(batch), n)
    assert _proof.vjp_vs_reference(OPS[0], args, jax.random.PRNGKey(seed + 1)) <= TIGHT


def test_repeated_ids_accumulate_and_unused_rows_get_zero():
    table = jnp.arange(12.0).reshape(4, 3)
    ids = jnp.array([[1, 3], [1, 1]])
    g = jnp.arange(12.0).reshape(2, 2, 3) + 1
    _, pullback = jax.vjp(lambda t: fbp.embedding(t, ids), table)
    (table_bar,) = pullback(g)
    gn = np.asarray(g)
    expected = np.zeros((4, 3))
    expected[1] = gn[0, 0] + gn[1, 0] + gn[1, 1]
    expected[3] = gn[0, 1]
    np.testing.assert_array_equal(table_bar, expected)
    np.testing.assert_array_equal(fbp.embedding(table, ids), np.asarray(table)[np.asarray(ids)])


def test_float32_and_traced_ids():
    table, ids = _args(jax.random.PRNGKey(6), (5,), 4, jnp.float32)
    out = jax.jit(fbp.embedding)(table, ids)
    assert out.dtype == jnp.float32 and out.shape == (5, 4)
    assert _proof.vjp_vs_reference(OPS[0], (table, ids), jax.random.PRNGKey(7)) <= 1e-6


def test_traced_ids_outside_the_table_give_nan_rows_and_no_gradient():
    """Inside jit ids cannot be checked: −1, −vocab and vocab each give a NaN row and add
    nothing to the table's gradient.  Before, −1 read (and trained) the last row, silently:
    jnp.take wraps negative indices round as NumPy does, though concrete −1 is refused."""
    table = jnp.arange(15.0).reshape(5, 3)
    ids = jnp.array([0, 4, -1, 5, -5], jnp.int8)
    out = jax.jit(fbp.embedding)(table, ids)
    assert np.isnan(out).all(axis=1).tolist() == [False, False, True, True, True]
    np.testing.assert_array_equal(out[:2], np.asarray(table)[[0, 4]])
    g = jnp.arange(15.0).reshape(5, 3) + 1
    table_bar = jax.jit(lambda t, i: jax.vjp(lambda t: fbp.embedding(t, i), t)[1](g)[0])(
        table, ids)
    expected = np.zeros((5, 3))
    expected[0], expected[4] = np.asarray(g)[0], np.asarray(g)[1]
    np.testing.assert_array_equal(table_bar, expected)


def test_residual_is_the_ids_alone():
    table, ids = _args(jax.random.PRNGKey(8), (16,), 8)
    ours = _proof.residual_bytes(fbp.embedding, (table, ids), (0,))
    theirs = _proof.residual_bytes(lambda t, i: jnp.take(t, i, axis=0), (table, ids), (0,))
    assert ours == ids.nbytes
    assert ours <= theirs


@pytest.mark.parametrize("table, ids, error, match", [
    (jnp.ones((4, 3)), jnp.array([0.0, 1.0]), TypeError, r"ids must have an integer dtype.*astype"),
    (jnp.ones((4, 3)), jnp.array([True, False]), TypeError, r"ids must have an integer dtype"),
    (jnp.ones((4, 3)), jnp.array([0, 4]), ValueError, r"ids must lie in \[0, 4\).*\[0, 4\]"),
    (jnp.ones((4, 3)), jnp.array([-1, 2]), ValueError, r"ids must lie in \[0, 4\).*\[-1, 2\]"),
    (jnp.ones((4,)), jnp.array([0]), ValueError, r"table must have at least 2"),
    (jnp.ones((4, 3, 2)), jnp.array([0]), ValueError, r"table must have shape \(vocab, d\)"),
    (jnp.ones((4, 3), jnp.int32), jnp.array([0]), TypeError, r"table must have a floating"),
])
def test_bad_input_is_explained(table, ids, error, match):
    with pytest.raises(error, match=match):
        fbp.embedding(table, ids)



def test_traced_int64_ids_beyond_int32_are_outside_the_table_not_wrapped():
    """Under x64 an int64 id ≥ 2³¹ (or < −2³¹) is outside the table like any other: a NaN row
    and no gradient.  Before, the gather narrowed the ids to int32, so 2³² + 1 read (and
    trained) row 1 and 2³³ row 0, silently."""
    table = jnp.arange(15.0).reshape(5, 3)
    ids = jnp.array([2**32 + 1, 2**33, 2**31, -(2**31) - 1, -(2**32) + 2, 2**63 - 1, 3],
                    jnp.int64)
    out = jax.jit(fbp.embedding)(table, ids)
    assert np.isnan(out).all(axis=1).tolist() == [True] * 6 + [False]
    np.testing.assert_array_equal(out[6], np.asarray(table)[3])
    g = jnp.arange(21.0).reshape(7, 3) + 1
    table_bar = jax.jit(lambda t, i: jax.vjp(lambda t: fbp.embedding(t, i), t)[1](g)[0])(
        table, ids)
    expected = np.zeros((5, 3))
    expected[3] = np.asarray(g)[6]
    np.testing.assert_array_equal(table_bar, expected)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 5\)"):
        fbp.embedding(table, ids)                      # concrete: refused, as before


@pytest.mark.parametrize("transform", [lambda f: f, jax.jit], ids=["concrete", "traced"])
def test_uint64_ids_pick_the_right_rows_and_gradient(transform):
    table = jnp.arange(15.0).reshape(5, 3)
    ids = jnp.array([[4, 0], [2, 4]], jnp.uint64)
    g = jnp.arange(12.0).reshape(2, 2, 3) + 1
    out, pullback = transform(lambda t, i: jax.vjp(lambda t: fbp.embedding(t, i), t))(table, ids)
    np.testing.assert_array_equal(out, np.asarray(table)[np.asarray(ids)])
    (table_bar,) = pullback(g)
    (expected,) = jax.vjp(_onehot_matmul, table, ids.astype(jnp.int64))[1](g)[:1]
    np.testing.assert_array_equal(table_bar, expected)
    if transform is jax.jit:                            # traced ids past the end: NaN, no gradient
        huge = jnp.array([2**64 - 1, 5, 1], jnp.uint64)
        y = jax.jit(fbp.embedding)(table, huge)
        assert np.isnan(y).all(axis=1).tolist() == [True, True, False]
