"""fbp.autodiff, the engine over jaxprs, held against JAX's own autodiff.

* every fbp network (MLP with each activation and loss, norms, residual; CNN and GPT when
  ``fbp.nets.cnn`` / ``fbp.nets.transformer`` exist: the case list is built at import time
  from what exists): gradients equal ``jax.grad`` and the JVP equals ⟨jax.grad, v⟩ (``jax.jvp``
  refuses custom_vjp functions, so forward mode is held to the gradient JAX computes);
* generated compositions of the table's primitives (hypothesis): ``jax.grad`` and ``jax.jvp``;
* each rule of the table through ``fbp.check_vjp`` (autodiff, Jacobian, finite differences);
* the transposition identity: the engine's VJP of a linear map is the transpose of its JVP;
* an unsupported primitive is an error that names it and the equation.
"""

from __future__ import annotations

import importlib.util
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax import lax

import fbp
from fbp import autodiff

F64 = jnp.float64
KEY = jax.random.PRNGKey(0)


def max_diff(a, b) -> float:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    return max((float(np.max(np.abs(np.asarray(u) - np.asarray(v)), initial=0.0))
                for u, v in zip(la, lb, strict=True)), default=0.0)


def scale(t) -> float:
    return max((float(np.max(np.abs(np.asarray(u)), initial=0.0)) for u in jax.tree.leaves(t)),
               default=0.0)


def tree_vdot(a, b):
    return sum(jnp.vdot(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                               strict=True))


def normal(key, shape):
    return jax.random.normal(key, shape, F64)


# ── networks ──

def _mlp_cases():
    x = normal(KEY, (6, 3))
    y = (jax.random.uniform(jax.random.PRNGKey(1), (6, 2)) > 0.5).astype(F64)
    labels = jnp.array([0, 1, 1, 0, 1, 0])
    cases = []
    # every activation once and every loss at least once (a diagonal through the grid)
    for act, loss in [("sigmoid", "bce_with_logits"), ("tanh", "mse"),
                      ("relu", "softmax_cross_entropy"), ("leaky_relu", "bce_with_logits"),
                      ("gelu", "softmax_cross_entropy")]:
        target = labels if loss == "softmax_cross_entropy" else y
        params = fbp.init_mlp(KEY, [3, 5, 5, 2], "xavier")
        cases.append((f"mlp-{act}-{loss}", lambda p, x, a=act, l=loss, t=target:
                      fbp.mlp_loss(p, x, t, a, l), params, x))
    for res in (False, True):
        params = fbp.init_mlp(KEY, [3, 5, 5, 2], norm="layer", residual=res)
        cases.append((f"layer-norm-residual={res}", lambda p, x, r=res:
                      fbp.mlp_loss(p, x, y, "tanh", "mse", residual=r), params, x))
        params, state = fbp.init_mlp(KEY, [3, 5, 5, 2], norm="batch", residual=res)
        cases.append((f"batch-norm-residual={res}", lambda p, x, r=res, s=state:
                      fbp.mlp_loss(p, x, labels, "relu", "softmax_cross_entropy",
                                   residual=r, state=s)[0], params, x))
    return cases


def _cnn_cases():
    """fbp.nets.cnn's small convnet on 8×8 one-channel images with 10 classes."""
    if importlib.util.find_spec("fbp.nets.cnn") is None:
        return []
    cnn = importlib.import_module("fbp.nets.cnn")
    params = cnn.init_cnn(KEY)
    x = normal(KEY, (2, 8, 8, 1))
    labels = jnp.array([3, 7])
    return [("cnn", lambda p, x: cnn.cnn_loss(p, x, labels), params, x)]


def _gpt_cases():
    """fbp.nets.transformer's GPT (init_gpt / gpt_loss as issue 15 names them)."""
    if importlib.util.find_spec("fbp.nets.transformer") is None:
        return []
    tr = importlib.import_module("fbp.nets.transformer")
    params = tr.init_gpt(KEY, 11, 8, 2, 2, 6)
    ids = jax.random.randint(KEY, (2, 6), 0, 11)
    targets = jnp.roll(ids, -1, axis=1)
    return [("gpt", lambda p, ids: tr.gpt_loss(p, ids, targets, n_heads=2), params, ids)]


NETWORKS = _mlp_cases() + _cnn_cases() + _gpt_cases()


