"""fbp.check_vjp against hostile rules: small but clear bugs that a loose reading of the
numbers would let through, and the correct rules beside them that must still pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fbp


def saving_inputs(fn, bwd):
    """A custom_vjp of ``fn`` whose rule is ``bwd(*inputs, g)``."""
    f = jax.custom_vjp(lambda *a: fn(*a))
    f.defvjp(lambda *a: (fn(*a), a), lambda a, g: bwd(*a, g))
    return f


def normal32(seed, *shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# ── 1. float32: curvature and rounding noise over the step are not kinks ──

def exp2_bwd(k):
    return lambda x, g: (k * g * 2 * jnp.exp(2 * x),)


def exp10_bwd(k):
    return lambda x, g: (k * g * 10 * jnp.exp(10 * x),)


def softplus_sum_bwd(k):
    return lambda x, g: (k * g * jax.nn.sigmoid(x),)


SMOOTH32 = {   # name: (f, rule's derivative × k, arguments)
    "exp(2x)": (lambda x: jnp.exp(2 * x), exp2_bwd, (normal32(0, 6, 8),), 1.001),
    "exp(10x)": (lambda x: jnp.exp(10 * x), exp10_bwd, (normal32(1, 4, 6),), 1.02),
    "Σ softplus over 2048": (lambda x: jnp.sum(jax.nn.softplus(x)), softplus_sum_bwd,
                             (normal32(2, 2048),), 1.05),
}


@pytest.mark.parametrize("name", SMOOTH32)
def test_float32_smooth_rule_a_little_off_fails_and_the_right_one_passes(name):
    """One-sided differences of a curved function differ by h·f'' (h ≈ 5e-3 in float32), and
    those of a large sum by its rounding over the step: neither is a kink."""
    fn, bwd, args, k = SMOOTH32[name]
    checks = ("autodiff", "jacobian", "finite-diff")
    right = fbp.check_vjp(saving_inputs(fn, bwd(1.0)), *args, checks=checks)
    assert right.ok, str(right)
    wrong = fbp.check_vjp(saving_inputs(fn, bwd(k)), *args, checks=checks)
    assert {r.check for r in wrong.failures} >= {"autodiff", "jacobian"}, str(wrong)
    assert "kink" not in str(wrong)
    row = next(r for r in wrong.failures if r.check == "autodiff")
    assert row.got / row.expected == pytest.approx(k, rel=1e-4)     # where, and by how much
    x_bar = jax.grad(lambda x: jnp.sum(saving_inputs(fn, bwd(1.0))(x)))(*args)
    np.testing.assert_allclose(x_bar, jax.grad(lambda x: jnp.sum(fn(x)))(*args), rtol=1e-6)


def test_float32_relu_at_its_kink_is_still_a_convention():
    z = jnp.asarray([[-1.0, 0.0, 0.5], [0.0, 2.0, -0.3]], jnp.float32)
    relu = saving_inputs(lambda z: jnp.maximum(z, 0.0),
                         lambda z, g: (jnp.where(z > 0, g, 0.0),))
    rep = fbp.check_vjp(relu, z, checks=("autodiff", "jacobian", "finite-diff"))
    assert rep.ok and rep.info, str(rep)
    assert "at a kink: rule 0" in str(rep)


# ── 2. exact casts are not low precision ──

def square_pos(x):
    return jnp.where(x > 0, x * x, 0.0)


MASKS = {
    "bool → float16": lambda x: (x > 0).astype(jnp.float16),
    "bool → int8 → bfloat16": lambda x: (x > 0).astype(jnp.int8).astype(jnp.bfloat16),
    "float16 constants": lambda x: jnp.where(x > 0, jnp.full(x.shape, 1.0, jnp.float16),
                                             jnp.float16(0)),
}


@pytest.mark.parametrize("name", MASKS)
def test_a_mask_in_a_narrow_dtype_does_not_loosen_the_tolerances(name):
    """A float64 rule whose mask is float16 rounds nothing: float64 tolerances still apply,
    so a rule off by 0.5 % fails (it passed under float16's)."""
    mask = MASKS[name]
    x = jnp.asarray(np.random.default_rng(3).standard_normal((3, 4)))
    checks = ("autodiff", "jacobian", "finite-diff")
    right = fbp.check_vjp(saving_inputs(square_pos, lambda x, g: (g * 2 * x * mask(x),)), x,
                          checks=checks)
    assert right.ok, str(right)
    assert not any("computes in" in n for n in right.notes), right.notes
    wrong = fbp.check_vjp(saving_inputs(square_pos, lambda x, g: (1.005 * g * 2 * x * mask(x),)),
                          x, checks=checks)
    assert {r.check for r in wrong.failures} == set(checks), str(wrong)
    np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(square_pos(x)))(x),
                               jnp.where(x > 0, 2 * x, 0.0))


def test_a_real_float32_accumulation_inside_float64_still_gets_float32_tolerances():
    W = jnp.asarray(np.random.default_rng(4).standard_normal((3, 5)))
    x = jnp.asarray(np.random.default_rng(5).standard_normal((4, 5)))

    def dense(W, x):
        return x @ W.T

    def bwd(W, x, g):
        g32 = g.astype(jnp.float32)
        return ((g32.T @ x.astype(jnp.float32)).astype(W.dtype),
                (g32 @ W.astype(jnp.float32)).astype(x.dtype))
    rep = fbp.check_vjp(saving_inputs(dense, bwd), W, x, checks=("autodiff", "finite-diff"))
    assert rep.ok, str(rep)
    assert any("computes in float32" in n for n in rep.notes)


# ── 3. the command line ──

