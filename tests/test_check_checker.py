"""fbp.check_vjp: the report and its errors, the hints, the CLI (the op table: test_check_ops)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fbp
import fbp.check.op_table as op_table
import fbp.testing
from fbp.check import ALL_CHECKS, tasks
from fbp.check.diagnose import diagnose, shape_hint
from fbp.check.reference import primal_full

# ── a small rule to exercise the report: y = x ⊙ w, w broadcast over the batch ──

def scale_fn(x, w):
    return x * jnp.broadcast_to(w, x.shape)


def scale_fwd(x, w):
    return scale_fn(x, w), (x, w)


def scale_bwd_right(res, g):
    x, w = res
    return g * jnp.broadcast_to(w, x.shape), jnp.sum((g * x).reshape(-1, x.shape[-1]), axis=0)


def scale_bwd_sign(res, g):
    x_bar, w_bar = scale_bwd_right(res, g)
    return x_bar, -w_bar


def make(bwd):
    f = jax.custom_vjp(scale_fn)
    f.defvjp(scale_fwd, bwd)
    return f


X = jnp.asarray(np.random.default_rng(0).standard_normal((3, 4)))
W = jnp.asarray(np.random.default_rng(1).standard_normal(4))


def test_report_table_rows_and_ok():
    report = fbp.check_vjp(make(scale_bwd_right), X, W)
    assert report.ok and not report.failures
    assert {(r.check, r.arg) for r in report.rows} >= {
        (c, a) for c in ALL_CHECKS[1:] for a in ("x", "w")}
    text = str(report)
    assert text.startswith("check_vjp(scale_fn) float64: ok")
    assert "finite-diff" in text and "rev-over-rev" in text and "FAIL" not in text


def test_failing_report_names_argument_element_and_hint():
    report = fbp.check_vjp(make(scale_bwd_sign), X, W)
    assert not report.ok
    assert {r.arg for r in report.failures} == {"w"}
    row = next(r for r in report.failures if r.check == "autodiff")
    assert row.got == pytest.approx(-row.expected)
    assert row.rel == pytest.approx(1.0)                # ‖2e‖ / 2‖e‖
    assert "sign flipped" in str(report)
    assert "FAILED" in str(report).splitlines()[0]


def test_raise_on_fail_and_assert_vjp_correct():
    with pytest.raises(fbp.VJPCheckError, match="sign flipped") as info:
        fbp.check_vjp(make(scale_bwd_sign), X, W, raise_on_fail=True)
    assert isinstance(info.value, AssertionError)
    assert "autodiff" in str(info.value) and " w " in str(info.value)
    with pytest.raises(AssertionError, match="w"):
        fbp.testing.assert_vjp_correct(make(scale_bwd_sign), X, W)
    assert fbp.testing.assert_vjp_correct(make(scale_bwd_right), X, W).ok


def test_python_numbers_are_static_and_a_reference_can_be_given():
    z = jnp.linspace(-2.0, 2.0, 8).reshape(2, 4) + 0.1
    report = fbp.check_vjp(fbp.leaky_relu, z, 0.3, reference=lambda z, a: jax.nn.leaky_relu(z, a))
    assert report.ok, str(report)
    assert {r.arg for r in report.rows} == {"z", "_leaky_relu: (all)"}
    assert any("the one given" in n for n in report.notes)


def test_default_reference_is_autodiff_of_the_primal_code_of_a_wrapper():
    report = fbp.check_vjp(fbp.tanh, X)
    assert report.ok, str(report)
    assert any("undecorated primal" in n for n in report.notes)


@pytest.mark.parametrize("jax_fn, args", [
    (jax.nn.softplus, (jnp.array([0.0, 1.0, -2.0]),)),      # its primal logaddexp: 0 at 0
    (jax.scipy.special.xlogy, (jnp.array([0.0, 0.5]), jnp.array([0.3, 0.7]))),
])
def test_the_default_reference_keeps_jaxs_own_rules_and_replaces_the_others(jax_fn, args):
    """A correct rule over a JAX function whose primal code alone has another derivative at
    0 (softplus'(0) = ½; ∂xlogy/∂x (0, y) = log y) passes; a user's custom_jvp is still
    replaced by its primal, so the reference never trusts the rule under test."""
    rule = jax.custom_vjp(jax_fn)
    rule.defvjp(lambda *a: (jax_fn(*a), a),
                lambda a, g: jax.vjp(jax_fn, *a)[1](g))
    report = fbp.check_vjp(rule, *args, checks=("autodiff", "jacobian", "finite-diff"))
    assert report.ok, str(report)
    u = jnp.ones_like(jax_fn(*args))
    for got, want in zip(jax.vjp(primal_full(rule), *args)[1](u),
                         jax.vjp(jax_fn, *args)[1](u), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-14)

    wrong = jax.custom_jvp(lambda x: x * x)
    wrong.defjvp(lambda p, t: (p[0] * p[0], 3 * p[0] * t[0]))      # 3x, not 2x
    np.testing.assert_allclose(jax.grad(lambda x: primal_full(wrong)(x).sum())(X), 2 * X)


def test_the_default_reference_differentiates_a_linear_solve():
    """custom_linear_solve's params hold a namedtuple of jaxprs: kept a namedtuple."""
    @jax.custom_vjp
    def solve(A, b):
        return jnp.linalg.solve(A, b)

    def solve_bwd(res, g):
        A, x = res
        b_bar = jnp.linalg.solve(A.T, g)
        return -jnp.outer(b_bar, x), b_bar            # Ā = −b̄ xᵀ

    solve.defvjp(lambda A, b: (solve(A, b), (A, solve(A, b))), solve_bwd)
    A, b = jnp.array([[2.0, 0.3], [0.1, 1.5]]), jnp.array([1.0, -0.5])
    report = fbp.check_vjp(solve, A, b, checks=("autodiff", "jacobian"))
    assert report.ok and not report.skipped, str(report)
    u = jnp.array([0.7, -1.3])
    for got, want in zip(jax.vjp(primal_full(solve), A, b)[1](u),
                         jax.vjp(jnp.linalg.solve, A, b)[1](u), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-14)


def test_a_wrong_reference_is_caught_by_the_reference_checks_only():
    report = fbp.check_vjp(fbp.sigmoid, X, reference=lambda z: jnp.tanh(z))
    assert {r.check for r in report.failures} == {"autodiff", "jacobian"}


def test_large_outputs_use_random_projections():
    report = fbp.check_vjp(make(scale_bwd_sign), X, W, max_jacobian_rows=4,
                           checks=("jacobian",))
    assert {r.arg for r in report.rows} == {"x ⟨u,Jv⟩", "w ⟨u,Jv⟩"}
    assert {r.arg for r in report.failures} == {"w ⟨u,Jv⟩"}


def test_a_rule_that_only_takes_batches_fails_the_per_example_check_with_the_reason():
    """The per-example check runs only where batch_argnums says axis 0 is a batch; the vmap
    check over a new axis of draws holds for this rule (vmap adds the axis it needs)."""
    def bwd_2d_only(res, g):
        x, w = res
        return g * jnp.broadcast_to(w, x.shape), jnp.einsum("mn,mn->n", g, x)

    report = fbp.check_vjp(make(bwd_2d_only), X, W, batch_argnums=(0,))
    (row,) = report.failures
    assert row.check == "vmap" and "single example" in row.hints[0]
    assert fbp.check_vjp(make(bwd_2d_only), X, W).ok


def test_an_f_that_needs_its_batch_axis_fails_the_per_example_check_alone():
    """f itself cannot take one example (its labels are indexed by the batch): one vmap row
    says so, and every other check keeps its rows."""
    @jax.custom_vjp
    def ce(logits, y):
        return (jax.nn.logsumexp(logits, -1)
                - jnp.take_along_axis(logits, y[:, None], -1)[:, 0])

    def ce_bwd(res, g):
        logits, y = res
        one_hot = jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype)
        return g[:, None] * (jax.nn.softmax(logits) - one_hot), None

    ce.defvjp(lambda logits, y: (ce(logits, y), (logits, y)), ce_bwd)
    logits, y = X[:, :2], jnp.array([0, 1, 1])
    report = fbp.check_vjp(ce, logits, y, batch_argnums=(0, 1))
    (row,) = report.failures
    assert (row.check, row.arg) == ("vmap", "(all) [per example]")
    assert "single example" in row.hints[0] and "IndexError" in row.hints[0]
    assert "leave out batch_argnums" in row.hints[0]
    assert {r.check for r in report.rows if r.status == "ok"} == set(ALL_CHECKS)


