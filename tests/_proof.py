"""The four-way proof every fbp op goes through, shared by the per-module tests.

An ``Op`` names the public fbp function, an independent reference built only from JAX's
own differentiable primitives (``jax.nn``, ``optax.losses``, plain ``jnp``), a maker of
arguments, which arguments are differentiated, and which carry a per-example batch axis.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


@dataclass(frozen=True)
class Op:
    name: str
    f: Callable
    ref: Callable
    make: Callable            # make(key, batch_shape, n) -> tuple of args
    diff: tuple = (0,)        # argnums that carry gradients
    batched: tuple = field(default=(0,))  # argnums with a per-example leading axis

    def __repr__(self):
        return self.name


def rel_err(a, b) -> float:
    """‖a − b‖ / (‖a‖ + ‖b‖) over pytrees, 0 when both are 0 (computed in NumPy)."""
    fa, fb = (np.concatenate([np.ravel(np.asarray(l, np.float64)) for l in jax.tree.leaves(t)]
                             or [np.zeros(0)]) for t in (a, b))
    num, den = np.linalg.norm(fa - fb), np.linalg.norm(fa) + np.linalg.norm(fb)
    return 0.0 if den == 0 else float(num / den)


def restrict(fn, args, argnums):
    """``fn`` as a function of the arguments in ``argnums`` only (the rest closed over)."""
    def g(*diff_args):
        full = list(args)
        for i, a in zip(argnums, diff_args):
            full[i] = a
        return fn(*full)
    return g, tuple(args[i] for i in argnums)


def cotangent(key, out):
    return jax.random.normal(key, jnp.shape(out), jnp.result_type(out))


def vjp(fn, primals, g):
    return jax.vjp(fn, *primals)[1](g)


def central_vjp(fn, primals, g, rel_step=1e-6):
    """⟨g, J e_i⟩ for every input coordinate i, by central differences (float64)."""
    flat, unravel = ravel_pytree(primals)
    h = rel_step * jnp.maximum(1.0, jnp.abs(flat))

    def directional(i):
        e = jnp.zeros_like(flat).at[i].set(h[i])
        up, down = fn(*unravel(flat + e)), fn(*unravel(flat - e))
        return jnp.sum(g * (up - down)) / (2 * h[i])

    return unravel(jax.jit(jax.vmap(directional))(jnp.arange(flat.size)))


def vjp_vs_reference(op, args, key):
    f, primals = restrict(op.f, args, op.diff)
    ref, _ = restrict(op.ref, args, op.diff)
    g = cotangent(key, f(*primals))
    return rel_err(*jax.jit(lambda p, g: (vjp(f, p, g), vjp(ref, p, g)))(primals, g))


def jacobian_vs_jacrev(op, args):
    """jacrev of the public op runs every basis cotangent through the custom rule."""
    f, primals = restrict(op.f, args, op.diff)
    ref, _ = restrict(op.ref, args, op.diff)
    argnums = tuple(range(len(primals)))
    both = jax.jit(lambda p: (jax.jacrev(f, argnums)(*p), jax.jacrev(ref, argnums)(*p)))
    return rel_err(*both(primals))


def vjp_vs_finite_differences(op, args, key):
    f, primals = restrict(op.f, args, op.diff)
    g = cotangent(key, f(*primals))
    return rel_err(jax.jit(lambda p, g: vjp(f, p, g))(primals, g), central_vjp(f, primals, g))


def jit_vs_eager(op, args, key):
    f, primals = restrict(op.f, args, op.diff)
    g = cotangent(key, f(*primals))
    eager = vjp(f, primals, g)
    jitted = jax.jit(lambda p, g: vjp(f, p, g))(primals, g)
    return rel_err(eager, jitted)


def vmap_vs_loop(op, args, key):
    """Per-example VJPs under vmap equal a Python loop over the examples."""
    m = args[op.batched[0]].shape[0]
    in_axes = tuple(0 if i in op.batched else None for i in range(len(args)))

    def one(*example_args):
        f, primals = restrict(op.f, example_args, op.diff)
        out, pullback = jax.vjp(f, *primals)
        return pullback(jnp.ones_like(out))

    vmapped = jax.jit(jax.vmap(one, in_axes=in_axes))(*args)
    one = jax.jit(one)
    looped = [one(*[a[i] if ax == 0 else a for a, ax in zip(args, in_axes)]) for i in range(m)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *looped)
    return rel_err(vmapped, stacked)


def uses_custom_rule(op, args) -> bool:
    return "custom_vjp_call" in str(jax.make_jaxpr(op.f)(*args))


def residual_bytes(fn, args, argnums) -> int:
    """Bytes the VJP closure holds for the backward pass (its array leaves)."""
    f, primals = restrict(fn, args, argnums)
    _, pullback = jax.vjp(f, *primals)
    return sum(l.nbytes for l in jax.tree.leaves(pullback) if hasattr(l, "nbytes"))


def assert_proven(op, args, *, tight=1e-12, fd=1e-8, seed=3):
    """The Jacobian, finite-difference, jit, vmap and own-rule checks of one op at ``args``."""
    assert jacobian_vs_jacrev(op, args) <= tight
    assert vjp_vs_finite_differences(op, args, jax.random.PRNGKey(seed)) <= fd
    assert jit_vs_eager(op, args, jax.random.PRNGKey(seed + 1)) <= 1e-14
    assert vmap_vs_loop(op, args, jax.random.PRNGKey(seed + 2)) <= 1e-14
    assert uses_custom_rule(op, args)
