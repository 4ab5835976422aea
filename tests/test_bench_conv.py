"""benchmarks/conv.py: the two conv steps compute the same thing; quick mode runs and reports."""

import chex
import jax
import jax.numpy as jnp
import optax

from benchmarks import conv


def test_fbp_and_jax_grad_conv_steps_give_the_same_params():
    params, x, t = conv.conv_problem(batch=2, hw=5, c_in=2, c_out=3, k=3, dtype=jnp.float64)
    optimizer = optax.sgd(0.1)
    new = {}
    for kind in conv.KINDS:
        step = conv.make_step(kind, optimizer)
        p, s, _ = step(jax.tree.map(jnp.copy, params), optimizer.init(params), x, t)
        new[kind] = p
    chex.assert_trees_all_close(new["fbp"], new["jax.grad"], rtol=1e-12, atol=1e-14)


def test_quick_run_reports_targets():
    result = conv.run(quick=True)
    text = conv.report(result)
    rows = conv.targets(result)
    assert len(rows) == 2 and all({"target", "value", "met"} <= set(r) for r in rows)
    assert result["dropout"]["fbp"]["bytes"] == 8                     # the raw key
    assert result["dropout"]["autodiff"]["bytes"] >= 8 * 16           # at least the bool mask
    assert "≤ 1.05" in text and ("met" in text or "missed" in text)