def test_bad_calls_say_what_is_wrong():
    with pytest.raises(ValueError, match="checks"):
        fbp.check_vjp(fbp.tanh, X, checks=("autodif",))
    with pytest.raises(ValueError, match="array argument"):
        fbp.check_vjp(lambda n, s: jnp.ones(n), 3, "a string")


@pytest.mark.parametrize("kwargs, error, match", [
    ({"f": 3.0}, TypeError, r"f must be a function .* got float 3.0\.  Pass the function"),
    ({"reference": 3}, TypeError, r"reference must be a function .* got int 3\."),
    ({"checks": ()}, ValueError, "checks is empty, so nothing would be checked"),
    ({"checks": 3}, TypeError, r"checks must be a tuple of names .* got int 3\."),
    ({"w": np.array([0.5, -1.0, 2.0, 0.1], dtype=object)}, TypeError,
     r"w is a NumPy array of dtype object; .* np.asarray\(w, dtype=np.float64\)"),
])
def test_bad_arguments_of_check_vjp_itself_raise_before_anything_runs(kwargs, error, match):
    call = {"f": make(scale_bwd_right), "x": X, "w": W, **kwargs}
    f, x, w = call.pop("f"), call.pop("x"), call.pop("w")
    with pytest.raises(error, match=match):
        fbp.check_vjp(f, x, w, **call)