@pytest.mark.parametrize("name, loss, params, x", NETWORKS, ids=[c[0] for c in NETWORKS])
def test_networks_equal_jax_grad_and_jvp(name, loss, params, x):
    argnums = (0, 1) if jnp.issubdtype(x.dtype, jnp.floating) else (0,)
    primals = (params, x)
    tangents = jax.tree.map(lambda a: normal(jax.random.PRNGKey(7), jnp.shape(a))
                            if jnp.issubdtype(jnp.result_type(a), jnp.floating)
                            else np.zeros(jnp.shape(a), jax.dtypes.float0), primals)

    @jax.jit
    def both(params, x, tangents):
        value, grads = autodiff.value_and_grad(loss, argnums)(params, x)
        _, jvp_out = autodiff.jvp(loss, (params, x), tangents)
        return value, grads, jvp_out, jax.value_and_grad(loss, argnums)(params, x)

    value, grads, jvp_out, (value_ref, grads_ref) = both(params, x, tangents)
    assert max_diff(value, value_ref) <= 1e-12 * (1 + abs(float(value_ref)))
    assert max_diff(grads, grads_ref) <= 1e-12 * (1 + scale(grads_ref))
    jvp_ref = tree_vdot(grads_ref, tuple(tangents[i] for i in argnums))
    assert abs(float(jvp_out - jvp_ref)) <= 1e-12 * (1 + abs(float(jvp_ref)))


def test_engine_runs_the_ops_own_rules():
    """A custom_vjp with a deliberately different bwd: the engine returns the rule's answer,
    not the derivative of the primal code (so fbp's networks go through fbp's rules)."""
    @jax.custom_vjp
    def f(x):
        return jnp.sin(x)

    f.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (3.0 * g,))
    x = jnp.linspace(-1.0, 1.0, 5)
    np.testing.assert_array_equal(autodiff.grad(lambda x: f(x).sum())(x), jnp.full(5, 3.0))
    # forward mode transposes that same rule
    np.testing.assert_allclose(autodiff.jvp(f, (x,), (jnp.ones(5),))[1], jnp.full(5, 3.0))


# ── generated functions ──

UNARY = {
    "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "exp∘tanh": lambda u: jnp.exp(jnp.tanh(u)),
    "log1p(u²)": lambda u: jnp.log1p(u * u), "log(1+u²)": lambda u: jnp.log(1 + u * u),
    "sqrt(1+u²)": lambda u: jnp.sqrt(1 + u ** 2), "rsqrt(1+u²)": lambda u: lax.rsqrt(1 + u ** 2),
    "erf": lax.erf, "sin": jnp.sin, "cos": jnp.cos, "abs": jnp.abs, "u³": lambda u: u ** 3,
    "square": jnp.square, "neg": jnp.negative, "expm1∘tanh": lambda u: jnp.expm1(jnp.tanh(u)),
    "leaky": lambda u: jnp.where(u > 0, u, 0.1 * u), "clip": lambda u: jnp.clip(u, -0.5, 0.7),
    "cumsum0": lambda u: jnp.cumsum(u, 0), "cumsum1r": lambda u: lax.cumsum(u, 1, reverse=True),
    "flip": lambda u: jnp.flip(u, 1), "centre": lambda u: u - u.max(1, keepdims=True),
    "scale-by-sum": lambda u: u * u.sum(0, keepdims=True), "softmax": jax.nn.softmax,
    "roll": lambda u: jnp.concatenate([u[:, 1:], u[:, :1]], 1),
    "reshape-T": lambda u: u.reshape(-1)[::-1].reshape(u.shape),
    "pad-slice": lambda u: jnp.pad(u, ((1, 0), (0, 2)))[1:, :-2],
    "take": lambda u: u[jnp.arange(u.shape[0])[::-1]], "relu": jax.nn.relu,
    "f32-trip": lambda u: u.astype(jnp.float32).astype(F64) * 0 + u,
    "logsumexp": lambda u: u - jax.nn.logsumexp(u, axis=1, keepdims=True),
}
BINARY = {
    "add": jnp.add, "sub": jnp.subtract, "mul": jnp.multiply,
    "div": lambda a, b: a / (1 + b * b), "max": jnp.maximum, "min": jnp.minimum,
    "pow": lambda a, b: (1 + a * a) ** jnp.tanh(b), "atan2": lambda a, b: jnp.arctan2(a, 1 + b * b),
    "matmul": lambda a, b: a @ (b.T @ b) if a.shape == b.shape else a * b,
}


