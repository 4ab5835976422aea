"""The forward-mode twins (fbp.forward), in float64.

For every op: the twin's reverse mode (JAX transposing the hand-written JVP) equals the
hand-written custom_vjp rule of its sibling; its JVP equals ``jax.jvp`` of the independent
reference in tests/_ops.py and central differences; ``jax.jacfwd`` and ``jax.hessian`` run
through it and equal the reference's; jit and vmap change nothing; bad input raises the
sibling's own error.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fbp
from fbp import forward
from fbp.check import check_vjp
from fbp.check.op_table import op_cases
from tests import _proof
from tests._ops import ALL_OPS

TIGHT = 1e-12   # two exact derivations of the same derivative: float64 rounding apart
FD = 1e-7       # central differences at step 1e-6: truncation + rounding ≈ 1e-10

TWINS = {
    "sigmoid": forward.sigmoid,
    "tanh": forward.tanh,
    "relu": forward.relu,
    "leaky_relu": forward.leaky_relu,
    "leaky_relu(α=0.2)": lambda z: forward.leaky_relu(z, alpha=0.2),
    "gelu": forward.gelu,
    "gelu(tanh)": lambda z: forward.gelu(z, approximate=True),
    "softmax": forward.softmax,
    "dense": forward.dense,
    "bce_with_logits": forward.bce_with_logits,
    "bce": forward.bce,
    "softmax_cross_entropy(labels)": forward.softmax_cross_entropy,
    "softmax_cross_entropy(soft)": forward.softmax_cross_entropy,
    "mse": forward.mse,
}
OPS = [op for op in ALL_OPS if op.name in TWINS]


def test_every_op_has_a_twin():
    assert {op.name for op in ALL_OPS} == set(TWINS)


def _twin(op):
    return TWINS[op.name]


def _tangents(key, primals):
    leaves, tree = jax.tree.flatten(primals)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [jax.random.normal(k, l.shape, l.dtype)
                                     for k, l in zip(keys, leaves, strict=True)])


def _normal_like(key, struct):
    return jax.random.normal(key, struct.shape, struct.dtype)


def _setup(op, key, batch=(3,), n=4):
    """(twin, sibling, reference) restricted to the differentiated args, and the primals."""
    args = op.make(key, batch, n)
    twin, primals = _proof.restrict(_twin(op), args, op.diff)
    sibling, _ = _proof.restrict(op.f, args, op.diff)
    ref, _ = _proof.restrict(op.ref, args, op.diff)
    return twin, sibling, ref, primals


# elementwise rules see no axes; the rest also run on a single example (no batch axis)
SHAPE_CASES = [(op, shape) for op in OPS for shape in [((2, 3), 4), ((), 5)]
               if shape[0] or op.name not in ("sigmoid", "tanh", "relu", "leaky_relu",
                                             "leaky_relu(α=0.2)", "gelu", "gelu(tanh)")]


@pytest.mark.parametrize("op,shape", SHAPE_CASES, ids=[f"{o.name}-{s[0]}" for o, s in SHAPE_CASES])
def test_transposed_jvp_equals_handwritten_vjp(op, shape):
    batch, n = shape
    twin, sibling, _, primals = _setup(op, jax.random.PRNGKey(0), batch, n)
    g = _normal_like(jax.random.PRNGKey(1), jax.eval_shape(sibling, *primals))

    @jax.jit          # compiled once per case: the suite stays fast on a busy machine
    def run(p, g):
        (out_twin, pull_twin), (out_sib, pull_sib) = jax.vjp(twin, *p), jax.vjp(sibling, *p)
        return out_twin, pull_twin(g), out_sib, pull_sib(g)

    out_twin, bar_twin, out_sib, bar_sib = run(primals, g)
    np.testing.assert_array_equal(out_twin, out_sib)            # the same forward function
    assert _proof.rel_err(bar_twin, bar_sib) <= TIGHT


@pytest.mark.parametrize("op", OPS, ids=repr)
def test_jvp_and_jacfwd_equal_reference_and_central_differences(op):
    twin, _, ref, primals = _setup(op, jax.random.PRNGKey(2))
    tangents = _tangents(jax.random.PRNGKey(3), primals)
    argnums = tuple(range(len(primals)))
    eps = 1e-6

    @jax.jit
    def run(p, t):
        def at(s):
            return twin(*jax.tree.map(lambda p_, t_: p_ + s * eps * t_, p, t))
        central = (at(1.0) - at(-1.0)) / (2 * eps)
        jacs = jax.jacfwd(twin, argnums)(*p), jax.jacrev(ref, argnums)(*p)
        return jax.jvp(twin, p, t), jax.jvp(ref, p, t), central, jacs

    (out, out_dot), (ref_out, ref_dot), central, jacs = run(primals, tangents)
    assert _proof.rel_err(out, ref_out) <= TIGHT
    assert _proof.rel_err(out_dot, ref_dot) <= TIGHT
    assert _proof.rel_err(out_dot, central) <= FD
    assert _proof.rel_err(*jacs) <= TIGHT          # n JVPs through the rule = full Jacobian


@pytest.mark.parametrize("op", OPS, ids=repr)
def test_hessian_equals_hessian_of_reference(op):
    """Second order (jax.hessian is jacfwd over jacrev): JAX differentiates each rule again,
    since the rule computes its output by calling its own op."""
    twin, _, ref, primals = _setup(op, jax.random.PRNGKey(7), (2,), 3)
    w = _normal_like(jax.random.PRNGKey(8), jax.eval_shape(ref, *primals))  # scalarises
    argnums = tuple(range(len(primals)))

    def hessian(fn):
        return jax.hessian(lambda *p: jnp.sum(w * fn(*p)), argnums)

    hessians = jax.jit(lambda p: (hessian(twin)(*p), hessian(ref)(*p)))
    assert _proof.rel_err(*hessians(primals)) <= TIGHT


@pytest.mark.parametrize("op", OPS, ids=repr)
def test_jit_and_vmap(op):
    args = op.make(jax.random.PRNGKey(9), (5,), 4)
    twin, primals = _proof.restrict(_twin(op), args, op.diff)
    tangents = _tangents(jax.random.PRNGKey(10), primals)
    eager = jax.jvp(twin, primals, tangents)
    jitted = jax.jit(lambda p, t: jax.jvp(twin, p, t))(primals, tangents)
    assert _proof.rel_err(eager, jitted) <= 1e-14

    # per-example JVPs under vmap equal a Python loop over the examples
    in_axes = tuple(0 if i in op.batched else None for i in range(len(args)))

    def one(*example):
        f, p = _proof.restrict(_twin(op), example, op.diff)
        return jax.jvp(f, p, jax.tree.map(lambda a: jnp.sin(3 * a) + 0.5, p))[1]

    vmapped = jax.jit(jax.vmap(one, in_axes=in_axes))(*args)
    one = jax.jit(one)
    looped = [one(*[a[i] if ax == 0 else a for a, ax in zip(args, in_axes, strict=True)])
              for i in range(5)]
    assert _proof.rel_err(vmapped, jnp.stack(looped)) <= 1e-14


@pytest.mark.parametrize("op", OPS, ids=repr)
def test_twin_runs_its_own_jvp_rule(op):
    args = op.make(jax.random.PRNGKey(11), (2,), 3)
    jaxpr = str(jax.make_jaxpr(_twin(op))(*args))
    assert "custom_jvp_call" in jaxpr and "custom_vjp_call" not in jaxpr


# ── bad input: the twin raises exactly the sibling's error ──

_W, _b = jnp.ones((3, 2)), jnp.zeros(3)
BAD = [
    ("sigmoid", (jnp.arange(3),), "z"),
    ("tanh", ("abc",), "z"),
    ("relu", (None,), "z"),
    ("leaky_relu", (jnp.ones(3), float("nan")), "alpha"),
    ("gelu", (jnp.ones(3), "yes"), "approximate"),
    ("softmax", (jnp.float64(1.0),), "z"),
    ("dense", (fbp.Dense(_W, _b), jnp.ones((4, 3))), "x"),
    ("dense", (fbp.Dense(_W, jnp.zeros(2)), jnp.ones((4, 2))), "b"),
    ("dense", ((_W,), jnp.ones(2)), "params"),
    ("bce_with_logits", (jnp.ones(3), jnp.array([0.0, 2.0, 1.0])), "y"),
    ("bce", (jnp.array([0.5, 1.5]), jnp.ones(2)), "y_hat"),
    ("softmax_cross_entropy", (jnp.ones((2, 3)), jnp.array([0, 3])), "labels"),
    ("softmax_cross_entropy", (jnp.ones((2, 3)), jnp.ones((2, 2))), "labels"),
    ("mse", (jnp.ones(3), jnp.ones(4)), "y"),
]


@pytest.mark.parametrize("name,args,arg_name", BAD, ids=[f"{b[0]}-{b[2]}" for b in BAD])
def test_bad_input_raises_the_siblings_error(name, args, arg_name):
    with pytest.raises((TypeError, ValueError), match=arg_name) as sibling_err:
        getattr(fbp, name)(*args)
    with pytest.raises(sibling_err.type, match=arg_name) as twin_err:
        getattr(forward, name)(*args)
    assert str(twin_err.value) == str(sibling_err.value)


# ── the forward-mode MLP ──

@pytest.mark.parametrize("activation,loss", [("sigmoid", "bce_with_logits"),
                                             ("tanh", "mse"),
                                             ("gelu", "softmax_cross_entropy")])
def test_forward_mlp_matches_fbp_mlp(activation, loss):
    key_p, key_x, key_y = jax.random.split(jax.random.PRNGKey(12), 3)
    params = fbp.init_mlp(key_p, [3, 5, 4, 2], "xavier", jnp.float64)
    x = jax.random.normal(key_x, (6, 3), jnp.float64)
    y = (jax.random.randint(key_y, (6,), 0, 2) if loss == "softmax_cross_entropy"
         else jax.random.uniform(key_y, (6, 2), jnp.float64))
    np.testing.assert_array_equal(forward.mlp(params, x, activation),
                                  fbp.mlp(params, x, activation))

    @jax.jit
    def run(params, x, y):
        grads = jax.grad(forward.mlp_loss)(params, x, y, activation, loss)
        grads_vjp = jax.grad(fbp.mlp_loss)(params, x, y, activation, loss)
        # the input Jacobian: n = 3 JVPs through the twins vs m = 2 VJPs through the siblings
        jac_fwd = jax.jacfwd(forward.mlp, 1)(params, x[0], activation)
        jac_rev = jax.jacrev(fbp.mlp, 1)(params, x[0], activation)
        return grads, grads_vjp, jac_fwd, jac_rev

    grads, grads_vjp, jac_fwd, jac_rev = run(params, x, y)
    assert _proof.rel_err(grads, grads_vjp) <= TIGHT
    assert _proof.rel_err(jac_fwd, jac_rev) <= TIGHT


def test_forward_mlp_rejects_unknown_activation_and_norm_layers():
    params = fbp.init_mlp(jax.random.PRNGKey(0), [2, 2], dtype=jnp.float64)
    with pytest.raises(ValueError, match="activation"):
        forward.mlp(params, jnp.ones(2), "swish")
    normed = fbp.init_mlp(jax.random.PRNGKey(0), [2, 3, 2], dtype=jnp.float64, norm="layer")
    with pytest.raises(ValueError, match="Dense layers only"):
        forward.mlp(normed, jnp.ones(2))


@pytest.mark.parametrize("moving", ["W", "b", "x"])
def test_dense_jvp_when_only_one_input_moves(moving):
    """The other tangents arrive as symbolic zeros and their terms are skipped."""
    (W, b), x = next(op for op in OPS if op.name == "dense").make(jax.random.PRNGKey(13), (3,), 4)

    def layer(fn, v):
        args = {"W": W, "b": b, "x": x, moving: v}
        return fn(fbp.Dense(args["W"], args["b"]), args["x"])

    v = {"W": W, "b": b, "x": x}[moving]
    ref = next(op for op in OPS if op.name == "dense").ref
    jacs = jax.jit(lambda v: (jax.jacfwd(lambda u: layer(forward.dense, u))(v),
                              jax.jacrev(lambda u: layer(ref, u))(v)))
    assert _proof.rel_err(*jacs(v)) <= TIGHT


# ── fbp.check_vjp checks the twins too: their VJP is the transpose of the hand-written JVP ──

FORWARD_CASES = {c.name: c for c in op_cases() if c.name.startswith("forward.")}


def test_python_m_fbp_check_covers_every_twin():
    public = {forward.sigmoid, forward.tanh, forward.relu, forward.leaky_relu, forward.gelu,
              forward.softmax, forward.dense, forward.bce_with_logits, forward.bce,
              forward.softmax_cross_entropy, forward.mse}
    assert public <= {c.fn for c in FORWARD_CASES.values()}
    assert {"forward.softmax_cross_entropy(labels, where)",
            "forward.softmax_cross_entropy(soft, where)"} <= set(FORWARD_CASES)


def test_check_vjp_passes_on_a_twin():
    """Every twin runs through check_vjp in ``python -m fbp.check``; one here, all checks."""
    case = FORWARD_CASES["forward.dense"]
    args = case.make_args(np.random.default_rng(0), jnp.dtype("float64"))
    report = check_vjp(case.fn, *args, reference=case.reference, **case.kwargs)
    assert report.ok, str(report)


def test_check_vjp_catches_a_wrong_jvp_rule():
    """A twin whose rule uses σ(z) for σ'(z): its transposed VJP is wrong, and the checker
    names the failing checks."""
    wrong = jax.custom_jvp(fbp.activations._sigmoid.__wrapped__)
    wrong.defjvp(lambda primals, tangents: (wrong(primals[0]), wrong(primals[0]) * tangents[0]))
    z = jax.random.normal(jax.random.PRNGKey(14), (3, 4), jnp.float64)
    report = check_vjp(wrong, z, reference=jax.nn.sigmoid,
                       checks=("autodiff", "jacobian", "finite-diff"))
    assert not report.ok
    assert {row.check for row in report.failures} == {"autodiff", "jacobian", "finite-diff"}


def test_float16_label_tangents_of_a_large_batch_are_not_lost():
    """The labels' term of the loss JVPs, Σ z ẏ / N and Σ log ŷ ṫ / N, is summed and divided
    in float32: in float16, N = 70,000 is inf (Σ / N was exactly 0) and Σ over 70,000 rows
    overflows.  Exact values: −mean(z) = −0.5, and −(log ŷ₀ − log ŷ₁) = −1 for logits (1, 0)."""
    n = 70_000
    z, y = jnp.full((n, 1), 0.5, jnp.float16), jnp.full((n, 1), 0.5, jnp.float16)
    _, dot = jax.jvp(forward.bce_with_logits, (z, y), (jnp.zeros_like(z), jnp.ones_like(y)))
    assert dot.dtype == jnp.float16 and float(dot) == -0.5
    logits = jnp.zeros((n, 2), jnp.float16).at[:, 0].set(1.0)
    t = jnp.full((n, 2), 0.5, jnp.float16)
    t_dot = jnp.stack([jnp.ones(n), -jnp.ones(n)], axis=1).astype(jnp.float16)
    _, dot = jax.jvp(forward.softmax_cross_entropy, (logits, t), (jnp.zeros_like(logits), t_dot))
    assert dot.dtype == jnp.float16 and abs(float(dot) + 1.0) <= 1e-3


# ── the masked loss: softmax_cross_entropy(..., where=) has its twin too ──

def _masked_reference(z, t, w, integer):
    """optax's per-position losses, averaged by plain jnp over the selected positions."""
    per = (optax.losses.softmax_cross_entropy_with_integer_labels(z, t) if integer
           else optax.losses.softmax_cross_entropy(z, t))
    return jnp.sum(jnp.where(w, per, 0.0)) / jnp.sum(w)


