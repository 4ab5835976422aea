"""The benchmark harness (``benchmarks/``): what it times is correct, and how it times is sound.

No timing is asserted here.  These tests check that the candidates a benchmark compares
compute the same thing (fbp's step, ``fbp.backprop``'s step and the ``jax.grad`` step give
the same new params; the NumPy XOR class and fbp's scan train alike), that the jitted fbp
step is traced once, and that the pairing, FLOP count and residual count do what they say.
"""

import json
import sys
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import fbp
from benchmarks import __main__ as bench_main
from benchmarks import _timing, memory, numgrad, steps, xor

STEP_CASES = [  # (sizes, batch, problem spec)
    ((2, 4, 1), 7, steps.XOR),
    ((6, 5, 4, 3), 8, steps.MLP),
]


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


@pytest.mark.parametrize("sizes, m, spec", STEP_CASES)
def test_every_step_kind_gives_the_params_of_the_jax_grad_step(sizes, m, spec):
    params, x, y = steps.problem(sizes, m, dtype=jnp.float64, **spec)
    optimizer = optax.sgd(0.1)
    new, loss = {}, {}
    kinds = steps.KINDS + (steps.BODY,)  # the diagnostic step too: it must be the same maths
    for kind in kinds:
        step = steps.make_step(kind, optimizer=optimizer, **spec)
        p, s = _copy(params), optimizer.init(params)
        for _ in range(2):
            p, s, loss[kind] = step(p, s, x, y)
        new[kind] = p
    # independent: two plain SGD steps on jax.grad of the reference, no optax
    ref_grad = jax.jit(jax.value_and_grad(steps.reference_loss), static_argnums=(3, 4))
    p = _copy(params)
    for _ in range(2):
        value, g = ref_grad(p, x, y, spec["activation"], spec["loss"])
        p = jax.tree.map(lambda w, gw: w - 0.1 * gw, p, g)
    for kind in kinds:
        chex.assert_trees_all_close(new[kind], p, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(loss[kind], value, rtol=1e-12)


def test_jitted_fbp_step_is_traced_once():
    params, x, y = steps.problem((6, 5, 3), 8, dtype=jnp.float64, **steps.MLP)
    optimizer = optax.sgd(0.1)
    step = steps.make_step("fbp", optimizer=optimizer, wrap=chex.assert_max_traces(n=1),
                           **steps.MLP)
    p, s = _copy(params), optimizer.init(params)
    for _ in range(4):  # new (donated) params every call: still one trace
        p, s, _ = step(p, s, x, y)
    # the guard is live: a new batch shape needs a new trace, which it refuses
    with pytest.raises(AssertionError, match="trace"):
        step(p, s, x[:4], y[:4])


def test_step_flops_counts_each_matmul():
    # [2, 3, 4] at m = 5: forward 2·5·2·3 + 2·5·3·4 = 60 + 120; backward W̄ for both
    # layers (60 + 120) and x̄ for the second layer only (120).
    assert steps.step_flops([2, 3, 4], 5) == 60 + 120 + 60 + 120 + 120


def test_paired_interleaves_and_alternates_the_order():
    calls = []
    fns = {name: (lambda name=name: calls.append(name) or jnp.zeros(())) for name in "AB"}
    times = _timing.paired(fns, rounds=4, warmup=1, repeat={"A": 2, "B": 1})
    assert calls == ["A", "B"] + ["A", "A", "B", "B", "A", "A"] * 2
    assert {k: len(v) for k, v in times.items()} == {"A": 4, "B": 4}
    assert all(t >= 0 for v in times.values() for t in v)


def test_ratio_stats_of_known_rounds():
    s = _timing.ratio_stats([1.0, 2.0, 3.0, 4.0, 10.0], [1.0, 1.0, 1.0, 2.0, 2.0])
    # per-round ratios 1, 2, 3, 2, 5 → sorted 1, 2, 2, 3, 5
    assert s["ratio_median"] == 2.0 and s["ratio_q1"] == 2.0 and s["ratio_q3"] == 3.0
    assert (s["ratio_min"], s["ratio_max"]) == (1.0, 5.0)
    assert s["a_median_s"] == 3.0 and s["b_median_s"] == 1.0


def test_tutorial_numpy_class_and_fbp_scan_train_alike():
    epochs = 60
    params = fbp.init_mlp(jax.random.PRNGKey(3), xor.SIZES, dtype=jnp.float64)
    net, np_losses = xor.numpy_train(params, epochs)
    x, y = jnp.asarray(xor.X, jnp.float64), jnp.asarray(xor.Y, jnp.float64)
    trained, losses = jax.jit(xor.train_fn(epochs, unroll=4))(params, x, y)
    # same gradients (ŷ − y for sigmoid + BCE), so the same weights, to float64 rounding
    (W1, b1), (W2, b2) = trained
    for ours, theirs in ((W1, net.W1), (b1, net.b1[:, 0]), (W2, net.W2), (b2, net.b2[:, 0])):
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
    # the tutorial's loss adds ε = 1e-8 inside each log: a difference of about ε/ŷ ≤ 1e-7
    np.testing.assert_allclose(losses, np_losses, atol=1e-7)


def test_vmapped_xor_training_equals_one_network_at_a_time():
    epochs, n = 10, 2
    many = xor.init_many(n, seed=1, dtype=jnp.float64)
    x, y = jnp.asarray(xor.X, jnp.float64), jnp.asarray(xor.Y, jnp.float64)
    train = xor.train_fn(epochs)
    together, _ = jax.jit(jax.vmap(train, in_axes=(0, None, None)))(many, x, y)
    for i in range(n):
        alone, _ = jax.jit(train)(jax.tree.map(lambda a, i=i: a[i], many), x, y)
        chex.assert_trees_all_close(jax.tree.map(lambda a, i=i: a[i], together), alone,
                                    rtol=1e-10, atol=1e-12)


def test_residuals_counts_what_the_vjp_keeps():
    x = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)

    @jax.custom_vjp
    def keeps_two(x):
        return x * x

    keeps_two.defvjp(lambda x: (x * x, (x, 2 * x)), lambda res, g: (g * res[1],))
    assert memory.residuals(keeps_two, x)["bytes"] == 2 * x.nbytes
    assert memory.residuals(fbp.relu, x)["arrays"] == ["bool[3, 4]"]
    assert memory.residuals(lambda x: x + 1.0, x)["bytes"] == 0  # linear: nothing to keep


