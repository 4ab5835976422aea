"""Recurrent training steps: fbp's hand-written BPTT (rnn, lstm) against jax.grad of a plain scan.

Each step is forward + backward + ``optax.sgd``, jitted, params donated; the loss is the mean
squared error of the hidden states against a fixed target (the same plain jnp on both sides,
so only the recurrent rule differs):

* ``fbp``       ``jax.value_and_grad`` through ``fbp.rnn`` / ``fbp.lstm`` (the reverse-scan rule);
* ``jax.grad``  ``jax.value_and_grad`` through the plain-jnp scan reference
                (``fbp.check.op_cases_recurrent``): JAX derives BPTT itself.

Time is paired and interleaved (``benchmarks._timing``); memory is XLA's temp bytes of the
compiled step (``compile().memory_analysis().temp_size_in_bytes``), compiled from
``jax.ShapeDtypeStruct``s.  Targets: fbp / jax.grad ≤ 1.0 in time and in temp bytes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import fbp
from benchmarks._timing import compile_seconds, fmt_time, paired, ratio_stats, table
from fbp.check.op_cases_recurrent import reference_lstm, reference_rnn

KINDS = ("fbp", "jax.grad")
FULL = {"T": 256, "batch": 32, "n_in": 64, "n_hidden": 256}
QUICK = {"T": 32, "batch": 8, "n_in": 16, "n_hidden": 32}


def _hidden(cell: str, kind: str):
    """``(params, xs) -> hs`` for one cell and one kind."""
    if cell == "rnn":
        return fbp.rnn if kind == "fbp" else reference_rnn
    lstm = fbp.lstm if kind == "fbp" else reference_lstm
    return lambda p, xs: lstm(p, xs)[0]


def loss_fn(cell: str, kind: str):
    hidden = _hidden(cell, kind)
    return lambda p, xs, ys: jnp.mean((hidden(p, xs) - ys) ** 2)


def step_fn(cell: str, kind: str, optimizer):
    vg = jax.value_and_grad(loss_fn(cell, kind))

    def step(params, opt_state, xs, ys):
        value, grads = vg(params, xs, ys)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step


def problem(cell: str, T: int, batch: int, n_in: int, n_hidden: int, dtype=jnp.float32,
            seed: int = 0):
    k_p, k_x, k_y = jax.random.split(jax.random.PRNGKey(seed), 3)
    init = fbp.init_rnn if cell == "rnn" else fbp.init_lstm
    params = init(k_p, n_in, n_hidden, dtype)
    xs = jax.random.normal(k_x, (batch, T, n_in), dtype)
    ys = 0.5 * jax.random.normal(k_y, (batch, T, n_hidden), dtype)
    return params, xs, ys


def temp_bytes(cell: str, kind: str, size: dict, optimizer) -> int:
    """XLA temp bytes of the compiled step, compiled from shapes only (nothing runs)."""
    shapes = jax.eval_shape(lambda: problem(cell, **size))
    params, xs, ys = shapes
    opt_state = jax.eval_shape(optimizer.init, params)
    compiled = jax.jit(step_fn(cell, kind, optimizer)).lower(params, opt_state, xs, ys).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def run_case(cell: str, size: dict, rounds: int, warmup: int) -> dict:
    optimizer = optax.sgd(1e-3)
    params, xs, ys = problem(cell, **size)
    fns, compile_s = {}, {}
    for kind in KINDS:
        step = jax.jit(step_fn(cell, kind, optimizer), donate_argnums=(0, 1))
        state = [jax.tree.map(jnp.copy, params), optimizer.init(params)]
        compile_s[kind] = compile_seconds(step, state[0], state[1], xs, ys)

        def run(step=step, state=state):
            state[0], state[1], value = step(state[0], state[1], xs, ys)
            return value

        fns[kind] = run
    times = paired(fns, rounds=rounds, warmup=warmup)
    temp = {kind: temp_bytes(cell, kind, size, optimizer) for kind in KINDS}
    return {"cell": cell, **size, "times_s": times, "compile_s": compile_s,
            "median_s": {k: sorted(v)[len(v) // 2] for k, v in times.items()},
            "fbp_vs_grad": ratio_stats(times["fbp"], times["jax.grad"]),
            "temp_bytes": temp, "temp_ratio": temp["fbp"] / max(temp["jax.grad"], 1)}


def run(quick: bool = False) -> dict:
    size, rounds, warmup = (QUICK, 3, 1) if quick else (FULL, 9, 2)
    rows = []
    for cell in ("rnn", "lstm"):
        print(f"  {cell} step T {size['T']} batch {size['batch']} hidden {size['n_hidden']} …",
              flush=True)
        rows.append(run_case(cell, size, rounds, warmup))
        for t in targets({"rows": rows[-1:]}):
            print(f"    {t['target']}: {t['value']} — {'met' if t['met'] else 'MISSED'}",
                  flush=True)
    return {"rows": rows, "note": "timings on a shared machine are noisy; ratios are paired"}


def report(result: dict) -> str:
    rows = []
    for r in result["rows"]:
        s, t = r["fbp_vs_grad"], r["temp_bytes"]
        rows.append([r["cell"], r["T"], r["batch"], r["n_hidden"],
                     fmt_time(r["median_s"]["fbp"]), fmt_time(r["median_s"]["jax.grad"]),
                     f"{s['ratio_median']:.3f} [{s['ratio_q1']:.2f}–{s['ratio_q3']:.2f}]",
                     f"{t['fbp'] / 2**20:.1f} / {t['jax.grad'] / 2**20:.1f}",
                     f"{r['temp_ratio']:.3f}"])
    return "\n".join([
        "Recurrent training step (forward + BPTT + optax.sgd), jitted, params donated, float32. "
        "Ratio: median of per-round ratios [IQR]; < 1 means fbp is faster / smaller.", "",
        table(["cell", "T", "batch", "hidden", "fbp", "jax.grad", "fbp / jax.grad time",
               "XLA temp MiB (fbp / jax.grad)", "fbp / jax.grad temp"], rows)])


def targets(result: dict) -> list[dict]:
    out = []
    for r in result["rows"]:
        where = f"{r['cell']} step T {r['T']} batch {r['batch']} hidden {r['n_hidden']}"
        v = r["fbp_vs_grad"]["ratio_median"]
        out.append({"target": f"fbp / jax.grad time ≤ 1.00, {where}", "value": round(v, 3),
                    "met": v <= 1.0})
        v = r["temp_ratio"]
        out.append({"target": f"fbp / jax.grad XLA temp bytes ≤ 1.00, {where}",
                    "value": round(v, 3), "met": v <= 1.0})
    return out
