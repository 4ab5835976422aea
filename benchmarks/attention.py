"""Attention and a GPT step: fbp's recomputing rule against autodiff of the naive form.

* ``flash``  loss + grads of causal attention, batch 1, 4 heads, T = 4,096, d = 64, float32:
             ``fbp.flash_attention`` against ``jax.grad`` of the naive softmax attention
             (``jax.nn.softmax`` of the masked q kᵀ, it keeps the (T, T) probabilities), and
             against the same under ``jax.checkpoint``.  Temp bytes from XLA's compiled
             ``memory_analysis``; times paired (``benchmarks._timing``).  Also fbp's textbook
             ``attention`` (saves P, like autodiff) and flash without the causal mask (every
             block visited: the time that skipping the blocks above the diagonal saves).
* ``scaling`` temp bytes of loss + grads against T = 512 … 16,384, compiled from
             ``jax.ShapeDtypeStruct``s (nothing runs), with the fitted log-log slope.
* ``gpt``    a GPT training step (d_model 256, 4 layers, 4 heads, T = 256, batch 16,
             vocab 512, optax.adamw): ``jax.value_and_grad(fbp.gpt_loss)`` against
             ``jax.value_and_grad`` of a plain-jnp GPT (tests/_gpt_reference.py).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks._timing import fmt_time, paired, ratio_stats, table
from benchmarks.steps import stateful
from fbp.ops.attention import attention
from fbp.ops.flash_attention import flash_attention

FLASH = {"heads": 4, "T": 4096, "d": 64, "block_size": 256}
SCALING_T = [512, 1024, 2048, 4096, 8192, 16384]
QUICK_T, QUICK_SCALING_T = 1024, [512, 1024, 2048]


def naive_attention(q, k, v):
    """Causal softmax attention in plain jnp: autodiff keeps the (T, T) probabilities."""
    s = jnp.einsum("...td,...sd->...ts", q, k) / np.sqrt(q.shape[-1]).astype(q.dtype)
    s = jnp.where(jnp.tril(jnp.ones(s.shape[-2:], bool)), s, -jnp.inf)
    return jnp.einsum("...ts,...se->...te", jax.nn.softmax(s, axis=-1), v)


def attention_kinds(block_size: int) -> dict:
    return {
        "flash": partial(flash_attention, causal=True, block_size=block_size),
        "naive": naive_attention,
        "checkpoint": jax.checkpoint(naive_attention),
        "textbook": partial(attention, causal=True),
        "flash, not causal": partial(flash_attention, causal=False, block_size=block_size),
    }


def loss_and_grads(f):
    """(q, k, v, g) ↦ (⟨g, f(q, k, v)⟩, (q̄, k̄, v̄)): one forward and one backward."""
    return jax.jit(jax.value_and_grad(lambda q, k, v, g: jnp.vdot(g, f(q, k, v)), (0, 1, 2)))


def temp_bytes(f, shape, dtype=jnp.float32) -> int:
    sd = jax.ShapeDtypeStruct(shape, dtype)
    compiled = loss_and_grads(f).lower(sd, sd, sd, sd).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def run_flash(T: int, rounds: int) -> dict:
    shape = (1, FLASH["heads"], T, FLASH["d"])
    kinds = attention_kinds(FLASH["block_size"])
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    args = [jax.random.normal(k, shape, jnp.float32) for k in keys]
    temps = {name: temp_bytes(f, shape) for name, f in kinds.items()}
    fns = {name: partial(loss_and_grads(f), *args) for name, f in kinds.items()}
    times = paired(fns, rounds=rounds, warmup=1)
    return {"T": T, "shape": list(shape), "block_size": FLASH["block_size"], "temp": temps,
            "times": {n: ratio_stats(t, times["naive"]) for n, t in times.items()}}


def run_scaling(Ts) -> dict:
    kinds = attention_kinds(FLASH["block_size"])
    temps = {name: [temp_bytes(kinds[name], (1, FLASH["heads"], T, FLASH["d"])) for T in Ts]
             for name in ("flash", "naive", "checkpoint")}
    slopes = {name: float(np.polyfit(np.log(Ts), np.log(v), 1)[0]) for name, v in temps.items()}
    return {"T": list(Ts), "temp": temps, "slope": slopes}


def run(quick: bool = False) -> dict:
    T = QUICK_T if quick else FLASH["T"]
    result = {"quick": quick, "flash": run_flash(T, rounds=2 if quick else 3)}
    result["scaling"] = run_scaling(QUICK_SCALING_T if quick else SCALING_T)
    case = {**GPT_CASE, **(QUICK_GPT if quick else {})}
    result["gpt"] = run_gpt(case, rounds=3 if quick else 5)
    return result


def report(result: dict) -> str:
    f = result["flash"]
    rows = [(name, f"{f['temp'][name] / 2**20:.1f} MiB",
             f"{f['temp'][name] / f['temp']['naive']:.3f}", fmt_time(t["a_median_s"]),
             f"{t['ratio_median']:.2f} [{t['ratio_q1']:.2f}, {t['ratio_q3']:.2f}]")
            for name, t in f["times"].items()]
    out = [f"causal attention, loss + grads, shape {tuple(f['shape'])}, float32, "
           f"block {f['block_size']} (times noisy on a shared machine):", "",
           table(["kind", "temp", "temp / naive", "time", "time / naive [IQR]"], rows)]
    s = result["scaling"]
    rows = [(T, *(f"{s['temp'][n][i] / 2**20:.1f}" for n in s["temp"]))
            for i, T in enumerate(s["T"])]
    rows.append(("log-log slope", *(f"{s['slope'][n]:.2f}" for n in s["temp"])))
    out += ["", "temp MiB against T (compiled only):", "",
            table(["T", *s["temp"]], rows)]
    g = result["gpt"]
    c = g["case"]
    rows = [(name, f"{g['temp'][name] / 2**20:.1f} MiB",
             f"{g['temp'][name] / g['temp']['jax.grad']:.3f}", fmt_time(t["a_median_s"]),
             f"{t['ratio_median']:.2f} [{t['ratio_q1']:.2f}, {t['ratio_q3']:.2f}]")
            for name, t in g["times"].items()]
    out += ["", f"GPT adamw step: d_model {c['d_model']}, {c['n_layers']} layers, "
            f"{c['n_heads']} heads, T {c['T']}, batch {c['batch']}, vocab {c['vocab']}, "
            "float32:", "",
            table(["kind", "temp", "temp / jax.grad", "time", "time / jax.grad [IQR]"], rows)]
    return "\n".join(out)


def targets(result: dict) -> list[dict]:
    f, s = result["flash"], result["scaling"]
    T = f["T"]
    mem = f["temp"]["flash"] / f["temp"]["naive"]
    ckpt = f["temp"]["flash"] / f["temp"]["checkpoint"]
    time = f["times"]["flash"]["ratio_median"]
    return [
        {"target": f"flash temp ≤ 1/10 of naive autodiff, T={T}", "value": round(mem, 4),
         "met": mem <= 0.1},
        {"target": f"flash temp < naive under jax.checkpoint, T={T}", "value": round(ckpt, 4),
         "met": ckpt < 1},
        {"target": f"flash time ≤ 1.0× naive autodiff, T={T}", "value": round(time, 3),
         "met": time <= 1.0},
        {"target": f"flash temp log-log slope ≤ 1.2, T={s['T'][0]}…{s['T'][-1]}",
         "value": round(s["slope"]["flash"], 3), "met": s["slope"]["flash"] <= 1.2},
        *_gpt_targets(result["gpt"]),
    ]


def _gpt_targets(g: dict) -> list[dict]:
    time = g["times"]["fbp (flash)"]["ratio_median"]
    mem = g["temp"]["fbp (flash)"] / g["temp"]["jax.grad"]
    name = f"GPT step d_model {g['case']['d_model']}, T {g['case']['T']}"
    return [{"target": f"fbp / jax.grad time ≤ 1.05, {name}", "value": round(time, 3),
             "met": time <= 1.05},
            {"target": f"fbp / jax.grad temp ≤ 1.0, {name}", "value": round(mem, 3),
             "met": mem <= 1.0}]


# ── a GPT training step ──

GPT_CASE = {"vocab": 512, "d_model": 256, "n_heads": 4, "n_layers": 4, "T": 256, "batch": 16}
QUICK_GPT = {"vocab": 64, "d_model": 32, "n_layers": 1, "T": 32, "batch": 2}


def gpt_step(kind: str, n_heads: int, optimizer):
    """A jitted, donated adamw step of fbp's GPT (``flash``/``textbook`` attention) or of
    ``jax.grad`` of the plain-jnp reference GPT."""
    from fbp.nets.transformer import gpt_loss
    from tests._gpt_reference import reference_gpt_loss
    loss = {"fbp (flash)": partial(gpt_loss, n_heads=n_heads, flash=True),
            "fbp (textbook)": partial(gpt_loss, n_heads=n_heads, flash=False),
            "jax.grad": partial(reference_gpt_loss, n_heads=n_heads)}[kind]

    def step(params, opt_state, ids, targets):
        value, grads = jax.value_and_grad(loss)(params, ids, targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return jax.jit(step, donate_argnums=(0, 1))


def run_gpt(case: dict, rounds: int) -> dict:
    from fbp.nets.transformer import init_gpt
    params = init_gpt(jax.random.PRNGKey(0), case["vocab"], case["d_model"], case["n_heads"],
                      case["n_layers"], case["T"], jnp.float32)
    ids = jax.random.randint(jax.random.PRNGKey(1), (case["batch"], case["T"] + 1), 0,
                             case["vocab"])
    ids, targets = ids[:, :-1], ids[:, 1:]
    optimizer = optax.adamw(1e-3)
    opt_state = optimizer.init(params)
    fns, temps = {}, {}
    for kind in ("fbp (flash)", "fbp (textbook)", "jax.grad"):
        step = gpt_step(kind, case["n_heads"], optimizer)
        compiled = step.lower(params, opt_state, ids, targets).compile()
        temps[kind] = int(compiled.memory_analysis().temp_size_in_bytes)
        fns[kind] = stateful(step, params, opt_state, ids, targets)
    times = paired(fns, rounds=rounds, warmup=2)
    return {"case": case, "temp": temps,
            "times": {n: ratio_stats(t, times["jax.grad"]) for n, t in times.items()}}