def test_local_central_difference_matches_backprop():
    params = fbp.init_mlp(jax.random.PRNGKey(0), [3, 4, 1], scheme="xavier", dtype=jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 3), jnp.float64)
    y = jax.random.normal(jax.random.PRNGKey(2), (5, 1), jnp.float64)
    loss = lambda p: fbp.mlp_loss(p, x, y, "tanh", "mse")
    num = numgrad.central_difference_grad(loss, params, eps=1e-6)
    ref = jax.grad(steps.reference_loss)(params, x, y, "tanh", "mse")
    np.testing.assert_allclose(ravel_pytree(num)[0], ravel_pytree(ref)[0], rtol=1e-7, atol=1e-9)


def test_main_prints_and_writes_bench_json(tmp_path, monkeypatch, capsys):
    fake = types.ModuleType("benchmarks.fake")
    fake.__doc__ = "A stand-in case group."
    fake.run = lambda quick: {"quick": quick, "value": np.float32(0.5)}
    fake.report = lambda r: "| a | b |\n|---|---|\n| 1 | 2 |"
    fake.targets = lambda r: [{"target": "value ≤ 1", "value": 0.5, "met": True}]
    monkeypatch.setitem(sys.modules, "benchmarks.fake", fake)
    monkeypatch.setattr(bench_main, "GROUPS", ["fake"])
    assert bench_main.main(["--quick", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert doc["quick"] is True and doc["results"]["fake"]["value"] == 0.5
    assert doc["targets"] == [{"target": "value ≤ 1", "value": 0.5, "met": True}]
    assert doc["machine"]["nproc"] >= 1
    out = capsys.readouterr().out
    assert "| 1 | 2 |" in out and "| value ≤ 1 | 0.5 | yes |" in out


def test_a_step_row_carries_its_a_a_control_and_the_report_shows_it():
    """Each step row times jax.grad's step a second time (a separate jit of the same program)
    in the same rounds: its ratio to the first is reported beside fbp's, as the noise floor."""
    row = steps.run_case((6, 5, 4, 3), 8, steps.MLP, rounds=2, warmup=1)
    aa = row["aa_vs_grad"]
    assert aa["rounds"] == 2 and aa["ratio_median"] > 0
    assert set(row["times_s"]) >= {"fbp", "backprop", "jax.grad", "jax.grad again"}
    text = steps.report({"rows": [row], "torch": "skipped: not installed"})
    header = next(line for line in text.splitlines() if line.startswith("| net"))
    assert "| A/A |" in header and steps._ratio(aa) in text
    body = row["body_vs_grad"]  # the diagnostic: fbp's layer rules under autodiff's loss
    assert body["rounds"] == 2 and steps.BODY in row["times_s"]
    assert f"6-5-4-3/8: {steps._ratio(body)}" in text
