"""Every fbp op passes fbp.check_vjp: float64 every check, float32 every numerical check.

The op table (fbp/check/op_table.py) pairs each op with random arguments and a reference built
from jax.nn / optax / plain jnp only.  float32 runs the checks whose tolerances depend on the
dtype (structure, autodiff, Jacobian, finite differences, jit); the transform checks (vmap,
reverse-over-reverse) compare the rule with itself and run in float64.
"""

from __future__ import annotations

import pytest

import fbp.check.op_table as op_table
from fbp.check import ALL_CHECKS

CORE_OPS = {"sigmoid", "tanh", "relu", "leaky_relu", "gelu", "gelu(tanh)", "softmax", "dense",
            "bce_with_logits", "bce", "softmax_cross_entropy(labels)",
            "softmax_cross_entropy(soft)", "mse"}
FLOAT32_CHECKS = ("structure", "autodiff", "jacobian", "finite-diff", "jit")


@pytest.mark.parametrize("dtype, checks", [("float64", ALL_CHECKS),
                                           ("float32", FLOAT32_CHECKS)])
def test_every_fbp_op_passes_check_vjp(dtype, checks):
    results = op_table.check_all_ops(dtype, checks=checks)
    assert CORE_OPS <= {name for name, _, _ in results}
    for name, report, _ in results:
        assert report.dtype == dtype
        assert report.ok, str(report)
        checked = {r.check for r in report.rows if r.status == "ok"}
        expected = set(checks) - {"vmap"}                    # vmap: not for batch_norm
        if any("calls no jax.custom_vjp" in note for note in report.notes):
            expected -= {"structure"}                        # forward twins: custom_jvp
        assert expected <= checked, name                     # nothing silently skipped
    print("\n" + op_table.summary_table(results))