@st.composite
def programs(draw):
    m, n = draw(st.integers(2, 4)), draw(st.integers(2, 4))
    second = draw(st.sampled_from([(m, n), (1, n), (m, 1)]))      # broadcasting shapes
    steps = []
    for _ in range(draw(st.integers(2, 6))):
        if draw(st.booleans()):
            steps.append(("u", draw(st.sampled_from(sorted(UNARY)))))
        else:
            steps.append(("b", draw(st.sampled_from(sorted(BINARY)))))
        steps[-1] += (draw(st.integers(0, 100)), draw(st.integers(0, 100)))
    return (m, n), second, steps, draw(st.integers(0, 2 ** 16))


def build(steps):
    """A function of (x, y) that applies the steps to earlier values (so values fan out)."""
    def f(x, y):
        values = [x, y]
        for kind, name, i, j in steps:
            a, b = values[i % len(values)], values[j % len(values)]
            values.append(UNARY[name](a) if kind == "u" else BINARY[name](a, b))
        return sum(jnp.sum(jnp.sin(v)) for v in values[2:]) + values[-1]
    return f


@given(programs())
def test_generated_functions_equal_jax(program):
    shape, second, steps, seed = program
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
    x, y = normal(k1, shape), normal(k2, second)
    tx, ty = normal(k3, shape), normal(k4, second)
    f = build(steps)
    scalar = lambda x, y: jnp.sum(f(x, y))

    @jax.jit
    def both(x, y, tx, ty):
        return (autodiff.grad(scalar, (0, 1))(x, y), jax.grad(scalar, (0, 1))(x, y),
                autodiff.jvp(f, (x, y), (tx, ty)), jax.jvp(f, (x, y), (tx, ty)))

    g, g_ref, j, j_ref = both(x, y, tx, ty)
    assert max_diff(g, g_ref) <= 1e-12 * (1 + scale(g_ref)), steps
    assert max_diff(j, j_ref) <= 1e-12 * (1 + scale(j_ref)), steps


# ── each rule of the table through fbp.check_vjp ──

def with_engine_rule(f):
    """``f`` as a custom_vjp whose bwd is the engine's VJP of ``f`` — so that check_vjp
    holds the engine's rules against JAX's autodiff of ``f`` (the reference)."""
    @jax.custom_vjp
    def op(inputs):
        return f(inputs)

    def op_fwd(inputs):
        return f(inputs), inputs

    def op_bwd(inputs, g):
        return autodiff.vjp(f, inputs)[1](g)

    op.defvjp(op_fwd, op_bwd)
    return op


_A, _B = normal(KEY, (3, 4)), normal(jax.random.PRNGKey(1), (3, 4))
_P = jnp.abs(_A) + 0.5                       # positive: log, sqrt, rsqrt, pow's base
_IDX = jnp.array([[2], [0], [2]])            # row 2 read twice: the scatter-add must add

# one entry per table rule: primitive -> (function of the inputs dict entry, its input)
RULE_CASES = {
    "neg": (lambda a: -a, _A), "exp": (jnp.exp, _A), "exp2": (jnp.exp2, _A),
    "expm1": (jnp.expm1, _A), "log": (jnp.log, _P), "log1p": (jnp.log1p, _P),
    "tanh": (jnp.tanh, _A), "logistic": (jax.nn.sigmoid, _A), "sin": (jnp.sin, _A),
    "cos": (jnp.cos, _A), "sqrt": (jnp.sqrt, _P), "rsqrt": (lax.rsqrt, _P), "erf": (lax.erf, _A),
    "abs": (jnp.abs, _A), "square": (lax.square, _A), "integer_pow": (lambda a: a ** 3, _A),
    "copy": (lambda a: lax.copy_p.bind(a) * a, _A), "reduce_precision":
        (lambda a: lax.reduce_precision(a, 11, 52), _A),
    "optimization_barrier": (lambda a: lax.optimization_barrier(a) * a, _A),
    "add": (lambda ab: ab[0] + ab[1], (_A, _B)), "sub": (lambda ab: ab[0] - ab[1], (_A, _B)),
    "mul": (lambda ab: ab[0] * ab[1], (_A, _B)), "div": (lambda ab: ab[0] / ab[1], (_A, _P)),
    "max": (lambda ab: lax.max(*ab), (_A, _B)), "min": (lambda ab: lax.min(*ab), (_A, _B)),
    "pow": (lambda ab: lax.pow(*ab), (_P, _B)), "atan2": (lambda ab: lax.atan2(*ab), (_A, _P)),
    "select_n": (lambda ab: lax.select_n(ab[0] > 0, *ab), (_A, _B)),
    "clamp": (lambda a: lax.clamp(-0.5, a, 0.7), _A),
    "dot_general": (lambda ab: jnp.einsum("ij,kj->ik", *ab), (_A, _B)),
    "reduce_sum": (lambda a: a.sum(1), _A), "reduce_max": (lambda a: a.max(0), _A),
    "reduce_min": (lambda a: a.min(1), _A), "cumsum": (lambda a: jnp.cumsum(a, 1), _A),
    "broadcast_in_dim": (lambda a: jnp.broadcast_to(a[:1, None, :], (3, 2, 4)), _A),
    "reshape": (lambda a: a.reshape(4, 3), _A), "squeeze": (lambda a: a[:1].squeeze(0), _A),
    "transpose": (lambda a: a.T, _A), "rev": (lambda a: jnp.flip(a, 0), _A),
    "concatenate": (lambda ab: jnp.concatenate(ab, 1), (_A, _B)),
    "split": (lambda a: jnp.split(a, [1], axis=1)[1], _A),
    "slice": (lambda a: a[1:, ::2], _A),
    "pad": (lambda av: lax.pad(av[0], av[1], ((1, -1, 1), (0, 2, 0))), (_A, jnp.array(0.3))),
    "dynamic_slice": (lambda a: lax.dynamic_slice(a, (1, 1), (2, 2)), _A),
    "dynamic_update_slice": (lambda ab: lax.dynamic_update_slice(ab[0], ab[1][:2, :2], (1, 0)),
                             (_A, _B)),
    "gather": (lambda a: jnp.take_along_axis(a, _IDX, 0), _A),
}
# add_any is what JAX's own transposition emits (never jax.numpy): the rule of add
ALIASES = {"add_any": "add"}


