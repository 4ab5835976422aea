"""The cost of a numerical gradient against backprop (tutorial §10), at 10², 10³, 10⁴ params.

A central-difference gradient evaluates the loss twice per parameter (2P forward passes);
backprop gets all P derivatives for about the cost of two more.  Both run jitted: the
numerical side is ``fbp.numerical.numerical_grad`` with the tutorial's two-point stencil
when that module is present (its perturbations vectorised in chunks by ``lax.map``),
else a local ``central_difference_grad``; the backprop side is ``jax.grad`` of
``fbp.mlp_loss``, which runs fbp's hand-written rules.  Networks: 10-h-1 tanh MLPs with a
mean-squared-error loss at batch 32, h = 8, 83, 833 (97, 997, 9,997 parameters).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

import fbp
from benchmarks._timing import auto_repeat, compile_seconds, fmt_time, paired, table

HIDDEN = (8, 83, 833)
N_IN, BATCH = 10, 32

try:  # the library's own numerical gradient, when the checkout has it
    from fbp.numerical import numerical_grad as _library_numerical_grad
except ImportError:  # pragma: no cover - depends on the checkout
    _library_numerical_grad = None


def central_difference_grad(f, params, eps: float = 1e-3, chunk: int = 256):
    """∂f/∂θ_i ≈ [f(θ + ε e_i) − f(θ − ε e_i)] / 2ε for every parameter i (traceable)."""
    flat, unravel = ravel_pytree(params)

    def one(i):
        e = jnp.zeros_like(flat).at[i].set(eps)
        return (f(unravel(flat + e)) - f(unravel(flat - e))) / (2 * eps)

    return unravel(jax.lax.map(one, jnp.arange(flat.size), batch_size=min(chunk, flat.size)))


def numerical_fn(loss):
    if _library_numerical_grad is not None:
        return lambda p: _library_numerical_grad(loss, p, order=2)
    return lambda p: central_difference_grad(loss, p)


def problem(hidden: int):
    k_p, k_x, k_y = jax.random.split(jax.random.PRNGKey(0), 3)
    params = fbp.init_mlp(k_p, [N_IN, hidden, 1], scheme="xavier")
    x = jax.random.normal(k_x, (BATCH, N_IN))
    y = jax.random.normal(k_y, (BATCH, 1))
    return params, (lambda p: fbp.mlp_loss(p, x, y, "tanh", "mse"))


def rel_error(a, b) -> float:
    a, b = ravel_pytree(a)[0], ravel_pytree(b)[0]
    return float(jnp.linalg.norm(a - b) / (jnp.linalg.norm(a) + jnp.linalg.norm(b)))


def run(quick: bool = False) -> dict:
    rows = []
    for hidden in HIDDEN[:2] if quick else HIDDEN:
        params, loss = problem(hidden)
        n_params = int(ravel_pytree(params)[0].size)
        numerical = jax.jit(numerical_fn(loss))
        backprop = jax.jit(jax.grad(loss))
        compile_s = {"numerical": compile_seconds(numerical, params),
                     "backprop": compile_seconds(backprop, params)}
        err = rel_error(numerical(params), backprop(params))  # also the warm-up call
        fns = {"numerical": lambda f=numerical, p=params: f(p),
               "backprop": lambda f=backprop, p=params: f(p)}
        reps = {"numerical": 1 if hidden == HIDDEN[-1] else auto_repeat(fns["numerical"], 0.005),
                "backprop": auto_repeat(fns["backprop"], 0.005)}
        times = paired(fns, rounds=3, warmup=0, repeat=reps)
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        rows.append({"params": n_params, "hidden": hidden, "median_s": med,
                     "ratio": med["numerical"] / med["backprop"], "compile_s": compile_s,
                     "rel_error": err, "times_s": times})
    source = ("fbp.numerical.numerical_grad (order 2)" if _library_numerical_grad is not None
              else "benchmarks.numgrad.central_difference_grad")
    return {"rows": rows, "numerical": source}


def report(r: dict) -> str:
    rows = [[x["params"], fmt_time(x["median_s"]["numerical"]), fmt_time(x["median_s"]["backprop"]),
             f"{x['ratio']:.0f}×", f"{x['rel_error']:.1e}"] for x in r["rows"]]
    return "\n".join([
        f"Numerical gradient ({r['numerical']}, float32, jitted) against backprop "
        "(jax.grad of fbp.mlp_loss), 10-h-1 tanh MLP, MSE, batch 32.",
        "",
        table(["params", "numerical", "backprop", "numerical / backprop",
               "relative difference"], rows),
    ])


def targets(r: dict) -> list[dict]:
    return []
