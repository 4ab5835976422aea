r"""The Jacobian check of ``fbp.check_vjp``: every row of J, or random projections ⟨u, J v⟩.

Small outputs: the rule's VJP of every basis cotangent (and of i·eₖ for a complex output)
against the reference's — by reverse mode, or by forward mode (``jax.jacfwd``) where JAX
cannot reverse the reference (a ``while_loop``).  Large outputs: ⟨u, J v⟩ for random u, v,
u through the rule's VJP and v through forward mode of the reference, with JAX's pairing
Re Σ u·w for complex values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fbp.check.args import _dtype, _is_complex, _leaves, _random_like
from fbp.check.report import _compare
from fbp.check.tasks import Task, cotangent_batch, ref_skip, try_ref


def jacobian_task(g, ref_g, dyn, out, labels, tol, max_rows, n_proj, rng) -> Task:
    out_leaves, out_tree = jax.tree_util.tree_flatten(out)
    sizes = [int(np.size(o)) for o in out_leaves]
    n_out = sum(sizes)
    cplx_out = any(_is_complex(o) for o in out_leaves)
    if n_out * (2 if cplx_out else 1) <= max_rows:
        return _rows_task(g, ref_g, dyn, out_leaves, out_tree, sizes, labels, tol, cplx_out)
    return _projection_task(g, ref_g, dyn, out, labels, tol, n_proj, rng)


def _basis(out_leaves, out_tree, sizes, cplx_out):
    """Every basis cotangent eₖ (and i·eₖ for a complex output), stacked on a new axis 0 of
    each output leaf, built on the host."""
    basis = np.eye(sum(sizes))
    if cplx_out:
        basis = np.concatenate([basis, 1j * basis])
    parts = np.split(basis, list(np.cumsum(sizes)[:-1]), axis=1)
    return out_tree.unflatten([
        jnp.asarray((p if _is_complex(o) else np.real(p)).reshape(len(basis), *np.shape(o)),
                    _dtype(o)) for p, o in zip(parts, out_leaves, strict=True)])


def _rows_task(g, ref_g, dyn, out_leaves, out_tree, sizes, labels, tol, cplx_out) -> Task:
    n_out = sum(sizes)

    def forward_mode(d):
        if any(_is_complex(x) for x in jax.tree_util.tree_leaves(d)) or cplx_out:
            raise TypeError("forward mode covers real functions only")

        def flat(*d):
            return jnp.concatenate([jnp.ravel(o) for o in jax.tree_util.tree_leaves(ref_g(*d))])
        return jax.jacfwd(flat, argnums=tuple(range(len(d))))(*d)

    def fallback(d):     # JAX cannot reverse the reference: its Jacobian by forward mode
        exp = try_ref(task.state, forward_mode, d)
        task.state["forward"] = exp is not None
        return exp

    def both(d, cts):
        return cotangent_batch(g, ref_g, task.state, d, cts, fallback)

    def post(res):
        if res[0] is None:
            return [ref_skip("jacobian", task.state)]
        rows = _compare("jacobian", labels, _leaves(res[0]), _leaves(res[1]), tol, slices=False)
        u = None if cplx_out else np.eye(n_out)
        for j, r in enumerate(rows):
            r.data.update(u=u, tol=tol, leaf=j)
            if task.state.get("forward"):
                r.hints.append("the reference's Jacobian by forward mode: JAX cannot reverse it")
        return rows

    task = Task("jacobian", both, (dyn, _basis(out_leaves, out_tree, sizes, cplx_out)), post,
                vjps=(g, ref_g, fallback))
    return task


def _projection_task(g, ref_g, dyn, out, labels, tol, n_proj, rng) -> Task:
    leaves, treedef = jax.tree_util.tree_flatten(dyn)
    us = _random_like(rng, jax.tree_util.tree_map(
        lambda o: jax.ShapeDtypeStruct((n_proj, *np.shape(o)), _dtype(o)), out))
    vs = [_random_like(rng, jax.ShapeDtypeStruct((n_proj, *np.shape(x)), _dtype(x)))
          for x in leaves]

    def pair(a, b):
        return jnp.real(jnp.sum((a * b).reshape(n_proj, -1), axis=1))

    def projections(d, us, vs):
        d_leaves = jax.tree_util.tree_leaves(d)
        rule_cts = jax.tree_util.tree_leaves(jax.vmap(jax.vjp(g, *d)[1])(us))

        def jvps():
            out = []
            for j, v in enumerate(vs):
                def jvp_ref(vj, j=j):
                    tangents = [vj if i == j else jnp.zeros_like(x)
                                for i, x in enumerate(d_leaves)]
                    return jax.jvp(ref_g, d, tuple(treedef.unflatten(tangents)))[1]
                jv = jax.vmap(jvp_ref)(v)
                out.append(sum(pair(a, b) for a, b in zip(
                    jax.tree_util.tree_leaves(us), jax.tree_util.tree_leaves(jv), strict=True)))
            return out
        return try_ref(task.state, jvps), [pair(c, v) for c, v in zip(rule_cts, vs, strict=True)]

    def post(res):
        if res[0] is None:
            return [ref_skip("jacobian", task.state)]
        return [r for label, e, g_ in zip(labels, res[0], res[1], strict=True)
                for r in _compare("jacobian", [label + " ⟨u,Jv⟩"], [np.asarray(e)],
                                  [np.asarray(g_)], tol, slices=False)]

    task = Task("jacobian", projections, (dyn, us, vs), post)
    return task
