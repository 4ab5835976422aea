r"""Every fbp op with random arguments and an independent reference: ``python -m fbp.check``.

Each ``OpCase`` builds its arguments from a NumPy generator and a dtype, and names a
reference built only from ``jax.nn``, ``optax.losses`` and plain ``jnp`` (never from fbp).
Points are kept away from kinks (|z| ≥ 0.5 for relu and leaky_relu) and from the edges of a
domain (ŷ in [0.2, 0.8] for bce), so that finite differences are meaningful there.
To add an op family, see ``BUILDERS`` and ``EXTENSIONS`` below.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fbp.check.checker import ALL_CHECKS, check_vjp
from fbp.nets import mlp
from fbp.ops import activations, linear, losses, norms
from fbp.ops.linear import Dense

M, N_IN, N_OUT = 3, 4, 5          # batch, features, outputs: small, the check is exhaustive


@dataclass
class OpCase:
    name: str
    fn: object
    make_args: object             # make_args(rng, dtype) -> tuple of arguments
    reference: object
    kwargs: dict = field(default_factory=dict)   # extra check_vjp arguments


def _normal(rng, shape, dtype):
    return jnp.asarray(rng.standard_normal(shape), dtype)


def _off_kink(rng, shape, dtype):
    """|z| in [0.5, 2], random sign: a finite-difference step never crosses 0."""
    return jnp.asarray(rng.choice([-1.0, 1.0], shape) * rng.uniform(0.5, 2.0, shape), dtype)


def _dense_params(rng, dtype, n_in=N_IN, n_out=N_OUT):
    return Dense(_normal(rng, (n_out, n_in), dtype) / float(np.sqrt(n_in)),
                 _normal(rng, (n_out,), dtype))


def _ref_dense(p, x):
    z = x @ p.W.T
    return z + jnp.broadcast_to(p.b, z.shape)


def _standardise(x, axis, eps):
    mu = jnp.mean(x, axis=axis, keepdims=True)
    var = jnp.mean((x - mu) ** 2, axis=axis, keepdims=True)
    return (x - mu) / jnp.sqrt(var + eps)


def _core_cases(ns, p: str = "") -> list:
    """The cases for the core ops of a namespace (fbp's ops, or ``fbp.forward`` with p)."""
    x2 = (M, N_IN)
    return [
        OpCase(p + "sigmoid", ns.sigmoid, lambda r, d: (_normal(r, x2, d),), jax.nn.sigmoid),
        OpCase(p + "tanh", ns.tanh, lambda r, d: (_normal(r, x2, d),), jnp.tanh),
        OpCase(p + "relu", ns.relu, lambda r, d: (_off_kink(r, x2, d),), jax.nn.relu),
        OpCase(p + "leaky_relu", ns.leaky_relu, lambda r, d: (_off_kink(r, x2, d), 0.1),
               lambda z, a: jax.nn.leaky_relu(z, a)),
        OpCase(p + "gelu", ns.gelu, lambda r, d: (_normal(r, x2, d),),
               lambda z: jax.nn.gelu(z, approximate=False)),
        OpCase(p + "gelu(tanh)", ns.gelu, lambda r, d: (_normal(r, x2, d), True),
               lambda z, a: jax.nn.gelu(z, approximate=a)),
        OpCase(p + "softmax", ns.softmax, lambda r, d: (_normal(r, x2, d),),
               lambda z: jax.nn.softmax(z, axis=-1)),
        OpCase(p + "dense", ns.dense, lambda r, d: (_dense_params(r, d), _normal(r, x2, d)),
               _ref_dense),
        OpCase(p + "bce_with_logits", ns.bce_with_logits,
               lambda r, d: (_normal(r, (M, 1), d), jnp.asarray(r.uniform(0, 1, (M, 1)), d)),
               lambda z, y: jnp.mean(optax.losses.sigmoid_binary_cross_entropy(z, y))),
        OpCase(p + "bce", ns.bce,
               lambda r, d: (jnp.asarray(r.uniform(0.2, 0.8, (M, 1)), d),
                             jnp.asarray(r.uniform(0, 1, (M, 1)), d)),
               lambda yh, y: -jnp.mean(y * jnp.log(yh) + (1 - y) * jnp.log1p(-yh))),
        OpCase(p + "softmax_cross_entropy(labels)", ns.softmax_cross_entropy,
               lambda r, d: (_normal(r, x2, d), jnp.asarray(r.integers(0, N_IN, (M,)))),
               lambda z, t: jnp.mean(
                   optax.losses.softmax_cross_entropy_with_integer_labels(z, t))),
        OpCase(p + "softmax_cross_entropy(soft)", ns.softmax_cross_entropy,
               lambda r, d: (_normal(r, x2, d), jnp.asarray(r.dirichlet(np.ones(N_IN), M), d)),
               lambda z, t: jnp.mean(optax.losses.softmax_cross_entropy(z, t))),
        OpCase(p + "mse", ns.mse, lambda r, d: (_normal(r, x2, d), _normal(r, x2, d)),
               lambda yh, y: jnp.mean((yh - y) ** 2)),
    ]


def _affine(params, x_hat):
    gamma, beta = (jnp.broadcast_to(v, x_hat.shape) for v in params)
    return gamma * x_hat + beta


def _norm_cases() -> list:
    def gb(r, d, n=N_IN):
        return (1 + 0.3 * _normal(r, (n,), d), _normal(r, (n,), d))

    def mlp_block(params, x):
        return jnp.tanh(_ref_dense(params, x))

    block = norms.residual(lambda params, x: activations.tanh(linear.dense(params, x)))
    return [
        OpCase("batch_norm", lambda params, x: norms.batch_norm(params, x)[0],
               lambda r, d: (norms.BatchNormParams(*gb(r, d)), _normal(r, (M + 2, N_IN), d)),
               lambda params, x: _affine(params, _standardise(x, 0, 1e-5)),
               {"batch_argnums": ()}),   # batch statistics: no per-example version
        OpCase("layer_norm", norms.layer_norm,
               lambda r, d: (norms.LayerNormParams(*gb(r, d)), _normal(r, (M, N_IN), d)),
               lambda params, x: _affine(params, _standardise(x, -1, 1e-5))),
        OpCase("residual(tanh∘dense)", block,
               lambda r, d: (Dense(*_dense_params(r, d, N_IN, N_IN)), _normal(r, (M, N_IN), d)),
               lambda params, x: x + mlp_block(params, x)),
    ]


def _mlp_cases() -> list:
    def ref(params, x):
        for layer in params[:-1]:
            x = jax.nn.sigmoid(_ref_dense(layer, x))
        return _ref_dense(params[-1], x)

    return [OpCase("mlp(2-4-1, sigmoid)", mlp.mlp, lambda r, d: (
        [_dense_params(r, d, 2, 4), _dense_params(r, d, 4, 1)], _normal(r, (M, 2), d)), ref)]


def _forward_cases() -> list:
    import fbp.forward as forward  # a sibling tool, not below the checker: imported on use
    return _core_cases(forward, "forward.")


# One builder per op family.  A new family writes ``cases() -> list[OpCase]`` in a module of
# its own, ``fbp/check/op_cases_<family>.py`` (importing OpCase and the helpers above from
# here), and adds that module's name to EXTENSIONS: imported on use, so no import cycle.
BUILDERS = [
    lambda: _core_cases(SimpleNamespace(**{**vars(activations), **vars(linear), **vars(losses)})),
    _mlp_cases,
    _norm_cases,
    _forward_cases,
]
EXTENSIONS: list[str] = [
    "fbp.check.op_cases_losses",
    "fbp.check.op_cases_conv",
    "fbp.check.op_cases_recurrent",
    "fbp.check.op_cases_attention",
    "fbp.check.op_cases_vocab",
]


def op_cases() -> list:
    """Every op of fbp's ops, nets and forward twins, with its arguments and reference."""
    builders = BUILDERS + [importlib.import_module(m).cases for m in EXTENSIONS]
    return [case for build in builders for case in build()]


# ── python -m fbp.check ──

def check_case(case: OpCase, n: int, dtype="float64", seed: int = 0, **kwargs):
    """``(case name, VJPReport, seconds)`` for the n-th case of the table."""
    args = case.make_args(np.random.default_rng(seed + n), jnp.dtype(dtype))
    start = time.perf_counter()
    report = check_vjp(case.fn, *args, reference=case.reference, name=case.name,
                       seed=seed + n, **{**case.kwargs, **kwargs})
    return case.name, report, time.perf_counter() - start


def check_all_ops(dtype="float64", seed: int = 0, workers: int | None = None,
                  **kwargs) -> list:
    """``(case name, VJPReport, seconds)`` for every op in the table, in the table's order.

    The cases run in ``workers`` threads (default: one per CPU core).  ``check_vjp`` patches
    nothing, so the threads share nothing but JAX's caches; XLA compiles without holding
    Python's lock, so one case compiles while another traces.  Each case's seconds are its
    own wall time, overlapping the others'.
    """
    cases = list(enumerate(op_cases()))
    workers = max(1, workers or os.cpu_count() or 1)
    if workers == 1:
        return [check_case(case, n, dtype, seed, **kwargs) for n, case in cases]
    with ThreadPoolExecutor(workers) as pool:      # the heavy families last in the table:
        futures = {n: pool.submit(check_case, case, n, dtype, seed, **kwargs)  # start them first
                   for n, case in reversed(cases)}
    return [futures[n].result() for n, _ in cases]


def summary_table(results) -> str:
    """One line per op: the worst relative error of each check, and the verdict."""
    cols = [c for c in ALL_CHECKS if c != "structure"]
    lines = [f"{'op':<46}" + "".join(f"{c:>13}" for c in cols) + f"{'time':>8}  status"]
    for name, report, seconds in results:
        worst = []
        for c in cols:
            rels = [r.rel for r in report.rows if r.check == c and not math.isnan(r.rel)]
            fails = any(r.check == c and r.status == "FAIL" for r in report.rows)
            worst.append("FAIL" if fails and not rels else
                         f"{max(rels):.1e}" if rels else "–")
        lines.append(f"{name:<46}" + "".join(f"{w:>13}" for w in worst)
                     + f"{seconds:>7.1f}s  {'ok' if report.ok else 'FAIL'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python -m fbp.check``: every op in float64 (``--float32``: float32); print the table.

    ``--verbose`` prints every op's full report too.  Returns 1 if any op fails, else 0.
    """
    argv = sys.argv[1:] if argv is None else argv
    dtype = "float32" if "--float32" in argv else "float64"
    jax.config.update("jax_enable_x64", True)
    start = time.perf_counter()
    results = check_all_ops(dtype)
    total = time.perf_counter() - start
    print(f"fbp.check_vjp over {len(results)} ops, {dtype}: worst relative error per check "
          "(structure, autodiff, full Jacobian, finite differences, jit, vmap, rev-over-rev)\n")
    print(summary_table(results))
    failed = [r for _, r, _ in results if not r.ok]
    for report in failed + ([r for _, r, _ in results] if "--verbose" in argv else []):
        print("\n" + str(report))
    print(f"\n{len(results) - len(failed)} of {len(results)} ops pass; {total:.1f} s in all.")
    return 1 if failed else 0
