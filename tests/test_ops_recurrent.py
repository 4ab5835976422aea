"""rnn and lstm: hand-written BPTT against jax.grad of a plain-jnp lax.scan, four ways.

The references (fbp/check/op_cases_recurrent.py) are the textbook cells in a plain scan,
differentiated by JAX; truncated BPTT's reference is that scan with lax.stop_gradient on the
state carried into steps k, 2k, … (where the docstrings say the cut is).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fbp
from fbp.check.op_cases_recurrent import reference_lstm, reference_rnn
from tests import _proof

F64 = jnp.float64
TIGHT = 1e-12


def _params(kind, key, n_in, n, dtype=F64):
    """Random params, W_hh scaled 1.2× past orthogonal so long sequences stay non-trivial."""
    k1, k2, k3 = jax.random.split(key, 3)
    rows = n if kind == "rnn" else 4 * n
    cls = fbp.RNN if kind == "rnn" else fbp.LSTM
    return cls(jax.random.normal(k1, (rows, n_in), dtype) / np.sqrt(n_in),
               1.2 * jax.random.normal(k2, (rows, n), dtype) / np.sqrt(n),
               0.3 * jax.random.normal(k3, (rows,), dtype))


def _args(kind, key, batch, T, n_in=3, n=4, dtype=F64):
    """(params, xs, h0) for rnn, (params, xs, h0, c0) for lstm."""
    kp, kx, kh, kc = jax.random.split(key, 4)
    state = [jax.random.normal(kh, (*batch, n), dtype)]
    if kind == "lstm":
        state.append(jax.random.normal(kc, (*batch, n), dtype))
    return (_params(kind, kp, n_in, n, dtype), jax.random.normal(kx, (*batch, T, n_in), dtype),
            *state)


def _flat_lstm(lstm):
    """hs with the final h and c appended along time: one output array (T + 2 rows), so the
    cotangents of all three outputs enter the rule."""
    def f(p, x, *state, truncate=None):
        hs, (h, c) = lstm(p, x, tuple(state) if state else None, truncate=truncate)
        return jnp.concatenate([hs, h[..., None, :], c[..., None, :]], axis=-2)
    return f


FNS = {"rnn": (fbp.rnn, reference_rnn),
       "lstm": (_flat_lstm(fbp.lstm), _flat_lstm(reference_lstm))}


def _fns(kind, truncate=None, with_state=True):
    """(fbp op, reference) as functions of positional (params, xs, *state)."""
    f, ref = FNS[kind]
    if kind == "rnn":
        def bind(fn):
            return lambda p, x, *s: fn(p, x, *(s or (None,)), truncate=truncate)
    else:
        def bind(fn):
            return lambda p, x, *s: fn(p, x, *s, truncate=truncate)
    return bind(f), bind(ref)


def _op(kind, truncate=None, T=5, n_hidden=3):
    f, ref = _fns(kind, truncate)
    n_state = 1 if kind == "rnn" else 2
    return _proof.Op(f"{kind}(truncate={truncate})", f, ref,
                     lambda key, batch, n: _args(kind, key, batch, T, n, n_hidden),
                     diff=tuple(range(2 + n_state)), batched=tuple(range(1, 2 + n_state)))


OPS = [_op("rnn"), _op("lstm")]


def _grads(fn, args, g):
    return _proof.vjp(fn, args, g)


# (T, batch): T up to 64; no batch dims, one, and two
LENGTHS = [(1, ()), (7, (2, 3)), (64, (2,))]


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
@pytest.mark.parametrize("T, batch", LENGTHS)
def test_gradient_equals_autodiff_of_the_plain_scan(kind, T, batch):
    """With and without the initial state, any leading batch dims: values and VJPs."""
    args = _args(kind, jax.random.PRNGKey(T), batch, T)
    f, ref = _fns(kind)
    g = jax.random.normal(jax.random.PRNGKey(1), jax.eval_shape(f, *args).shape, F64)

    @jax.jit
    def run(args, g):
        return [(f(*a), ref(*a), _grads(f, a, g), _grads(ref, a, g)) for a in (args, args[:2])]

    for y, y_ref, grads, grads_ref in run(args, g):
        assert y.shape == (*batch, T + 2 * (kind == "lstm"), 4)
        if kind == "lstm":                               # the final h is the last of hs
            np.testing.assert_array_equal(y[..., T, :], y[..., T - 1, :])
        np.testing.assert_allclose(y, y_ref, rtol=1e-13, atol=1e-14)
        assert _proof.rel_err(grads, grads_ref) <= TIGHT


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_truncated_bptt_equals_the_scan_with_stop_gradient_where_documented(kind):
    """k = 1, 3, 7 (not dividing T), 20 = T; and the cut is real: k = 3 changes every
    gradient leaf, k = T is full BPTT, and the last chunk's x̄ is untouched by the cut."""
    T, ks = 20, (1, 3, 7, 20)
    args = _args(kind, jax.random.PRNGKey(3), (2,), T)
    g = jax.random.normal(jax.random.PRNGKey(2), jax.eval_shape(_fns(kind)[0], *args).shape, F64)

    @jax.jit
    def run(args, g):
        return [(_grads(_fns(kind, k)[0], args, g), _grads(_fns(kind, k)[1], args, g))
                for k in (None, *ks)]

    grads = dict(zip((None, *ks), run(args, g)))
    for k in ks:
        assert _proof.rel_err(*grads[k]) <= TIGHT, k
    full, cut = grads[None][0], grads[3][0]
    assert _proof.rel_err(grads[T][0], full) <= TIGHT
    for a, b in zip(jax.tree.leaves(cut), jax.tree.leaves(full)):
        assert _proof.rel_err(a, b) > 1e-3
    np.testing.assert_allclose(cut[1][:, 18:], full[1][:, 18:], rtol=1e-12)  # chunk [18, 20)


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_full_jacobian_equals_jacrev_of_reference(kind):
    for op in (_op(kind), _op(kind, 2)):
        assert _proof.jacobian_vs_jacrev(op, op.make(jax.random.PRNGKey(2), (2,), 2)) <= TIGHT


