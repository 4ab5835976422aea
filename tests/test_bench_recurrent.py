"""benchmarks/recurrent.py: the two steps it times compute the same thing, and a tiny run
reports its rows and targets.  No timing is asserted."""

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

from benchmarks import recurrent

TINY = {"T": 5, "batch": 3, "n_in": 2, "n_hidden": 4}


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_fbp_step_gives_the_params_of_the_jax_grad_step(cell):
    params, xs, ys = recurrent.problem(cell, **TINY, dtype=jnp.float64)
    optimizer = optax.sgd(0.1)

    @jax.jit
    def two_steps(params):
        out = {}
        for kind in recurrent.KINDS:
            p, s = params, optimizer.init(params)
            step = recurrent.step_fn(cell, kind, optimizer)
            for _ in range(2):
                p, s, value = step(p, s, xs, ys)
            out[kind] = (p, value)
        return out

    out = two_steps(params)
    chex.assert_trees_all_close(out["fbp"], out["jax.grad"], rtol=1e-12, atol=1e-14)
    assert not jnp.allclose(out["fbp"][0][0], params[0])          # the step did move


def test_a_tiny_run_reports_rows_and_targets(monkeypatch):
    monkeypatch.setattr(recurrent, "QUICK", TINY)
    result = recurrent.run(quick=True)
    assert [r["cell"] for r in result["rows"]] == ["rnn", "lstm"]
    for r in result["rows"]:
        assert all(b > 0 for b in r["temp_bytes"].values())
        assert len(r["times_s"]["fbp"]) == len(r["times_s"]["jax.grad"]) == 3
    text = recurrent.report(result)
    assert "| rnn | 5 | 3 | 4 |" in text and "| lstm |" in text
    targets = recurrent.targets(result)
    assert len(targets) == 4 and all(isinstance(t["met"], bool) for t in targets)