# float64 → float32 → float64 is a staircase at the scale of finite-difference steps: it is
# held to autodiff and the Jacobian only
CONVERT = (lambda a: a.astype(jnp.float32).astype(F64) * a, _A)


def test_every_rule_has_a_check_case():
    assert set(RULE_CASES) | set(ALIASES) | {"convert_element_type"} == set(autodiff.VJP_RULES)
    for alias, rule in ALIASES.items():
        assert autodiff.VJP_RULES[alias] is autodiff.VJP_RULES[rule]


def _rule_group(names):
    return ({n: RULE_CASES[n][0] for n in names}, {n: RULE_CASES[n][1] for n in names})


def _primitives(f, x) -> set:
    """Every primitive in f's jaxpr, calls included."""
    def walk(jaxpr):
        for e in jaxpr.eqns:
            yield e.primitive.name
            for sub in jax.tree.leaves(dict(e.params), is_leaf=lambda v: hasattr(v, "eqns")
                                       or hasattr(v, "jaxpr")):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from walk(inner)
    return set(walk(jax.make_jaxpr(f)(x).jaxpr))


_GROUPS = [sorted(RULE_CASES)[i::3] for i in range(3)]


@pytest.mark.parametrize("names", _GROUPS, ids=["group-a", "group-b", "group-c"])
def test_rules_pass_check_vjp(names):
    """One check_vjp per group of rules: its input is a dict with one entry per primitive and
    each output entry depends on its own input only, so each row of the report (``x['exp']``)
    is one rule held against JAX's autodiff (random cotangents) and its full Jacobian."""
    fns, inputs = _rule_group(names)
    for n in names:                                   # each case really uses its primitive
        assert n in _primitives(fns[n], inputs[n]), n
    f = lambda x: {n: fns[n](x[n]) for n in names}
    report = fbp.check_vjp(with_engine_rule(f), inputs, reference=f,
                           checks=("autodiff", "jacobian"))
    assert report.ok, str(report)


def test_convert_element_type_rule_passes_check_vjp():
    f, x = CONVERT
    assert "convert_element_type" in _primitives(f, x)
    report = fbp.check_vjp(with_engine_rule(f), x, reference=f, checks=("autodiff", "jacobian"))
    assert report.ok, str(report)


def test_check_vjp_catches_a_wrong_table_rule(monkeypatch):
    """The check above can fail: a rule with a slip (tanh' = 1 − tanh instead of 1 − tanh²)."""
    monkeypatch.setitem(autodiff.VJP_RULES, "tanh", lambda g, out, x: (g * (1 - out),))
    report = fbp.check_vjp(with_engine_rule(jnp.tanh), _A, reference=jnp.tanh,
                           checks=("autodiff",))
    assert not report.ok


# ── the transposition identity ──