@pytest.mark.parametrize("reference, returns", [
    (lambda x, w: (scale_fn(x, w),), r"\(float64\[3, 4\],\)"),
    (lambda x, w: scale_fn(x, w).sum(), r"float64\[\]"),
    (lambda x, w: scale_fn(x, w).astype(jnp.float32), r"float32\[3, 4\]"),
])
def test_a_reference_that_returns_other_outputs_than_f_is_a_clear_error(reference, returns):
    with pytest.raises(ValueError, match=r"reference must return what f returns: f returns "
                                         r"float64\[3, 4\], reference returns " + returns):
        fbp.check_vjp(make(scale_bwd_right), X, W, reference=reference)


def test_one_check_can_be_named_alone():
    report = fbp.check_vjp(make(scale_bwd_sign), X, W, checks="autodiff")
    assert {(r.check, r.arg) for r in report.rows} == {("autodiff", "x"), ("autodiff", "w")}
    assert {r.arg for r in report.failures} == {"w"}


# ── the hints, on arrays alone ──

A = np.random.default_rng(2).standard_normal((4, 3))
SQ = np.random.default_rng(3).standard_normal((3, 3))


def _one_row_off(a):
    b = a.copy()
    b[2] += 1.0
    return b


@pytest.mark.parametrize("got, exp, hint", [
    (-A, A, "sign flipped"),
    (4 * A, A, "off by a constant factor 4 (missing 1/4?"),
    (A / 3, A, "an extra 1/3"),
    (0 * A, A, "zero where autodiff is not"),
    (SQ.T, SQ, "looks transposed"),
    (A.T.reshape(4, 3), A, "transposed and then reshaped"),
    (_one_row_off(A), A, "differs only on one batch row: row 2"),
    (np.where(A > 0, A, 0.0), A, "zero at"),
    (np.where(A > 0, A, 0.1 * A), A, "there off by a constant factor 0.1"),
    (np.broadcast_to(A.sum(0), A.shape), A, "the same along axis 0"),
    (A * np.array([1.0, 2.0, -0.5]), A, "varies along axis 1 only"),
])
def test_diagnose_recognises(got, exp, hint):
    hints = diagnose(np.asarray(got), exp)
    assert any(hint in h for h in hints), hints


def test_diagnose_names_the_argument_a_cotangent_belongs_to():
    other = np.random.default_rng(4).standard_normal((4, 3))
    hints = diagnose(other, A, others={"y": other})
    assert any("equals the expected cotangent of y" in h for h in hints)


def test_diagnose_stays_quiet_without_a_pattern_and_when_right():
    noise = np.random.default_rng(5).standard_normal((4, 3))
    assert diagnose(A + noise, A) == []
    assert diagnose(A * (1 + 1e-9), A) == []
    assert diagnose(np.full((2,), np.nan), A[0, :2]) == [
        "non-finite values (NaN/inf) in the rule's cotangent"]


@pytest.mark.parametrize("got, want, hint", [
    ((3, 5), (5, 3), "looks transposed"),
    ((4, 5), (5,), "not summed over the batch"),
    ((5,), (5, 3), "lower rank"),
    ((15,), (5, 3), "same number of elements"),
    ((1, 5), (4, 5), "broadcasts against the input"),
])
def test_shape_hints(got, want, hint):
    assert hint in shape_hint(got, want)


