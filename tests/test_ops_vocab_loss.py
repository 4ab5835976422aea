"""linear_cross_entropy: the fused and chunked rules against the textbook rule and autodiff of
optax.

The reference materialises the logits ``h @ W.T`` and differentiates optax's
``softmax_cross_entropy_with_integer_labels`` (the masked mean written out with ``jnp``), so
``jax.vjp`` of it is JAX's own autodiff through log-softmax: what the hand-written rules
must reproduce, the fused and chunked ones without ever forming the (N, V) logits.
"""

from functools import partial

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fbp
from tests import _proof

F64 = jnp.float64
TIGHT = 1e-12
V, B = 11, 4                    # three blocks; the last is shifted back to columns 7..10
METHODS = ["fused", "chunked", "dense"]
BLOCKED = ["fused", "chunked"]  # the two that walk blocks


def ref_loss(h, W, labels, where=None, return_lse=False):
    z = h @ W.T
    ce = optax.losses.softmax_cross_entropy_with_integer_labels(z, labels)
    mask = jnp.ones(labels.shape, bool) if where is None else where
    loss = jnp.sum(jnp.where(mask, ce, 0)) / jnp.maximum(jnp.sum(mask), 1)
    return (loss, jax.nn.logsumexp(z, axis=-1)) if return_lse else loss


def _args(key, batch, n, dtype=F64, vocab=V):
    k1, k2, k3 = jax.random.split(key, 3)
    return (jax.random.normal(k1, (*batch, n), dtype),
            jax.random.normal(k2, (vocab, n), dtype),
            jax.random.randint(k3, batch, 0, vocab))


def _op(name, **kwargs):
    return _proof.Op(name, partial(fbp.linear_cross_entropy, **kwargs), ref_loss, _args,
                     diff=(0, 1), batched=(0, 2))


OPS = [_op("fused B=4 T=4 (both ragged)", block_size=B, tokens_per_block=4),
       _op("fused B=1 T=1", block_size=1, tokens_per_block=1),
       _op("fused, default blocks", method="fused"),
       _op("chunked B=4 (ragged)", method="chunked", block_size=B),
       _op("chunked B=1", method="chunked", block_size=1), _op("dense", method="dense")]


@pytest.mark.parametrize("op", OPS, ids=repr)
@pytest.mark.parametrize("batch", [(2, 3)])
def test_vjp_equals_autodiff_of_optax(op, batch):
    args = op.make(jax.random.PRNGKey(0), batch, 5)
    assert _proof.vjp_vs_reference(op, args, jax.random.PRNGKey(1)) <= TIGHT


@pytest.mark.parametrize("op", [OPS[0], OPS[3]], ids=repr)
def test_jacobian_finite_differences_jit_vmap_and_own_rule(op):
    # the dense rule goes through the same checks in python -m fbp.check
    args = op.make(jax.random.PRNGKey(2), (5,), 3)
    _proof.assert_proven(op, args)


def _grads(f, h, W):
    return jax.jit(jax.value_and_grad(f, (0, 1)))(h, W)


@pytest.mark.parametrize("method", BLOCKED)
def test_blocked_rules_equal_the_textbook_rule_on_block_edges(method):
    """Labels at 0, B − 1, B, 2B − 1, 2B, V − 1: the first, last and shifted-back vocabulary
    blocks; the fused rule's 6 tokens in blocks of 4 (the last shifted back over 2 rows)."""
    vocab = 2 * B + 3
    h, W, _ = _args(jax.random.PRNGKey(6), (6,), 4, vocab=vocab)
    labels = jnp.array([0, B - 1, B, 2 * B - 1, 2 * B, vocab - 1])
    blocked = _grads(lambda h, W: fbp.linear_cross_entropy(
        h, W, labels, block_size=B, method=method, tokens_per_block=4), h, W)
    dense = _grads(lambda h, W: fbp.linear_cross_entropy(h, W, labels, method="dense"), h, W)
    ref = _grads(lambda h, W: ref_loss(h, W, labels), h, W)
    assert _proof.rel_err(blocked, dense) <= TIGHT
    assert _proof.rel_err(blocked, ref) <= TIGHT


@pytest.mark.parametrize("method", METHODS)
def test_where_masks_positions_whose_labels_may_be_anything(method):
    h, W, labels = _args(jax.random.PRNGKey(7), (3, 4), 5)
    where = jnp.array([[True, False, True, True], [False, False, True, False],
                       [True, True, False, True]])
    padded = jnp.where(where, labels, -100)         # padding ids outside [0, V): never read
    f = lambda h, W: fbp.linear_cross_entropy(h, W, padded, where=where, block_size=B,
                                              method=method,
                                              tokens_per_block=5 if method == "fused" else None)
    ref = _grads(lambda h, W: ref_loss(h, W, labels, where), h, W)
    assert _proof.rel_err(_grads(f, h, W), ref) <= TIGHT
    # only the counted tokens' hidden states get a gradient
    h_bar = np.asarray(jax.grad(f)(h, W))
    assert np.all(h_bar[~np.asarray(where)] == 0) and np.all(h_bar[np.asarray(where)] != 0)


