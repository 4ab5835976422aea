"""``python -m fbp.autodiff [--layers 48] [--width 256]``: the engine on a large plain-jnp net.

A pre-norm residual MLP written in plain ``jnp`` (layer norm, gelu, log-softmax cross-entropy),
so that every equation of its jaxpr goes through the engine's table rather than an fbp rule.
Prints its parameter and equation counts and the largest difference between the engine's
gradient and ``jax.grad``'s, in float64.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from fbp.autodiff import grad


def residual_mlp(params, head, x, labels):
    h = x
    for W, b, gamma, beta in params:
        mu = h.mean(-1, keepdims=True)
        var = ((h - mu) ** 2).mean(-1, keepdims=True)
        n = (h - mu) / jnp.sqrt(var + 1e-5) * gamma[None] + beta[None]
        h = h + jax.nn.gelu(n @ W.T + b[None])
    logp = jax.nn.log_softmax(h @ head.T)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def count_equations(jaxpr) -> int:
    """Equations, those inside calls included."""
    total = 0
    for eqn in jaxpr.eqns:
        total += 1
        for key in ("jaxpr", "call_jaxpr"):
            if key in eqn.params and not eqn.primitive.name.startswith("custom_"):
                sub = eqn.params[key]
                total += count_equations(getattr(sub, "jaxpr", sub))
    return total


def positive_int(text: str) -> int:
    """argparse type: an int ≥ 1 (a net needs a layer and a feature)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1; got {text!r}")
    return n


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=positive_int, default=48)
    parser.add_argument("--width", type=positive_int, default=256)
    args = parser.parse_args(argv)
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.PRNGKey(0), args.layers + 2)
        d = args.width
        params = [(jax.random.normal(k, (d, d)) / np.sqrt(d), jnp.zeros(d), jnp.ones(d),
                   jnp.zeros(d)) for k in keys[:args.layers]]
        head = jax.random.normal(keys[-2], (10, d)) / np.sqrt(d)
        x = jax.random.normal(keys[-1], (32, d))
        labels = jnp.arange(32) % 10
        inputs = (params, head, x, labels)
        n_params = sum(a.size for a in jax.tree.leaves((params, head)))
        n_eqns = count_equations(jax.make_jaxpr(residual_mlp)(*inputs).jaxpr)
        t0 = time.perf_counter()
        mine = jax.jit(grad(residual_mlp, (0, 1)))(*inputs)
        seconds = time.perf_counter() - t0
        ref = jax.jit(jax.grad(residual_mlp, (0, 1)))(*inputs)
        diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                   zip(jax.tree.leaves(mine), jax.tree.leaves(ref), strict=True))
        scale = max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(ref))
    print(f"{args.layers}-layer residual MLP, width {d}: {n_params:,} parameters, {n_eqns:,} "
          f"equations; fbp.autodiff vs jax.grad max |Δ| {diff:.1e} (largest entry "
          f"{scale:.2g}); trace + compile + run {seconds:.1f} s")
    return {"parameters": n_params, "equations": n_eqns, "max_diff": diff, "scale": scale}


if __name__ == "__main__":
    main()