@pytest.mark.parametrize("integer", [True, False], ids=["labels", "soft"])
def test_masked_twin_jvp_equals_the_masked_reference_and_its_transpose_the_rule(integer):
    """Padding positions hold label −1 (never read); the JVP equals jax.jvp of optax's masked
    mean, jacfwd equals jacrev of it, and reverse mode through the transposed JVP equals the
    hand-written VJP of fbp.softmax_cross_entropy(where=)."""
    rng = np.random.default_rng(20)
    z = jnp.asarray(rng.standard_normal((4, 3, 5)))
    w = jnp.asarray(rng.uniform(size=(4, 3)) < 0.6).at[0, 0].set(True)
    t = (jnp.where(w, jnp.asarray(rng.integers(0, 5, (4, 3))), -1) if integer
         else jnp.asarray(rng.dirichlet(np.ones(5), (4, 3))))
    diff = (z,) if integer else (z, t)
    twin = lambda *d: forward.softmax_cross_entropy(d[0], d[1] if len(d) > 1 else t, where=w)  # noqa: E731
    rule = lambda *d: fbp.softmax_cross_entropy(d[0], d[1] if len(d) > 1 else t, where=w)  # noqa: E731
    ref = lambda *d: _masked_reference(d[0], d[1] if len(d) > 1 else t, w, integer)  # noqa: E731
    dots = tuple(jnp.asarray(rng.standard_normal(x.shape)) for x in diff)
    argnums = tuple(range(len(diff)))

    @jax.jit
    def run(d, dots):
        return (jax.jvp(twin, d, dots), jax.jvp(ref, d, dots), jax.jacfwd(twin, argnums)(*d),
                jax.jacrev(ref, argnums)(*d), jax.grad(twin, argnums)(*d),
                jax.grad(rule, argnums)(*d), rule(*d))

    (out, out_dot), (ref_out, ref_dot), jac, ref_jac, g_twin, g_rule, out_rule = run(diff, dots)
    np.testing.assert_array_equal(out, out_rule)               # the same forward function
    assert _proof.rel_err(out, ref_out) <= TIGHT
    assert _proof.rel_err(out_dot, ref_dot) <= TIGHT
    assert _proof.rel_err(jac, ref_jac) <= TIGHT
    assert _proof.rel_err(g_twin, g_rule) <= TIGHT


def test_masked_twin_with_nothing_selected_is_zero_with_a_zero_tangent():
    """An all-False mask: L = 0 and L̇ = 0 (M = max(Σ where, 1)), where the reference's mean
    is 0/0 = NaN."""
    z, w = jnp.ones((2, 3)), jnp.zeros((2,), bool)
    labels, soft = jnp.array([0, -1]), jnp.full((2, 3), 1 / 3)
    out, dot = jax.jvp(lambda z: forward.softmax_cross_entropy(z, labels, where=w), (z,),
                       (jnp.ones_like(z),))
    assert float(out) == 0.0 and float(dot) == 0.0
    out, dot = jax.jvp(lambda z, t: forward.softmax_cross_entropy(z, t, where=w), (z, soft),
                       (jnp.ones_like(z), jnp.ones_like(soft)))
    assert float(out) == 0.0 and float(dot) == 0.0