@pytest.mark.parametrize("method", METHODS)
def test_no_counted_token_gives_zero_loss_and_zero_gradient(method):
    h, W, labels = _args(jax.random.PRNGKey(8), (4,), 3)
    none = jnp.zeros((4,), bool)
    loss, (h_bar, W_bar) = _grads(lambda h, W: fbp.linear_cross_entropy(
        h, W, labels, where=none, block_size=B, method=method), h, W)
    assert float(loss) == 0 and not np.any(h_bar) and not np.any(W_bar)


@pytest.mark.parametrize("method", METHODS)
def test_an_empty_batch_gives_zero_loss_and_empty_gradients(method):
    h, W, labels = _args(jax.random.PRNGKey(13), (0,), 3)
    f = lambda h, W: fbp.linear_cross_entropy(h, W, labels, block_size=B, method=method)
    loss, (h_bar, W_bar) = _grads(f, h, W)
    assert float(loss) == 0 and float(jax.jit(f)(h, W)) == 0
    assert h_bar.shape == (0, 3) and W_bar.shape == W.shape and not np.any(W_bar)


@pytest.mark.parametrize("method", METHODS)
def test_returned_lse_and_its_cotangent(method):
    """(loss, lse) with random cotangents for both: a z-loss differentiates through lse."""
    h, W, labels = _args(jax.random.PRNGKey(9), (2, 3), 4)
    where = jnp.array([[True, True, False], [True, False, True]])
    f = lambda h, W: fbp.linear_cross_entropy(h, W, labels, where=where, block_size=B,
                                              return_lse=True, method=method)
    ref = lambda h, W: ref_loss(h, W, labels, where, return_lse=True)
    k1, k2 = jax.random.split(jax.random.PRNGKey(10))
    g = (jax.random.normal(k1, ()), jax.random.normal(k2, (2, 3)))
    both = jax.jit(lambda h, W, g: [(lambda o, pb: (o, pb(g)))(*jax.vjp(fn, h, W))
                                    for fn in (f, ref)])
    (out, bars), (ref_out, ref_bars) = both(h, W, g)
    assert out[1].shape == (2, 3)
    assert _proof.rel_err(out, ref_out) <= TIGHT
    assert _proof.rel_err(bars, ref_bars) <= TIGHT
    z_loss = lambda fn: (lambda h, W: (lambda l, s: l + 1e-2 * jnp.mean(s ** 2))(*fn(h, W)))
    assert _proof.rel_err(_grads(z_loss(f), h, W), _grads(z_loss(ref), h, W)) <= TIGHT


@settings(max_examples=4)
@given(batch=st.lists(st.integers(1, 4), min_size=1, max_size=2), n=st.integers(1, 6),
       vocab=st.integers(1, 13), block=st.integers(1, 9), tokens=st.integers(1, 9),
       method=st.sampled_from(BLOCKED), seed=st.integers(0, 2**31 - 1))
def test_random_shapes_vocabularies_and_block_sizes(batch, n, vocab, block, tokens, method,
                                                    seed):
    h, W, labels = _args(jax.random.PRNGKey(seed), tuple(batch), n, vocab=vocab)
    f = lambda h, W: fbp.linear_cross_entropy(h, W, labels, block_size=block, method=method,
                                              tokens_per_block=tokens)
    assert _proof.rel_err(_grads(f, h, W),
                          _grads(lambda h, W: ref_loss(h, W, labels), h, W)) <= TIGHT


