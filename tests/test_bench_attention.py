"""The attention benchmark group: its candidates compute the same thing, and it runs tiny.

No timing or memory figure is asserted here (those are ``make bench`` rows with targets).
"""

import chex
import jax
import jax.numpy as jnp
import optax

from benchmarks import attention as bench
from fbp.nets.transformer import init_gpt


def test_every_attention_kind_gives_the_loss_and_grads_of_the_naive_form():
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    args = [jax.random.normal(k, (1, 2, 7, 3), jnp.float64) for k in keys]
    want = bench.loss_and_grads(bench.naive_attention)(*args)
    causal_kinds = {n: f for n, f in bench.attention_kinds(3).items() if n != "flash, not causal"}
    for name, f in causal_kinds.items():
        chex.assert_trees_all_close(bench.loss_and_grads(f)(*args), want, rtol=1e-12,
                                    atol=1e-13, custom_message=name)


def test_every_gpt_step_kind_gives_the_params_of_the_jax_grad_step():
    params = init_gpt(jax.random.PRNGKey(0), 11, 8, 2, 1, 5, jnp.float64)
    ids = jax.random.randint(jax.random.PRNGKey(1), (2, 5), 0, 11)
    optimizer = optax.sgd(0.1)  # (adam would turn the key bias's zero gradient, rounding
    #                               noise of 1e-13, into steps of size lr: not comparable)
    new = {}
    for kind in ("fbp (flash)", "fbp (textbook)", "jax.grad"):
        step = bench.gpt_step(kind, 2, optimizer)
        p, _, loss = step(jax.tree.map(jnp.copy, params), optimizer.init(params), ids, ids)
        new[kind] = (p, loss)
    for kind in ("fbp (flash)", "fbp (textbook)"):
        chex.assert_trees_all_close(new[kind], new["jax.grad"], rtol=1e-10, atol=1e-12)


def test_group_runs_tiny_and_states_its_targets(monkeypatch):
    monkeypatch.setattr(bench, "FLASH", {**bench.FLASH, "heads": 1, "d": 4, "block_size": 8})
    kinds = bench.attention_kinds
    monkeypatch.setattr(bench, "attention_kinds", lambda b: {
        n: f for n, f in kinds(b).items() if n in ("flash", "naive", "checkpoint")})
    monkeypatch.setattr(bench, "QUICK_T", 16)
    monkeypatch.setattr(bench, "QUICK_SCALING_T", [16, 32])
    monkeypatch.setattr(bench, "QUICK_GPT", {"vocab": 9, "d_model": 8, "n_heads": 2,
                                             "n_layers": 1, "T": 4, "batch": 1})
    result = bench.run(quick=True)
    text = bench.report(result)
    assert "| flash |" in text and "log-log slope" in text and "| jax.grad |" in text
    targets = bench.targets(result)
    assert len(targets) == 6 and all(isinstance(t["met"], bool) for t in targets)
    assert result["scaling"]["T"] == [16, 32]