def linear_map(x):
    """A linear map through many table rules: dot_general, transpose, broadcast, slice, pad,
    concatenate, cumsum, gather, reduce_sum, reshape."""
    W = jnp.arange(12.0, dtype=F64).reshape(4, 3) / 7 - 0.5
    h = x @ W                                                     # (3, 4) @ (4, 3)
    h = jnp.concatenate([h.T, jnp.cumsum(h, 0)[:, ::-1].T], 1)    # (3, 6)
    h = jnp.pad(h[:, 1:], ((0, 1), (2, 0))) + h.sum(0)[None, :1]
    return h[jnp.array([0, 3, 3, 1])].reshape(-1) * 2.0


def test_vjp_of_a_linear_map_is_the_transpose_of_its_jvp():
    x = _A
    u = normal(jax.random.PRNGKey(3), linear_map(x).shape)
    v = normal(jax.random.PRNGKey(4), x.shape)

    @jax.jit
    def sides(x, u, v):
        jvp_map = lambda t: autodiff.jvp(linear_map, (x,), (t,))[1]
        (transposed_jvp,) = jax.linear_transpose(jvp_map, x)(u)
        (vjp_u,) = autodiff.vjp(linear_map, x)[1](u)
        (vjp_ref,) = jax.vjp(linear_map, x)[1](u)
        return transposed_jvp, vjp_u, vjp_ref, jnp.vdot(u, jvp_map(v)), jnp.vdot(vjp_u, v)

    transposed_jvp, vjp_u, vjp_ref, lhs, rhs = sides(x, u, v)
    assert max_diff(vjp_u, transposed_jvp) <= 1e-12 * scale(vjp_u)
    # and against JAX: the same Jᵀu, and ⟨u, J v⟩ = ⟨Jᵀ u, v⟩
    assert max_diff(vjp_u, vjp_ref) <= 1e-12 * scale(vjp_ref)
    assert abs(float(lhs - rhs)) <= 1e-12 * abs(float(lhs))


# ── pytrees, jit, custom_jvp, integer inputs ──

class Pair(NamedTuple):
    W: jax.Array
    scale: jax.Array


def test_pytrees_in_and_out_and_integer_leaves():
    def f(p, x, idx):
        h = jnp.tanh(x @ p.W.T) * p.scale
        return {"picked": h[idx], "total": h.sum()}

    p, x, idx = Pair(_A, jnp.array(1.5)), _B, jnp.array([0, 2])
    g = {"picked": jnp.ones((2, 3)), "total": jnp.array(2.0)}

    @jax.jit
    def both(p, x, idx, g):
        out, vjp_fn = autodiff.vjp(f, p, x, idx)
        p_bar, x_bar, _ = vjp_fn(g)
        p_ref, x_ref, _ = jax.vjp(f, p, x, idx)[1](g)
        return out, f(p, x, idx), (p_bar, x_bar), (p_ref, x_ref)

    out, out_ref, bars, refs = both(p, x, idx, g)
    assert isinstance(bars[0], Pair)
    assert max_diff(bars, refs) <= 1e-12 * scale(refs)
    assert max_diff(out, out_ref) == 0.0
    out, vjp_fn = autodiff.vjp(f, p, x, idx)
    assert vjp_fn(g)[2].dtype == jax.dtypes.float0           # integer leaves: float0 zeros
    with pytest.raises(ValueError, match="cotangent must have the output's structure"):
        vjp_fn(jnp.ones(3))