@pytest.mark.parametrize("method", BLOCKED)
def test_jit_with_traced_labels_and_float32(method):
    h, W, labels = _args(jax.random.PRNGKey(11), (6,), 8, jnp.float32, vocab=37)
    f = jax.jit(jax.value_and_grad(
        lambda h, W, y: fbp.linear_cross_entropy(h, W, y, block_size=8, method=method), (0, 1)))
    got = f(h, W, labels)
    assert got[0].dtype == jnp.float32
    assert _proof.rel_err(got, jax.value_and_grad(ref_loss, (0, 1))(h, W, labels)) <= 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_traced_labels_outside_the_vocabulary_give_nan_as_softmax_cross_entropy_does(method):
    """Inside jit labels cannot be checked: a counted token labelled −1 or V makes the loss NaN
    and its own gradient row NaN (so all of W̄), in every rule, exactly where
    fbp.softmax_cross_entropy of the materialised logits is NaN; before, a clipped index
    trained such a token on another class, silently.  Not counted, the same labels are never
    read."""
    h, W, labels = _args(jax.random.PRNGKey(14), (5,), 4)
    bad = labels.at[1].set(-1).at[3].set(V)
    tokens = 2 if method == "fused" else None
    f = lambda h, W, y, w: fbp.linear_cross_entropy(h, W, y, where=w, block_size=B,
                                                    method=method, tokens_per_block=tokens)
    ref = lambda h, W, y, w: fbp.softmax_cross_entropy(h @ W.T, y, where=w)
    got, want = (jax.jit(jax.value_and_grad(fn, (0, 1))) for fn in (f, ref))
    counted = jnp.ones((5,), bool)
    loss, (h_bar, W_bar) = got(h, W, bad, counted)
    ref_loss_, (ref_h, ref_W) = want(h, W, bad, counted)
    assert np.isnan(loss) and np.isnan(ref_loss_)
    assert np.array_equal(np.isnan(h_bar), np.isnan(ref_h))
    assert np.isnan(h_bar).all(axis=1).tolist() == [False, True, False, True, False]
    assert np.isnan(W_bar).all() and np.isnan(ref_W).all()
    finite = ~np.isnan(np.asarray(ref_h))
    assert np.max(np.abs(np.asarray(h_bar)[finite] - np.asarray(ref_h)[finite])) <= TIGHT
    padded = counted.at[1].set(False).at[3].set(False)
    out = got(h, W, bad, padded)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(out))
    assert _proof.rel_err(out, want(h, W, bad, padded)) <= TIGHT


@pytest.mark.parametrize("method, kept", [("chunked", (16,)), ("fused", (64, 8))])
def test_residuals_hold_no_tokens_by_vocabulary_array(method, kept):
    """The chunked rule keeps lse (N,) and the inputs, the fused one h̄ (N, D) and W̄ (V, D);
    autodiff keeps the (N, V) logits."""
    h, W, labels = _args(jax.random.PRNGKey(12), (16,), 8, vocab=64)
    f = lambda h, W: fbp.linear_cross_entropy(h, W, labels, block_size=16, method=method,
                                              tokens_per_block=4)
    _, pullback = jax.vjp(f, h, W)
    shapes = [leaf.shape for leaf in jax.tree.leaves(pullback) if hasattr(leaf, "shape")]
    assert (16, 64) not in shapes and kept in shapes
    if method == "fused":       # only h̄ and W̄: no lse, labels or mask, and W̄ is the gradient
        assert (16,) not in shapes
        W_bar = jax.grad(lambda W: ref_loss(h, W, labels))(W)          # autodiff of optax
        assert any(leaf.shape == W.shape and _proof.rel_err(leaf, W_bar) <= TIGHT
                   for leaf in jax.tree.leaves(pullback) if hasattr(leaf, "shape"))
    ours = sum(leaf.nbytes for leaf in jax.tree.leaves(pullback) if hasattr(leaf, "nbytes"))
    theirs = _proof.residual_bytes(lambda h, W: ref_loss(h, W, labels), (h, W), (0, 1))
    assert theirs - ours >= 16 * 64 * 8             # at least the float64 logits fewer


def _bad(**kw):
    h, W, labels = jnp.ones((3, 4)), jnp.ones((5, 4)), jnp.array([0, 1, 2])
    args = {"h": h, "W": W, "labels": labels, **kw}
    return lambda: fbp.linear_cross_entropy(args.pop("h"), args.pop("W"), args.pop("labels"),
                                            **args)


