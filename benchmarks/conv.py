"""Convolution training step and dropout's residual: fbp's rules against autodiff.

* conv step — forward + backward + ``optax.sgd`` of ``mse(conv2d(params, x), target)``,
  batch 64, 32×32×16 → 32 channels, 3×3, "SAME", float32, jitted with params donated:
  ``jax.value_and_grad`` through fbp's hand-written conv rule against ``jax.value_and_grad``
  of ``lax.conv_general_dilated`` (JAX derives the rule).  Paired, interleaved, medians.
* dropout residual — the bytes ``jax.vjp`` keeps for the backward: fbp's rule saves the key
  and draws the mask again; autodiff of the same forward keeps the mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import fbp
from benchmarks._timing import auto_repeat, compile_seconds, fmt_time, paired, ratio_stats, table
from benchmarks.memory import residuals
from fbp.check.op_cases_conv import ref_conv2d, ref_dropout

FULL = {"batch": 64, "hw": 32, "c_in": 16, "c_out": 32, "k": 3}
QUICK = {"batch": 4, "hw": 8, "c_in": 4, "c_out": 8, "k": 3}
BOUND = 1.05


def conv_problem(batch, hw, c_in, c_out, k, dtype=jnp.float32):
    kp, kx, ky = jax.random.split(jax.random.PRNGKey(0), 3)
    params = fbp.init_conv(kp, c_in, c_out, k, dtype=dtype)
    x = jax.random.normal(kx, (batch, hw, hw, c_in), dtype)
    target = jax.random.normal(ky, (batch, hw, hw, c_out), dtype)
    return params, x, target


def loss_fn(kind: str):
    if kind == "fbp":
        return lambda p, x, t: fbp.mse(fbp.conv2d(p, x, padding="SAME"), t)
    return lambda p, x, t: jnp.mean((ref_conv2d(p, x, 1, "SAME") - t) ** 2)


KINDS = ("fbp", "jax.grad")


def make_step(kind: str, optimizer):
    vg = jax.value_and_grad(loss_fn(kind))

    def step(params, opt_state, x, t):
        value, grads = vg(params, x, t)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return jax.jit(step, donate_argnums=(0, 1))


def conv_step(spec: dict, rounds: int) -> dict:
    params, x, target = conv_problem(**spec)
    optimizer = optax.sgd(1e-3)
    state = {}
    fns, compile_s = {}, {}
    for kind in KINDS:
        step = make_step(kind, optimizer)
        state[kind] = [jax.tree.map(jnp.copy, params), optimizer.init(params)]
        compile_s[kind] = compile_seconds(step, *state[kind], x, target)

        def call(kind=kind, step=step):
            p, s, value = step(*state[kind], x, target)
            state[kind] = [p, s]
            return value

        fns[kind] = call
    reps = {k: auto_repeat(f) for k, f in fns.items()}
    times = paired(fns, rounds=rounds, warmup=2, repeat=reps)
    return {"spec": spec, "compile_s": compile_s,
            "median_s": {k: sorted(v)[len(v) // 2] for k, v in times.items()},
            "fbp_vs_grad": ratio_stats(times["fbp"], times["jax.grad"])}


def dropout_residual(shape=(256, 1024), rate: float = 0.5) -> dict:
    key = jax.random.PRNGKey(1)
    x = jax.random.normal(jax.random.PRNGKey(2), shape, jnp.float32)
    return {"shape": list(shape), "rate": rate,
            "fbp": residuals(lambda x: fbp.dropout(key, x, rate), x),
            "autodiff": residuals(lambda x: ref_dropout(key, x, rate), x)}


def run(quick: bool = False) -> dict:
    spec = QUICK if quick else FULL
    print(f"  conv step {spec}", flush=True)
    return {"conv": conv_step(spec, rounds=3 if quick else 15),
            "dropout": dropout_residual((8, 16) if quick else (256, 1024))}


def _ratio(s: dict) -> str:
    return f"{s['ratio_median']:.3f} [{s['ratio_q1']:.2f}–{s['ratio_q3']:.2f}]"


def report(result: dict) -> str:
    c, d = result["conv"], result["dropout"]
    s = c["spec"]
    name = (f"batch {s['batch']}, {s['hw']}×{s['hw']}×{s['c_in']} → {s['c_out']}, "
            f"{s['k']}×{s['k']} SAME")
    met = c["fbp_vs_grad"]["ratio_median"] <= BOUND
    fb, ad = d["fbp"]["bytes"], d["autodiff"]["bytes"]
    return "\n".join([
        "Conv training step (forward + backward + optax.sgd), float32, jitted, params donated. "
        "Ratio: median of per-round ratios [IQR]; timings on a shared machine are noisy.",
        "",
        table(["case", "fbp", "jax.grad", "fbp / jax.grad", "target", "met",
               "compile s (fbp / grad)"],
              [[name, fmt_time(c["median_s"]["fbp"]), fmt_time(c["median_s"]["jax.grad"]),
                _ratio(c["fbp_vs_grad"]), f"≤ {BOUND}", "met" if met else "missed",
                f"{c['compile_s']['fbp']:.2f} / {c['compile_s']['jax.grad']:.2f}"]]),
        "",
        table(["dropout residual", "fbp bytes", "autodiff bytes", "fbp saves", "autodiff saves",
               "target", "met"],
              [[f"x {tuple(d['shape'])} float32, rate {d['rate']}", fb, ad,
                " ".join(d["fbp"]["arrays"]), " ".join(d["autodiff"]["arrays"]),
                "fbp ≤ 8 bytes (the key)", "met" if fb <= 8 else "missed"]]),
    ])


def targets(result: dict) -> list[dict]:
    c, d = result["conv"], result["dropout"]
    s = c["spec"]
    v = c["fbp_vs_grad"]["ratio_median"]
    return [
        {"target": f"fbp / jax.grad conv step ≤ {BOUND}, batch {s['batch']} "
                   f"{s['hw']}×{s['hw']}×{s['c_in']}→{s['c_out']} {s['k']}×{s['k']} SAME",
         "value": round(v, 3), "met": v <= BOUND},
        {"target": f"dropout residual = the key (8 bytes); autodiff keeps "
                   f"{d['autodiff']['bytes']} bytes", "value": d["fbp"]["bytes"],
         "met": d["fbp"]["bytes"] <= 8},
    ]
