"""Every fbp op passes fbp.check_vjp: float64 every check, float32 every numerical check.

The op table (fbp/check/op_table.py) pairs each op with random arguments and a reference built
from jax.nn / optax / plain jnp only.  float32 runs the checks whose tolerances depend on the
dtype (structure, autodiff, Jacobian, finite differences, jit); the transform checks (vmap,
reverse-over-reverse) compare the rule with itself and run in float64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import fbp.check.op_table as op_table
from fbp.check import ALL_CHECKS

CORE_OPS = {"sigmoid", "tanh", "relu", "leaky_relu", "gelu", "gelu(tanh)", "softmax", "dense",
            "bce_with_logits", "bce", "softmax_cross_entropy(labels)",
            "softmax_cross_entropy(soft)", "mse"}
FLOAT32_CHECKS = ("structure", "autodiff", "jacobian", "finite-diff", "jit")


CASES = list(enumerate(op_table.op_cases()))
# float32 through the checker for the ops of the built-in builders (core ops, the MLP, the
# norms). The families of EXTENSIONS each prove their float32 rules in their own test file
# (test_ops_conv, test_ops_recurrent, test_ops_attention, test_ops_embedding,
# test_ops_vocab_loss, test_loss_where), and the forward twins share the rules' derivative
# helpers, so a second float32 pass over them here would only repeat those compilations.
FLOAT32_NAMES = {c.name for build in op_table.BUILDERS[:3] for c in build()}
PARAMS = ([pytest.param("float64", ALL_CHECKS, n, c, id=f"float64-{c.name}") for n, c in CASES]
          + [pytest.param("float32", FLOAT32_CHECKS, n, c, id=f"float32-{c.name}")
             for n, c in CASES if c.name in FLOAT32_NAMES])


def test_the_table_holds_the_core_ops():
    assert CORE_OPS <= {c.name for _, c in CASES}


@pytest.mark.parametrize("dtype, checks, n, case", PARAMS)
def test_every_fbp_op_passes_check_vjp(dtype, checks, n, case):
    """One test per op and dtype (so the suite's workers share them out)."""
    name, report, seconds = op_table.check_case(case, n, dtype, checks=checks)
    assert report.dtype == dtype
    assert report.ok, str(report)
    checked = {r.check for r in report.rows if r.status == "ok"}
    expected = set(checks)
    if any("calls no jax.custom_vjp" in note for note in report.notes):
        expected -= {"structure"}                        # forward twins: custom_jvp
    assert expected <= checked, name                     # nothing silently skipped
    print("\n" + op_table.summary_table([(name, report, seconds)]))


def test_check_all_ops_in_threads_keeps_the_table_order_and_catches_a_wrong_rule(monkeypatch):
    """``python -m fbp.check`` runs the cases in threads: the rows come back in the table's
    order, the same verdicts as one thread, and a wrong rule among them still fails."""
    @jax.custom_vjp
    def bad_tanh(z):
        return jnp.tanh(z)
    bad_tanh.defvjp(lambda z: (jnp.tanh(z), z), lambda z, g: (g * (1 - z ** 2),))  # not tanh(z)²
    cases = [c for _, c in CASES if c.name in ("tanh", "dense", "mse")]
    cases.insert(1, op_table.OpCase("bad_tanh", bad_tanh, cases[0].make_args, jnp.tanh))
    monkeypatch.setattr(op_table, "op_cases", lambda: cases)
    one = op_table.check_all_ops(workers=1)
    two = op_table.check_all_ops(workers=2)
    assert [r[0] for r in two] == [c.name for c in cases] == [r[0] for r in one]
    assert [r[1].ok for r in two] == [True, False, True, True] == [r[1].ok for r in one]