@pytest.mark.parametrize("op", OPS, ids=repr)
def test_vjp_agrees_with_central_differences(op):
    """Full BPTT only: truncated BPTT is on purpose not the derivative of the function."""
    args = op.make(jax.random.PRNGKey(3), (2,), 2)
    assert _proof.vjp_vs_finite_differences(op, args, jax.random.PRNGKey(4)) <= 1e-7


@pytest.mark.parametrize("op", [_op("rnn", T=3), _op("lstm", 2, T=3)], ids=repr)
def test_jit_and_vmap(op):
    args = op.make(jax.random.PRNGKey(5), (3,), 2)
    assert _proof.jit_vs_eager(op, args, jax.random.PRNGKey(6)) <= 1e-14
    assert _proof.vmap_vs_loop(op, args, jax.random.PRNGKey(7)) <= 1e-14
    assert _proof.uses_custom_rule(op, args)


@settings(max_examples=3)
@given(kind=st.sampled_from(["rnn", "lstm"]),
       batch=st.lists(st.integers(1, 3), min_size=0, max_size=2), T=st.integers(1, 6),
       n_in=st.integers(1, 4), n=st.integers(1, 4),
       truncate=st.one_of(st.none(), st.integers(1, 4)), seed=st.integers(0, 2**31 - 1))
def test_random_shapes_and_truncations(kind, batch, T, n_in, n, truncate, seed):
    args = _args(kind, jax.random.PRNGKey(seed), tuple(batch), T, n_in, n)
    op = _proof.Op(kind, *_fns(kind, truncate), None, diff=tuple(range(len(args))))
    assert _proof.vjp_vs_reference(op, args, jax.random.PRNGKey(seed + 1)) <= TIGHT


def test_float32_matches_reference():
    for op in OPS:
        args = jax.tree.map(lambda a: a.astype(jnp.float32),
                            op.make(jax.random.PRNGKey(10), (4,), 5))
        assert _proof.vjp_vs_reference(op, args, jax.random.PRNGKey(11)) <= 1e-5


def _residual_bytes(fn, args) -> int:
    """Bytes of the arrays the VJP closure keeps for the backward: ``_proof.residual_bytes``,
    traced abstractly (``jax.eval_shape``) instead of run eagerly."""
    leaves = jax.eval_shape(lambda a: jax.tree.leaves(jax.vjp(fn, *a)[1]), args)
    return sum(l.size * l.dtype.itemsize for l in leaves)