def _cli(*flags):
    return subprocess.run([sys.executable, "-m", "fbp.check", *flags], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).parents[1],
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_cli_help_prints_usage_without_running_the_checks():
    out = _cli("--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: python -m fbp.check")
    assert "--float32" in out.stdout and "--verbose" in out.stdout
    assert "ops pass" not in out.stdout


def test_cli_unknown_flag_is_an_error():
    out = _cli("--float23")
    assert out.returncode == 2
    assert "unrecognized arguments: --float23" in out.stderr and "ops pass" not in out.stdout


# ── 4. rules a user writes ──

def test_a_rule_of_ones_own_around_a_jax_function_is_not_taken_for_jaxs_own():
    """``jax.custom_vjp(jnp.tanh)``: the primal is JAX's, the rule the user's, so the default
    reference is autodiff of tanh, not the rule compared with itself."""
    x = jnp.linspace(-1.5, 1.5, 6)
    checks = ("autodiff", "jacobian")
    for k, ok in ((1.0, True), (1.05, False)):
        tanh = jax.custom_vjp(jnp.tanh)
        tanh.defvjp(lambda x: (jnp.tanh(x), x), lambda x, g, k=k: (k * g / jnp.cosh(x) ** 2,))
        rep = fbp.check_vjp(tanh, x, checks=checks)
        assert rep.ok == ok, str(rep)
        if not ok:
            assert {r.check for r in rep.failures} == set(checks)
            assert "off by a constant factor 1.05" in str(rep)
    np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(jnp.tanh(x)))(x), 1 / jnp.cosh(x) ** 2)


def test_a_finite_difference_failure_alone_is_not_blamed_on_the_batch():
    """The rule agrees with the reference (which shares its bug) but not with f: the check of
    each example alone is against that reference too, so it says nothing about the batch."""
    x = jnp.asarray(np.random.default_rng(6).standard_normal((3, 4)))
    tanh = saving_inputs(jnp.tanh, lambda x, g: (1.05 * g / jnp.cosh(x) ** 2,))
    rep = fbp.check_vjp(tanh, x, reference=lambda x: 1.05 * jnp.tanh(x),
                        checks=("autodiff", "finite-diff"))
    assert [r.check for r in rep.failures] == ["finite-diff"], str(rep)
    assert "off by a constant factor 1.05" in str(rep)
    assert "batch" not in str(rep)


class Dense(NamedTuple):
    W: jax.Array
    b: jax.Array


def _normal(seed, *shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


def _dense_tanh(p, x):
    return jnp.tanh(x @ p.W.T + p.b[None])


def _dense_tanh_bwd(bug):
    def bwd(p, x, g):
        d = g * (1 - _dense_tanh(p, x) ** 2)
        return Dense(d.T @ x, d[0] if bug else d.sum(0)), d @ p.W
    return bwd


def _solve_bwd(bug):
    def bwd(A, b, g):
        lam = jnp.linalg.solve(A if bug else A.T, g)          # implicit: Aᵀλ = ḡ
        return -jnp.outer(lam, jnp.linalg.solve(A, b)), lam
    return bwd


_X = _normal(7, 3, 5)
_LABELS = jnp.asarray([4, 0, 2])
_A = _normal(8, 4, 4) + 4 * jnp.eye(4)
REAL_WORLD = {   # name: (f, bwd(bug), args, check_vjp kwargs)
    "logsumexp": (lambda x: jax.scipy.special.logsumexp(x, axis=-1),
                  lambda bug: lambda x, g: (g[:, None] * jax.nn.softmax(x, axis=0 if bug else -1),),
                  (_X,), {}),
    "erf": (jax.scipy.special.erf,
            lambda bug: lambda x, g: (g * 2 / jnp.sqrt(jnp.pi) * jnp.exp(-x ** (3 if bug else 2)),),
            (_X,), {}),
    "optax cross-entropy, integer labels": (
        lambda z, y: jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(z, y)),
        lambda bug: lambda z, y, g: (g * (jax.nn.softmax(z) - jax.nn.one_hot(y, 5))
                                     / (5 if bug else 3), None),
        (_X, _LABELS), {}),
    "dense tanh, NamedTuple params": (_dense_tanh, _dense_tanh_bwd,
                                      (Dense(_normal(9, 4, 5), _normal(10, 4)), _X), {}),
    "implicit linear solve": (jnp.linalg.solve, _solve_bwd, (_A, _normal(11, 4)), {}),
    "x ** n, integer n": (lambda x, n: x ** n,
                          lambda bug: lambda x, n, g: (g * n * x ** (n if bug else n - 1), None),
                          (_X, 3), {}),
    "straight-through round": (jnp.round,
                               lambda bug: lambda x, g: (jnp.ones_like(g) if bug else g,),
                               (_X,), {"rule": "surrogate"}),
}


@pytest.mark.parametrize("name", REAL_WORLD)
def test_real_world_rules_pass_and_a_one_character_bug_fails(name):
    fn, bwd, args, kwargs = REAL_WORLD[name]
    right = fbp.check_vjp(saving_inputs(fn, bwd(False)), *args, **kwargs)
    assert right.ok, str(right)
    wrong = fbp.check_vjp(saving_inputs(fn, bwd(True)), *args, **kwargs)
    assert not wrong.ok, str(wrong)
    if kwargs.get("rule") != "surrogate":           # against JAX's own derivative
        want = jax.grad(lambda *a: jnp.sum(fn(*a)))(*args)
        got = jax.grad(lambda *a: jnp.sum(saving_inputs(fn, bwd(False))(*a)))(*args)
        for w, g in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got),
                        strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
