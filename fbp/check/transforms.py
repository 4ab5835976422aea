r"""The transformation checks of ``fbp.check_vjp``: the rule held against itself.

jit            the VJP under ``jax.jit`` equals the eager one.
vmap           several independent draws of the inputs stacked along a NEW leading axis:
               ``jax.vmap`` of the VJP equals a loop over the draws.  Valid for every
               function, whatever its own axes mean.
vmap [per example]   only when ``batch_argnums`` names arguments whose axis 0 is a batch of
               independent examples: the VJP under ``vmap`` over that axis equals a loop.
rev-over-rev   ``jax.grad`` of ⟨w, VJP(x)⟩ against central differences of that VJP.

``alone_task`` is a helper for a hint only: whether each example of axis 0, alone as a batch
of one, agrees with the reference (a rule that mixes the examples of a batch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fbp.check.args import _dtype, _inexact_only, _leaves, _random_like
from fbp.check.fd import fd_vjp
from fbp.check.report import Row, _compare, _short
from fbp.check.tasks import Task, rule_vjp, stack, try_ref


def jit_task(g, dyn, u, eager, labels, tol) -> Task:
    def post(res):
        if task.state.get("eager"):
            return [Row("jit", "(all)", "skip", hints=[
                f"jit skipped: jax.jit refuses f ({task.state['jit_error']}); JAX allows "
                "this eagerly (an array built inside f at a nondiff_argnums position: pass "
                "it as an argument instead), so the other checks ran eagerly"])]
        return _compare("jit", labels, eager, _leaves(res), tol, ref="eager")
    task = Task("jit", rule_vjp(g), (dyn, u), post)
    return task


def _draws(rng, dyn, n: int):
    """Draw 0 is the point itself; the others scale each element by 1 ± 5 % (signs and
    domains such as (0, 1) or x > 0 survive)."""
    def jitter(x):                # on the host: no primitive of jnp compiled for a draw
        k = rng.uniform(-0.05, 0.05, np.shape(x))
        return (np.asarray(x) * (1 + k)).astype(_dtype(x))
    return stack([dyn] + [jax.tree_util.tree_map(jitter, dyn) for _ in range(n - 1)])


def vmap_task(g, dyn, out, labels, tol, rng, n_draws: int) -> Task:
    draws = _draws(rng, dyn, n_draws)
    us = _random_like(rng, jax.tree_util.tree_map(
        lambda o: jax.ShapeDtypeStruct((n_draws, *np.shape(o)), _dtype(o)), out))
    rule = rule_vjp(g)

    def both(ds, us):
        if task.state.get("eager"):     # jit refuses f, and lax.map would trace it
            at = [jax.tree_util.tree_map(lambda x, k=k: x[k], (ds, us)) for k in range(n_draws)]
            loop = stack([rule(*du) for du in at])
        else:
            loop = jax.lax.map(lambda du: rule(*du), (ds, us))
        return jax.vmap(rule)(ds, us), loop

    task = Task("vmap", both, (draws, us), lambda res: _compare(
        "vmap", labels, _leaves(res[1]), _leaves(res[0]), tol, ref="a loop"),
        why="vmap of the VJP over a new axis of independent draws: ")
    return task


def _example(args, f, batched, keep):
    """``f`` at example i of axis 0 of every batched argument (held arrays sliced too)."""
    def cut(x, i):
        x1 = jax.lax.dynamic_slice_in_dim(x, i, 1, axis=0)
        return x1 if keep else x1[0]

    def at(i):
        def held(k, x):
            return cut(x, i) if k in batched and np.ndim(x) >= 1 else x
        g_i = args.bind(f, held=held)

        def take(d):
            return tuple(jax.tree_util.tree_map(lambda x: cut(x, i), a) if k in batched else a
                         for k, a in enumerate(d))
        return g_i, take
    return at


def batch_candidates(args, batch_argnums):
    """Positions whose axis 0 is the batch: given, or (for the hint) the highest-rank
    array argument and every other one of its leading size; None when there is none."""
    arrays = [k for k, a in enumerate(args.pos) if isinstance(a, (jax.Array, np.ndarray))
              and np.ndim(a) >= 1 and jax.tree_util.tree_leaves(args.dyn[k])]
    if batch_argnums is None:
        if not arrays:
            return None
        lead = max(arrays, key=lambda k: (np.ndim(args.pos[k]), -k))
        cand = [k for k in arrays if np.shape(args.pos[k])[0] == np.shape(args.pos[lead])[0]]
    else:
        cand = [int(k) for k in np.atleast_1d(np.asarray(batch_argnums, int))]
    sizes = {np.shape(jax.tree_util.tree_leaves(args.pos[k])[0])[0] for k in cand
             if jax.tree_util.tree_leaves(args.pos[k])}
    if not cand or len(sizes) != 1 or next(iter(sizes)) < 2:
        return None
    return cand, next(iter(sizes))


PER_EXAMPLE_WHY = ("the VJP fails on a single example (axis 0 of the batch_argnums arguments "
                   "taken away): ")


def per_example_task(f, args, cand, labels, tol, rng) -> Task:
    """The per-example vmap check; raises at once where ``f`` cannot even be traced on a
    single example (its output's shape is needed to draw the cotangents)."""
    batched, m = cand
    at = _example(args, f, batched, False)
    g0, take0 = at(0)
    out_one = jax.eval_shape(g0, *take0(args.dyn))
    us = _random_like(rng, jax.tree_util.tree_map(
        lambda o: jax.ShapeDtypeStruct((m, *o.shape), o.dtype), out_one))

    def one(d, i, u):
        g_i, take = at(i)
        return _inexact_only(jax.vjp(g_i, *take(d))[1](u))

    def both(d, us):
        vm = jax.vmap(one, in_axes=(None, 0, 0))(d, jnp.arange(m), us)
        loop = jax.lax.map(lambda iu: one(d, *iu), (jnp.arange(m), us))
        return vm, loop

    # the cotangents of one example, put back at their place in the batch
    def post(res):
        return _compare("vmap", [lab + " [per example]" for lab in labels], _leaves(res[1]),
                        _leaves(res[0]), tol, ref="a loop")
    return Task("vmap", both, (args.dyn, us), post, why=PER_EXAMPLE_WHY)


def alone_task(f, ref, args, cand, labels, tol, rng, alone: list) -> Task:
    batched, m = cand
    n = min(m, 4)
    at = _example(args, f, batched, True)
    at_ref = _example(args, ref, batched, True)
    g0, take0 = at(0)
    us = _random_like(rng, jax.tree_util.tree_map(
        lambda o: jax.ShapeDtypeStruct((n, *o.shape), o.dtype),
        jax.eval_shape(g0, *take0(args.dyn))))

    def each(d, us):
        def one(iu):
            (g_i, take), (r_i, _) = at(iu[0]), at_ref(iu[0])
            di = take(d)
            return (_inexact_only(jax.vjp(r_i, *di)[1](iu[1])),
                    _inexact_only(jax.vjp(g_i, *di)[1](iu[1])))
        return jax.lax.map(one, (jnp.arange(n), us))

    def post(res):
        e, r = _leaves(res[0]), _leaves(res[1])
        alone.append(all(row.status == "ok" for k in range(n) for row in _compare(
            "alone", labels, [None if x is None else x[k] for x in e],
            [None if x is None else x[k] for x in r], tol)))
        return []
    return Task("alone", each, (args.dyn, us), post, quiet=True)


def rev_over_rev_task(g, dyn, u, labels, tol, eps, rng, kinks: dict) -> Task:
    """jax.grad of ⟨w, VJP(x)⟩ against central differences of that first-order VJP."""
    ws = [_random_like(rng, c) for c in jax.tree_util.tree_leaves(dyn)]   # shaped like x̄

    def h_of(u, ws):
        def h(*d):
            leaves = jax.tree_util.tree_leaves(jax.vjp(g, *d)[1](u))
            return sum(jnp.sum(jnp.real(w * c)) for w, c in zip(ws, leaves, strict=True))
        return h

    def both(d, u, ws):
        h = h_of(u, ws)
        got = try_ref(task.state, lambda: jax.grad(h, argnums=tuple(range(len(d))))(*d))
        real = jnp.result_type(*[jnp.real(w).dtype for w in ws])   # h's dtype, untraced
        exp = fd_vjp(h, tuple(d), jnp.ones((), real), eps)
        return exp, got

    def post(res):
        if res[1] is None:
            return [Row("rev-over-rev", "(all)", "skip", hints=[
                "rev-over-rev skipped: JAX cannot differentiate the rule's VJP a second time "
                f"({_short(task.state['ref_error'])})"])]
        rows = _compare("rev-over-rev", labels, _leaves(res[0]), _leaves(res[1]), tol,
                        ref="finite differences")
        for j, r in enumerate(rows):
            r.data.update(u=np.ones(1), tol=tol, leaf=j)
        return rows

    kinks["rev-over-rev"] = lambda: (h_of(u, ws), [1.0])
    task = Task("rev-over-rev", both, (dyn, u, ws), post)
    return task
