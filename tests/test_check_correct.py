"""Correct rules are never flagged: the corpus in tests/_correct_rules.py, and one test per
class of false alarm or crash that fbp.check_vjp once had (issue 12).

Each corpus rule is checked once (``report``, cached); the class tests read those reports
and add the planted bug that shows the class's fix did not blind the checker.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from functools import cache, partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _correct_rules import CORRECT, NAMES, X34, normal, saving_inputs, vjp_rule

import fbp
from fbp.check.report import _row


@cache
def report(name):
    _, f, args, kwargs = CORRECT[NAMES.index(name)]
    return fbp.check_vjp(f, *args, **kwargs)


def rows(rep, check, status=None):
    return [r for r in rep.rows if r.check == check and (status is None or r.status == status)]


def hints(rep) -> str:
    return "\n".join(h for r in rep.rows for h in r.hints)


def test_the_corpus_is_large_enough():
    assert len(CORRECT) >= 30


@pytest.mark.parametrize("name", NAMES)
def test_correct_rule_is_not_flagged(name):
    rep = report(name)
    assert rep.ok, str(rep)
    assert rows(rep, "finite-diff") or rows(rep, "jit"), str(rep)    # something ran


# ── 1. nondiff_argnums: callables, dtypes, ints held as they are ──

@pytest.mark.parametrize("name", ["apply (nondiff callable)", "softplus in a dtype (nondiff dtype)",
                                  "power (nondiff int)", "logsumexp (nondiff int axis)"])
def test_nondiff_argnums_are_held_and_every_check_runs(name):
    rep = report(name)
    assert {r.status for r in rep.rows} == {"ok"}, str(rep)
    assert {r.check for r in rep.rows} == set(fbp.check.ALL_CHECKS)
    assert {r.arg for r in rep.rows if r.check == "autodiff"} == {"x"}


@pytest.mark.parametrize("by_keyword", [False, True])
def test_a_float_array_at_a_nondiff_position_is_held_and_a_wrong_rule_still_caught(by_keyword):
    """JAX never traces it (jax.grad works); x̄ = ḡ · Σ table."""
    def scaled(x, table):
        return x * table.sum()

    right = saving_inputs(scaled, lambda t, res, g: (g * t.sum(),), nondiff_argnums=(1,))
    wrong = saving_inputs(scaled, lambda t, res, g: (g * t.sum() * 2,), nondiff_argnums=(1,))
    x, table = normal(2), jnp.array([1.0, 2.0, 3.0])

    def check(rule):
        if by_keyword:
            return fbp.check_vjp(rule, x, f_kwargs={"table": table})
        return fbp.check_vjp(rule, x, table)
    rep = check(right)
    assert {r.status for r in rep.rows} == {"ok"}, str(rep)
    assert {r.check for r in rep.rows} == set(fbp.check.ALL_CHECKS)
    assert {r.arg for r in rep.rows if r.check == "autodiff"} == {"x"}
    np.testing.assert_allclose(jax.grad(lambda x: right(x, table).sum())(x), 6.0 * jnp.ones(2))
    assert {(r.check, r.arg) for r in check(wrong).failures} >= {("autodiff", "x"),
                                                                 ("finite-diff", "x")}


def test_an_array_built_inside_f_at_a_nondiff_position_does_not_raise():
    rule = saving_inputs(lambda c, x: c * x, lambda c, res, g: (c * g,), nondiff_argnums=(0,))
    rep = fbp.check_vjp(lambda x: rule(jnp.arange(3.0) + 1, x), normal(3),
                        checks=("structure", "finite-diff", "jit", "rev-over-rev"))
    (jit_row,) = rows(rep, "jit")
    assert jit_row.status == "skip" and "jax.jit refuses f" in jit_row.hints[0]
    assert "still vouching for the rule: " in jit_row.hints[-1]
    assert rows(rep, "structure", "skip") and rows(rep, "rev-over-rev", "ok"), str(rep)
    assert rows(rep, "finite-diff", "ok"), str(rep)
    assert rep.ok


# ── 2. symbolic_zeros=True ──

def test_symbolic_zeros_rule_passes_and_a_wrong_one_is_named():
    rep = report("multiply (symbolic_zeros=True)")
    assert rows(rep, "structure", "ok") and rep.ok

    def bad_bwd(res, g):
        x, y = res
        return g * y, g * y                       # ȳ should be g·x
    bad = vjp_rule(lambda x, y: x * y, lambda x, y: (x.value * y.value, (x.value, y.value)),
                   bad_bwd, symbolic_zeros=True)
    bad_rep = fbp.check_vjp(bad, normal(3), normal(3), checks=("structure", "autodiff"))
    assert {r.arg for r in bad_rep.failures} == {"y"}, str(bad_rep)


# ── 3. a reference JAX cannot differentiate: skip with the reason, never FAIL ──

def test_a_while_loop_reference_skips_autodiff_and_says_who_vouches():
    rep = report("newton sqrt (while_loop reference)")
    (skip,) = rows(rep, "autodiff")
    assert skip.status == "skip" and "while_loop" in skip.hints[0]
    assert "still vouching for the rule: structure, jacobian, finite-diff" in skip.hints[-1]
    assert rows(rep, "jacobian", "ok") and "forward mode" in rows(rep, "jacobian")[0].hints[0]
    ift = report("implicit fixed-point solver (IFT rule)")
    assert rows(ift, "rev-over-rev", "skip") and ift.ok


def test_a_reference_without_a_jvp_rule_is_a_skip_not_a_fail():
    def opaque(x):
        return jax.pure_callback(np.tanh, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
    tanh = saving_inputs(jnp.tanh, lambda res, g: (g * (1 - res[1] ** 2),))
    rep = fbp.check_vjp(tanh, X34, reference=opaque)
    assert rep.ok, str(rep)
    assert {r.check for r in rep.skipped} == {"autodiff", "jacobian"}
    assert rows(rep, "finite-diff", "ok")


# ── 4. a reference that is NaN/inf where the rule is finite ──

@pytest.mark.parametrize("name", ["safe norm at 0", "sinc at 0"])
def test_non_finite_reference_is_information_with_the_finite_difference_verdict(name):
    rep = report(name)
    (row,) = rows(rep, "autodiff")
    assert row.status == "info", str(rep)
    assert "non-finite" in row.hints[0] and "finite differences agree with the rule" in row.hints[1]


def test_arrays_holding_inf_compare_as_they_are():
    e = np.array([np.inf, 1.0, -np.inf])
    assert _row("autodiff", "x", e, e.copy(), (1e-10, 1e-13), 1e-3, {}, "autodiff", True
                ).status == "ok"
    wrong = _row("autodiff", "x", np.array([np.inf, 1.0]), np.array([np.inf, 5.0]),
                 (1e-10, 1e-13), 1e-3, {}, "autodiff", True)
    assert wrong.status == "FAIL" and wrong.index == (1,)
    assert fbp.check.diagnose.diagnose(np.array([np.inf, 2.0]), np.array([np.inf, 1.0])) != []


# ── 5. vmap over a new axis of draws; the per-example check only with batch_argnums ──

def test_vmap_stacks_draws_on_a_new_axis_for_any_function():
    rep = report("matmul a @ b")
    assert [r.arg for r in rows(rep, "vmap", "ok")] == ["a", "b"]
    rep = fbp.check_vjp(CORRECT[NAMES.index("softplus")][1], X34, batch_argnums=(0,),
                        checks=("vmap",))
    assert [r.arg for r in rep.rows] == ["x", "x [per example]"] and rep.ok


# ── 6. kinks: the rule's convention beside autodiff's, as information ──

def test_relu_at_exact_zeros_reads_as_a_convention():
    rep = report("relu at exact zeros")
    (jac,) = rows(rep, "jacobian")
    assert jac.status == "info" and "at a kink: rule 0, autodiff 0.5 — a convention" in jac.hints[0]
    assert rows(rep, "finite-diff", "info") and rows(rep, "rev-over-rev", "info")


def test_a_rule_outside_the_one_sided_derivatives_at_a_kink_still_fails():
    relu2 = saving_inputs(lambda z: jnp.maximum(z, 0.0),
                          lambda res, g: (jnp.where(res[0][0] >= 0, 2 * g, 0.0) *
                                          jnp.where(res[0][0] > 0, 0.5, 1.0),))
    z = CORRECT[NAMES.index("relu at exact zeros")][2][0]
    rep = fbp.check_vjp(relu2, z, checks=("autodiff", "finite-diff"))
    assert {r.status for r in rep.rows} == {"FAIL"}, str(rep)


# ── 7. zero-size arguments ──

def test_zero_size_arguments_do_not_crash():
    dense = CORRECT[NAMES.index("matmul a @ b")][1]
    rep = fbp.check_vjp(dense, jnp.zeros((0, 4)), normal(4, 2))
    assert rep.ok, str(rep)


# ── 8. lower precision inside the rule: rounding, not a structural cause ──

def test_float32_accumulation_is_rounding_noise():
    rep = report("dense accumulating in float32")
    assert any("computes in float32" in n for n in rep.notes)
    _, f, args, _ = CORRECT[NAMES.index("dense accumulating in float32")]
    strict = fbp.check_vjp(f, *args, rtol=1e-14, atol=1e-16, checks=("autodiff",))
    assert not strict.ok
    assert "rounding" in hints(strict) and "per-feature" not in hints(strict)


# ── 9. fwd's primal output against the primal function's ──

def test_fwd_with_another_primal_output_is_caught():
    rule = vjp_rule(jnp.sin, lambda x: (2 * jnp.sin(x), x), lambda x, g: (g * jnp.cos(x),))
    rep = fbp.check_vjp(rule, X34, checks=("structure",))
    (row,) = rep.failures
    assert row.arg == "(output)" and "fwd's primal output differs" in row.hints[0]


# ── 10. complex, integer outputs, PRNG keys, Python floats, keyword arguments ──

def test_complex_rules_follow_jax_convention_and_a_missing_conjugate_is_caught():
    assert report("complex square and |z|²").ok and report("complex matmul (holomorphic)").ok
    wrong = saving_inputs(lambda z: jnp.real(z * jnp.conj(z)), lambda res, g: (2 * g * res[0][0],))
    z = CORRECT[NAMES.index("complex square and |z|²")][2][0]
    rep = fbp.check_vjp(wrong, z, checks=("autodiff", "finite-diff"))
    assert {r.check for r in rep.failures} == {"autodiff", "finite-diff"}, str(rep)


def test_integer_outputs_keys_floats_in_dicts_and_keywords_are_checked():
    assert report("sort with indices (float and int outputs)").ok
    assert report("dropout with a typed PRNG key").ok
    dict_rep = report("tanh with a dict of a float and a string")
    assert {r.arg for r in rows(dict_rep, "finite-diff", "ok")} == {"cfg['scale']", "x"}
    assert {r.arg for r in rows(report("weighted mse (weights: keyword array)"),
                                "autodiff", "ok")} == {"pred", "target", "weights"}
    huber = report("huber loss (delta: keyword, nondiff float)")
    assert any("Python floats held static" in n for n in huber.notes)


def test_a_wrong_cotangent_for_a_python_float_is_caught():
    bad = saving_inputs(lambda s, x: jnp.tanh(s * x),
                        lambda res, g: (0.0 * res[0][0], g * (1 - res[1] ** 2) * res[0][0]))
    rep = fbp.check_vjp(lambda cfg, x: bad(cfg["scale"], x), {"scale": 0.7, "act": "tanh"},
                        normal(4), checks=("autodiff",))
    assert {r.arg for r in rep.failures} == {"cfg['scale']"}, str(rep)


# ── 11. declared intents ──

def test_a_surrogate_reports_its_difference_as_information():
    rep = report("quantise-dequantise, straight-through")
    (ad,) = rows(rep, "autodiff")
    assert ad.status == "info"
    assert "declared a surrogate: differs from the derivative" in ad.hints[0]
    assert rows(rep, "linearity", "ok") and rows(rep, "jit", "ok") and rows(rep, "vmap", "ok")
    assert not rows(rep, "jacobian")


def test_a_surrogate_that_is_not_linear_in_g_fails_unless_declared_nonlinear():
    f = CORRECT[NAMES.index("gradient clipping by norm")][1]
    rep = fbp.check_vjp(f, 10 * X34, rule="surrogate", checks=("autodiff", "jit"))
    assert {r.check for r in rep.failures} == {"linearity"}, str(rep)
    assert fbp.check_vjp(f, 10 * X34, rule="nonlinear-surrogate", checks=("autodiff",)).ok
    with pytest.raises(ValueError, match="rule must be one of"):
        fbp.check_vjp(f, X34, rule="straight-through")


# ── 12. the default reference from the jaxpr: nothing patched, thread-safe; no raising ──

def test_check_vjp_patches_nothing_and_runs_in_threads():
    call = jax.custom_vjp.__call__
    names = ["softplus", "cumsum", "erf (jax.scipy)"]
    bad = saving_inputs(jnp.tanh, lambda res, g: (-g * (1 - res[1] ** 2),))
    checks = ("autodiff", "finite-diff")
    jobs = [partial(fbp.check_vjp, CORRECT[NAMES.index(n)][1], *CORRECT[NAMES.index(n)][2],
                    checks=checks) for n in names] + [partial(fbp.check_vjp, bad, X34,
                                                              checks=checks)]
    barrier = threading.Barrier(len(jobs))

    def run(job):
        barrier.wait()
        return job()
    with ThreadPoolExecutor(len(jobs)) as pool:
        reps = list(pool.map(run, jobs))
    assert [r.ok for r in reps] == [True, True, True, False]
    assert {r.arg for r in reps[-1].failures} == {"x"}
    assert jax.custom_vjp.__call__ is call


def test_an_exception_inside_a_check_is_a_row():
    def boom(res, g):
        raise ValueError("boom in bwd")
    rep = fbp.check_vjp(saving_inputs(jnp.sin, boom), X34)
    assert not rep.ok and any("ValueError: boom in bwd" in h for r in rep.failures
                              for h in r.hints), str(rep)


def test_a_wrapped_rule_that_closes_over_a_constant_passes_structure():
    """A rule whose forward uses a NumPy constant (avg_pool2d's valid-element counts) is
    called through a wrapper: JAX hoists the constant into the rule's operands, and the
    structure check must not differentiate it (it did: a CustomVJPException, a false FAIL).
    A wrong cotangent shape through the same wrapper is still named."""
    counts = np.arange(1.0, 4.0)

    @jax.custom_vjp
    def scaled(x):
        return x / counts

    scaled.defvjp(lambda x: (scaled(x), None), lambda _, g: (g / counts,))

    @jax.custom_vjp
    def wrong(x):
        return x / counts

    wrong.defvjp(lambda x: (wrong(x), None), lambda _, g: (g[:2] / counts[:2],))

    x = jnp.asarray([0.5, -1.0, 2.0])
    good = fbp.check_vjp(lambda u: scaled(u) * 2.0, x)
    assert good.ok, str(good)
    bad = fbp.check_vjp(lambda u: wrong(u) * 2.0, x, checks=("structure",))
    assert not bad.ok