@pytest.mark.parametrize("call, error, match", [
    (_bad(W=jnp.ones((5, 3))), ValueError, r"h must have shape \(\.\.\., D\) with D = .* 3"),
    (_bad(W=jnp.ones((4, 5))), ValueError, r"not W\.T"),
    (_bad(W=jnp.ones((5,))), ValueError, r"W must have at least 2"),
    (_bad(labels=jnp.array([0, 5, 1])), ValueError, r"labels must lie in \[0, 5\).*\[0, 5\]"),
    (_bad(labels=jnp.array([0, -1, 1])), ValueError, r"labels must lie in \[0, 5\)"),
    (_bad(labels=jnp.array([0.0, 1.0, 2.0])), TypeError, r"labels must have an integer.*astype"),
    (_bad(labels=jnp.array([0, 1])), ValueError, r"labels must have shape h\.shape\[:-1\]"),
    (_bad(block_size=0), ValueError,
     r"block_size must be a positive int; got 0\. Pass e\.g\. block_size=1024"),
    (_bad(block_size=-3), ValueError, r"block_size must be a positive int; got -3"),
    (_bad(block_size=2.0), TypeError, r"block_size must be a positive int; got float"),
    (_bad(where=jnp.array([1, 0, 1])), TypeError, r"where must be a boolean array"),
    (_bad(where=jnp.array([True, False])), ValueError, r"where must have the shape of labels"),
    (_bad(W=jnp.ones((5, 4), jnp.float32), h=jnp.ones((3, 4), F64)), TypeError,
     r"h, W must share one dtype"),
    (_bad(method="naive"), ValueError,
     r"method must be one of \['fused', 'chunked', 'dense'\]"),
    (_bad(tokens_per_block=0), ValueError,
     r"tokens_per_block must be a positive int; got 0\. Pass e\.g\. tokens_per_block=128"),
    (_bad(tokens_per_block=2.5), TypeError, r"tokens_per_block must be a positive int; got float"),
    (_bad(block_size=True), TypeError, r"block_size must be a positive int; got bool"),
])
def test_bad_input_is_explained(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_out_of_range_labels_under_where_false_are_accepted():
    h, W = jnp.ones((3, 4)), jnp.ones((5, 4))
    loss = fbp.linear_cross_entropy(h, W, jnp.array([0, 99, 1]),
                                    where=jnp.array([True, False, True]))
    assert float(loss) == pytest.approx(np.log(5), rel=1e-14)   # equal logits: log V



def test_numpy_integer_block_sizes_are_taken_as_ints():
    h, W, labels = _args(jax.random.PRNGKey(14), (5,), 3)
    got = fbp.linear_cross_entropy(h, W, labels, block_size=np.int64(4),
                                   tokens_per_block=np.int32(2))
    assert _proof.rel_err(got, ref_loss(h, W, labels)) <= TIGHT


def _dots(fn, *args) -> int:
    """dot_generals in the jaxpr of ``fn`` (each loop body counted once, as a program holds it)."""
    def count(jaxpr):
        here = sum(eqn.primitive.name == "dot_general" for eqn in jaxpr.eqns)
        return here + sum(count(sub) for sub in jax.extend.core.subjaxprs(jaxpr))
    return count(jax.make_jaxpr(fn)(*args).jaxpr)


@pytest.mark.parametrize("method, loss_dots, grad_dots", [("fused", 1, 3), ("chunked", 1, 4)])
def test_the_rules_matmuls_per_block(method, loss_dots, grad_dots):
    """The cost the docstring claims: the fused rule's gradient is autodiff's three N·V·D
    matmuls (z, δ W, δᵀ h), the chunked one's four (z twice); the loss alone is one."""
    h, W, labels = _args(jax.random.PRNGKey(15), (6,), 3)
    f = lambda h, W: fbp.linear_cross_entropy(h, W, labels, block_size=4, method=method)
    assert _dots(f, h, W) == loss_dots
    assert _dots(jax.value_and_grad(f, (0, 1)), h, W) == grad_dots


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_gradients_are_as_accurate_as_autodiffs(dtype):
    """The fused W̄ sums one partial per block of tokens (128 here): kept in float32, its error
    against the float64 truth is autodiff's own (summed in bfloat16 it was 8× that)."""
    h, W, labels = _args(jax.random.PRNGKey(16), (2048,), 32, vocab=3000)
    W = W / 32 ** 0.5
    truth = _grads(lambda h, W: ref_loss(h, W, labels), h, W)
    low = (h.astype(dtype), W.astype(dtype))
    fused = _grads(lambda h, W: fbp.linear_cross_entropy(h, W, labels, tokens_per_block=16), *low)
    autodiff = _grads(lambda h, W: ref_loss(h, W, labels), *low)
    assert fused[1][1].dtype == dtype
    err = lambda got: _proof.rel_err(got[1][1], truth[1][1])
    assert err(fused) <= 1.5 * err(autodiff)


def test_the_default_rule_is_the_cheapest_exact_one():
    """fused (3 matmuls) for the loss; chunked (4, against fused's 6) when lse is returned."""
    h, W, labels = _args(jax.random.PRNGKey(17), (6,), 3)

    def dots(method, return_lse):
        def objective(h, W):
            out = fbp.linear_cross_entropy(h, W, labels, block_size=4, method=method,
                                           return_lse=return_lse)
            return out[0] + jnp.sum(out[1] ** 2) if return_lse else out     # a z-loss
        return _dots(jax.grad(objective, (0, 1)), h, W)

    assert (dots("fused", False), dots("chunked", False), dots(None, False)) == (3, 4, 3)
    assert (dots("fused", True), dots("chunked", True), dots(None, True)) == (6, 4, 4)