def test_residual_bytes_never_exceed_autodiff(capsys):
    """rnn saves h_t (not z_t); lstm saves gates, c_t and h_t: at most what autodiff keeps."""
    rows = []
    for op in OPS:
        args = _args(op.name[:op.name.index("(")], jax.random.PRNGKey(12), (16,), 8, 8, 8)
        ours, theirs = (_residual_bytes(fn, args) for fn in (op.f, op.ref))
        rows.append((op.name, ours, theirs))
        assert ours <= theirs, f"{op.name}: rule saves {ours} B, autodiff {theirs} B"
    with capsys.disabled():
        print("\nresidual bytes at batch 16, T 8, n_in 8, n 8, float64: op | fbp | autodiff")
        for name, ours, theirs in rows:
            print(f"  {name:22s} {ours:8d} {theirs:8d}")


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_forward_mode_by_transposition_equals_jvp_of_the_scan(kind):
    """fbp.transposed(op): its JVP equals jax.jvp of the reference (stop_gradient included)."""
    twin_op = fbp.transposed(FNS[kind][0] if kind == "lstm" else fbp.rnn)
    args = _args(kind, jax.random.PRNGKey(13), (2,), 6)
    tangents = jax.tree.map(lambda a: jax.random.normal(jax.random.PRNGKey(14), a.shape, F64),
                            args)

    @jax.jit
    def run(args, tangents):
        out = []
        for k in (None, 2):
            twin = (lambda p, x, *s, k=k: twin_op(p, x, *s, truncate=k))
            out.append((jax.jvp(twin, args, tangents), jax.jvp(_fns(kind, k)[1], args, tangents)))
        return out

    for (y, y_dot), (y_ref, y_dot_ref) in run(args, tangents):
        np.testing.assert_allclose(y, y_ref, rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(y_dot, y_dot_ref, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("op", OPS, ids=repr)
def test_forward_over_reverse_equals_the_plain_scan(op):
    """jax.jvp of jax.grad (what jax.hessian runs) through the rule, against the plain scan."""
    args = op.make(jax.random.PRNGKey(0), (2,), 3)
    g = _proof.cotangent(jax.random.PRNGKey(1), op.f(*args))
    leaves, treedef = jax.tree.flatten(args)
    tangents = jax.tree.unflatten(treedef, [_proof.cotangent(jax.random.PRNGKey(2 + i), a)
                                            for i, a in enumerate(leaves)])

    def hvp(fn):
        loss = lambda *a: jnp.sum(g * jnp.sin(fn(*a)))               # noqa: E731
        return jax.jvp(jax.grad(loss, tuple(range(len(args)))), args, tangents)

    assert _proof.rel_err(hvp(op.f), hvp(op.ref)) <= TIGHT


def test_init():
    key = jax.random.PRNGKey(0)
    p = fbp.init_rnn(key, 3, 5, F64)
    assert [a.shape for a in p] == [(5, 3), (5, 5), (5,)]
    np.testing.assert_allclose(p.W_hh @ p.W_hh.T, np.eye(5), atol=1e-12)   # orthogonal
    q = fbp.init_lstm(key, 3, 5)
    assert [a.shape for a in q] == [(20, 3), (20, 5), (20,)] and q.b.dtype == jnp.float32
    np.testing.assert_array_equal(q.b, np.r_[np.zeros(5), np.ones(5), np.zeros(10)])
    with pytest.raises(ValueError, match="n_hidden must be a positive int"):
        fbp.init_rnn(key, 3, 0)


P_RNN = _params("rnn", jax.random.PRNGKey(0), 3, 4)
P_LSTM = _params("lstm", jax.random.PRNGKey(0), 3, 4)
XS = jnp.ones((2, 5, 3))
ERRORS = [
    (lambda: fbp.rnn(P_RNN, jnp.ones(3)), ValueError, r"xs must have shape \(\.\.\., T, n_in\)"),
    (lambda: fbp.lstm(P_LSTM, jnp.ones(3)), ValueError, r"xs must have shape \(\.\.\., T, n_in\)"),
    (lambda: fbp.rnn(P_RNN, jnp.ones((2, 5, 4))), ValueError, "n_in = 3 features last"),
    (lambda: fbp.lstm(P_LSTM, jnp.ones((5, 2))), ValueError, "n_in = 3 features last"),
    (lambda: fbp.rnn(P_RNN, XS, jnp.ones((4,))), ValueError,
     r"h0 must have shape \(\*batch, n_hidden\) = \(2, 4\)"),
    (lambda: fbp.lstm(P_LSTM, XS, (jnp.ones((2, 4)), jnp.ones((2, 3)))), ValueError,
     r"c0 must have shape \(\*batch, n_hidden\) = \(2, 4\)"),
    (lambda: fbp.lstm(P_LSTM, XS, jnp.ones((2, 4))), TypeError, r"state0 must be a pair"),
    (lambda: fbp.rnn(P_RNN, jnp.ones((2, 0, 3))), ValueError, "T = 0 time steps"),
    (lambda: fbp.lstm(P_LSTM, jnp.ones((0, 3))), ValueError, "T = 0 time steps"),
    (lambda: fbp.rnn(P_RNN, XS, truncate=0), ValueError, "truncate must be None .* positive int"),
    (lambda: fbp.lstm(P_LSTM, XS, truncate=-2), ValueError, "truncate must be None"),
    (lambda: fbp.rnn(P_RNN, XS, truncate=2.0), ValueError, "truncate must be None"),
    (lambda: fbp.rnn(P_RNN, jnp.ones((2, 5, 3), jnp.int32)), TypeError,
     "xs must have a floating-point dtype"),
    (lambda: fbp.rnn(P_RNN, XS.astype(jnp.float32)), TypeError, "must share one dtype"),
    (lambda: fbp.rnn(P_RNN, XS, jnp.ones((2, 4), jnp.float32)), TypeError,
     "h0 must have the dtype of xs"),
    (lambda: fbp.rnn((P_RNN.W_xh, P_RNN.W_hh), XS), TypeError, r"params must be RNN\(W_xh"),
    (lambda: fbp.rnn(P_RNN._replace(W_hh=jnp.ones((4, 3))), XS), ValueError,
     r"W_hh must have shape \(4, 4\)"),
    (lambda: fbp.lstm(P_LSTM._replace(W_x=jnp.ones((15, 3))), XS), ValueError,
     "not a multiple of 4"),
    (lambda: fbp.lstm(P_LSTM._replace(b=jnp.ones((4,))), XS), ValueError,
     r"b must have shape \(16,\)"),
]


@pytest.mark.parametrize("call, error, match", ERRORS)
def test_bad_inputs_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