# ── python -m fbp.check ──

def _case(name, bwd):
    return op_table.OpCase(name, make(bwd), lambda r, d: (X.astype(d), W.astype(d)),
                           scale_fn)


def test_cli_prints_the_table_and_exits_1_on_a_failure(monkeypatch, capsys):
    monkeypatch.setattr(op_table, "op_cases", lambda: [_case("scale", scale_bwd_right)])
    assert op_table.main([]) == 0
    out = capsys.readouterr().out
    assert "scale" in out and "1 of 1 ops pass" in out
    monkeypatch.setattr(op_table, "op_cases", lambda: [_case("scale", scale_bwd_right),
                                                       _case("scale-bug", scale_bwd_sign)])
    assert op_table.main([]) == 1
    out = capsys.readouterr().out
    assert "1 of 2 ops pass" in out and "sign flipped" in out


# ── autodiff and the Jacobian's rows share one vmap of each VJP ──

def _batch_task(check, cts, g, ref_g, seen, post=None):
    def fn(d, cts):
        return tasks.cotangent_batch(g, ref_g, {}, d, cts)

    def keep(res):
        seen[check] = res
        return [tasks.Row(check, "x", "ok")]
    return tasks.Task(check, fn, (POINT, cts), post or keep, vjps=(g, ref_g, None))


X3 = np.linspace(-1.0, 1.0, 3)
POINT = (X3,)          # the differentiated arguments: one object, shared by the checks


def test_tasks_on_one_rule_and_point_run_as_one_and_get_their_own_cotangents_back():
    """Two cotangent stacks (2 and 3 cotangents) through one merged task: each check gets the
    VJPs of its own cotangents, equal to the rule's VJP of each one (g ⊙ cos x)."""
    g = ref_g = make_sin()
    a, b = np.arange(6.0).reshape(2, 3), np.eye(3)
    seen = {}
    parts = [_batch_task("autodiff", a, g, ref_g, seen),
             _batch_task("jacobian", b, g, ref_g, seen)]
    merged = tasks.merge_vjps(parts)
    assert len(merged) == 1 and merged[0].parts == parts
    rows = tasks.run(merged)
    assert [(r.check, r.status) for r in rows] == [("autodiff", "ok"), ("jacobian", "ok")]
    for name, cts in (("autodiff", a), ("jacobian", b)):
        ref, rule = seen[name]
        np.testing.assert_allclose(rule[0], cts * np.cos(X3), rtol=1e-15)
        np.testing.assert_allclose(ref[0], cts * np.cos(X3), rtol=1e-15)


def test_a_merged_task_that_cannot_run_gives_each_check_its_own_row():
    """A rule that raises under the merged task: both checks say so in rows of their own; a
    check whose post fails says so without taking the other's rows away."""
    def bad(x):
        raise TypeError("the rule refuses")
    seen = {}
    parts = [_batch_task("autodiff", np.ones((2, 3)), bad, bad, seen),
             _batch_task("jacobian", np.eye(3), bad, bad, seen)]
    rows = tasks.run(tasks.merge_vjps(parts))
    assert [(r.check, r.status) for r in rows] == [("autodiff", "FAIL"), ("jacobian", "FAIL")]
    assert all("the rule refuses" in r.hints[0] for r in rows)

    def broken(res):
        raise ValueError("post failed")
    g = make_sin()
    parts = [_batch_task("autodiff", np.ones((2, 3)), g, g, seen, post=broken),
             _batch_task("jacobian", np.eye(3), g, g, seen)]
    rows = tasks.run(tasks.merge_vjps(parts))
    assert [(r.check, r.status) for r in rows] == [("autodiff", "FAIL"), ("jacobian", "ok")]


def test_tasks_at_different_points_are_not_merged():
    g = make_sin()
    seen = {}
    one = _batch_task("autodiff", np.ones((2, 3)), g, g, seen)
    other = _batch_task("jacobian", np.eye(3), g, g, seen)
    other.inputs = ((X3 + 1,), other.inputs[1])
    assert tasks.merge_vjps([one, other]) == [one, other]


def make_sin():
    @jax.custom_vjp
    def sin(x):
        return jnp.sin(x)
    sin.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.cos(x),))
    return lambda x: sin(x)