def test_custom_jvp_functions_use_their_rule():
    """jax.nn.relu is a custom_jvp with relu'(0) = 0; max(x, 0) alone would share the tie."""
    x = jnp.array([-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(autodiff.grad(lambda x: jax.nn.relu(x).sum())(x),
                                  jax.grad(lambda x: jax.nn.relu(x).sum())(x))
    np.testing.assert_array_equal(autodiff.jvp(jax.nn.relu, (x,), (jnp.ones(3),))[1],
                                  jnp.array([0.0, 0.0, 1.0]))


def test_errors_name_the_primitive_and_the_equation():
    with pytest.raises(autodiff.UnsupportedPrimitiveError) as err:
        autodiff.grad(lambda x: jnp.sum(jnp.sinh(x) * 2))(_A)
    message = str(err.value)
    assert "'sinh'" in message and "equation 0" in message and "float64[3,4]" in message
    assert "test_autodiff.py" in message and "@rule('sinh')" in message
    # inside a call: the position is the callee's
    with pytest.raises(autodiff.UnsupportedPrimitiveError, match="'cosh'.*equation 1"):
        autodiff.jvp(jax.jit(lambda x: jnp.cosh(x * 2)), (_A,), (_A,))
    with pytest.raises(TypeError, match="float scalar"):
        autodiff.grad(lambda x: x * 2)(_A)
    with pytest.raises(TypeError, match="as tuples"):
        autodiff.jvp(jnp.sin, _A, _A)
    with pytest.raises(ValueError, match="structure of primals"):
        autodiff.jvp(jnp.sin, (_A,), (_A, _A))


def test_inactive_paths_need_no_rule():
    """sinh of a constant is evaluated, never differentiated: no rule is needed."""
    f = lambda x: jnp.sum(x * jnp.sinh(jnp.arange(4.0))[None, :])
    np.testing.assert_allclose(autodiff.grad(f)(_A), jnp.broadcast_to(jnp.sinh(
        jnp.arange(4.0)), (3, 4)), rtol=1e-15)


def test_fan_out_sums_over_paths():
    """x read three times: x̄ = 2x + cos x + 1 (§3.2), against the derivative by hand."""
    f = lambda x: jnp.sum(x * x + jnp.sin(x) + x)
    np.testing.assert_allclose(autodiff.grad(f)(_A), 2 * _A + jnp.cos(_A) + 1, rtol=1e-15)
    assert math.isclose(float(autodiff.value_and_grad(f)(_A)[0]), float(f(_A)), rel_tol=1e-15)


def test_calls_are_recursed_into():
    """jit inside checkpoint inside jit: the engine walks each callee's own jaxpr."""
    inner = jax.jit(lambda y: jnp.tanh(y) * y)
    f = jax.jit(jax.checkpoint(lambda x: jnp.sum(inner(x) ** 2 + inner(2 * x))))
    remat = jax.make_jaxpr(jax.checkpoint(jnp.sin))(1.0).jaxpr.eqns[0].primitive.name
    assert remat in autodiff.engine.CALLS and {"jit", remat} <= _primitives(f, _A)
    assert max_diff(autodiff.grad(f)(_A), jax.grad(f)(_A)) <= 1e-12 * scale(jax.grad(f)(_A))
    t_ref = jax.jvp(f, (_A,), (_B,))[1]
    assert abs(float(autodiff.jvp(f, (_A,), (_B,))[1] - t_ref)) <= 1e-12 * abs(float(t_ref))


def test_command_line_demo_on_a_small_net():
    """python -m fbp.autodiff: a plain-jnp net, every equation through the table."""
    from fbp.autodiff.__main__ import main

    result = main(["--layers", "2", "--width", "8"])
    assert result["parameters"] == 2 * (8 * 8 + 3 * 8) + 10 * 8
    assert result["equations"] > 40
    assert result["max_diff"] <= 1e-12 * (1 + result["scale"])


def _branchy(x, k):
    """lax.cond on a traced predicate, then lax.switch on an int; a constant and an integer
    operand ride along (the branches' inactive inputs)."""
    n = jnp.arange(5)
    y = jax.lax.cond(jnp.sum(x) > 0, lambda x, n: jnp.sin(x) * x + n,
                     lambda x, n: jnp.exp(x) - 2 * x, x, n)
    z = jax.lax.switch(k, [lambda a: a * 2, lambda a: jnp.tanh(a),
                           lambda a: jax.lax.cond(a[0] > 0, jnp.cos, jnp.square, a) ** 3], y)
    return jnp.sum(z * x)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_cond_and_switch_differentiate_the_branch_that_runs(k):
    """Both sides of the cond (x and −x) and every branch of the switch, eagerly and under
    jit (where the index is a tracer): reverse and forward mode equal jax's."""
    x = jnp.linspace(-1.0, 2.0, 5)
    grad_engine = jax.jit(autodiff.grad(_branchy))
    for xx in (x, -x):
        want = jax.grad(_branchy)(xx, k)
        for got in (autodiff.grad(_branchy)(xx, k), grad_engine(xx, k)):
            assert max_diff(got, want) <= 1e-12 * scale(want)
        v = jnp.cos(3 * xx)
        t_want = jax.jvp(lambda x: _branchy(x, k), (xx,), (v,))[1]
        t_got = autodiff.jvp(lambda x: _branchy(x, k), (xx,), (v,))[1]
        assert abs(float(t_got - t_want)) <= 1e-12 * abs(float(t_want))
    assert "cond" in _primitives(lambda x: _branchy(x, k), x)
