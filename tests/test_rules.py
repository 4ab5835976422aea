"""The four-way proof of every hand-written rule, in float64.

For each op: the custom VJP equals ``jax.vjp`` of an independent reference; its full Jacobian
(every basis cotangent through the rule, i.e. ``jax.jacrev`` of the public op) equals
``jax.jacrev`` of the reference; it agrees with central differences; it is the same under
``jit``; per-example VJPs under ``vmap`` equal a Python loop; and the public function really
runs its own rule (its jaxpr holds a ``custom_vjp_call``).
"""

import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import _proof
from tests._ops import ALL_OPS

TIGHT = 1e-12       # rule vs autodiff: both exact up to float64 rounding
FD = 1e-7           # central differences: truncation + rounding error is ~1e-10 here
SHAPES = [((), 5), ((2, 3), 6)]


@pytest.mark.parametrize("op", ALL_OPS, ids=repr)
@pytest.mark.parametrize("batch,n", SHAPES)
def test_vjp_equals_autodiff_of_reference(op, batch, n):
    args = op.make(jax.random.PRNGKey(0), batch, n)
    assert _proof.vjp_vs_reference(op, args, jax.random.PRNGKey(1)) <= TIGHT


@pytest.mark.parametrize("op", ALL_OPS, ids=repr)
def test_full_jacobian_equals_jacrev_of_reference(op):
    args = op.make(jax.random.PRNGKey(2), (4,), 3)
    assert _proof.jacobian_vs_jacrev(op, args) <= TIGHT


@pytest.mark.parametrize("op", ALL_OPS, ids=repr)
def test_vjp_agrees_with_central_differences(op):
    args = op.make(jax.random.PRNGKey(3), (3,), 4)
    assert _proof.vjp_vs_finite_differences(op, args, jax.random.PRNGKey(4)) <= FD


@pytest.mark.parametrize("op", ALL_OPS, ids=repr)
def test_jit_equals_eager(op):
    args = op.make(jax.random.PRNGKey(5), (3, 2), 4)
    assert _proof.jit_vs_eager(op, args, jax.random.PRNGKey(6)) <= 1e-14


@pytest.mark.parametrize("op", ALL_OPS, ids=repr)
def test_vmap_per_example_equals_loop(op):
    args = op.make(jax.random.PRNGKey(7), (5,), 4)
    assert _proof.vmap_vs_loop(op, args, jax.random.PRNGKey(8)) <= 1e-14


@pytest.mark.parametrize("op", ALL_OPS, ids=repr)
def test_public_function_runs_its_own_rule(op):
    args = op.make(jax.random.PRNGKey(9), (2,), 3)
    assert _proof.uses_custom_rule(op, args)


def test_replacing_a_rule_with_autodiff_is_caught():
    """The jaxpr check above is not vacuous: a plain-jnp op has no custom_vjp_call."""
    op = _proof.Op("plain", jax.nn.sigmoid, jax.nn.sigmoid, ALL_OPS[0].make)
    assert not _proof.uses_custom_rule(op, op.make(jax.random.PRNGKey(0), (2,), 3))


@pytest.mark.parametrize("op", ALL_OPS, ids=repr)
@settings(max_examples=5)
@given(batch=st.lists(st.integers(1, 4), min_size=0, max_size=3),
       n=st.integers(1, 17), seed=st.integers(0, 2**31 - 1))
def test_random_shapes_and_values(op, batch, n, seed):
    args = op.make(jax.random.PRNGKey(seed), tuple(batch), n)
    assert _proof.vjp_vs_reference(op, args, jax.random.PRNGKey(seed + 1)) <= TIGHT


@pytest.mark.parametrize("op", ALL_OPS, ids=repr)
def test_float32_matches_reference(op):
    args = jax.tree.map(lambda a: a.astype(jnp.float32) if a.dtype == jnp.float64 else a,
                        op.make(jax.random.PRNGKey(10), (4,), 5))
    assert _proof.vjp_vs_reference(op, args, jax.random.PRNGKey(11)) <= 1e-5


def test_residual_bytes_never_exceed_autodiff(capsys):
    """What each rule saves for the backward, against what autodiff of the reference saves."""
    rows = []
    for op in ALL_OPS:
        args = op.make(jax.random.PRNGKey(12), (16,), 8)
        ours = _proof.residual_bytes(op.f, args, op.diff)
        theirs = _proof.residual_bytes(op.ref, args, op.diff)
        rows.append((op.name, ours, theirs))
        assert ours <= theirs, f"{op.name}: rule saves {ours} B, autodiff {theirs} B"
    with capsys.disabled():
        print("\nresidual bytes at (16, 8), float64:  op | fbp rule | autodiff of reference")
        for name, ours, theirs in rows:
            print(f"  {name:32s} {ours:8d} {theirs:8d}")
