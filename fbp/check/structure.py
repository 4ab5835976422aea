r"""The structure check of ``fbp.check_vjp``: each recorded rule's own fwd and bwd called
directly, so a cotangent of the wrong structure, shape or dtype is named by argument."""

from __future__ import annotations

import inspect
from functools import partial

import jax
import jax.numpy as jnp

from fbp.check.args import _arg_names, _dtype, _leaf_labels
from fbp.check.diagnose import shape_hint
from fbp.check.report import Row, _short

# ── structure: call each recorded rule's fwd and bwd directly ──

def _fwd_bwd(rule, static, *dyn):
    """The rule's own fwd then bwd (under eval_shape: shapes and structure, nothing run).

    ``static`` maps positions to the non-array ``nondiff_argnums`` values (a vocabulary
    size, an ε): they reach the rule as the Python values it was called with, not traced."""
    dyn = list(dyn)
    pos = [static[i] if i in static else dyn.pop(0) for i in range(len(static) + len(dyn))]
    out, res = rule.fwd(*pos)
    ct = jax.tree_util.tree_map(lambda o: jnp.zeros(o.shape, _dtype(o)), out)
    return rule.bwd(*[pos[i] for i in rule.nondiff_argnums], res, ct)


def _structure_rows(record, f, f_names) -> list:
    rows = []
    for rule, args, kwargs in record:
        prefix = "" if rule is f else f"{getattr(rule, '__name__', 'rule')}: "
        try:
            pos = inspect.signature(rule.fun).bind(*args, **kwargs).args
            names = f_names if rule is f else _arg_names(rule.fun, len(pos))
            nondiff = tuple(rule.nondiff_argnums)
            static = {i: pos[i] for i in nondiff if not isinstance(pos[i], jax.Array)}
            cts = jax.eval_shape(partial(_fwd_bwd, rule, static),
                                 *[p for i, p in enumerate(pos) if i not in static])
        except Exception as err:  # noqa: BLE001 — reported, not raised
            rows.append(Row("structure", prefix + "(rule)", "FAIL", hints=[_short(err)]))
            continue
        diff = [i for i in range(len(pos)) if i not in nondiff]
        if not isinstance(cts, (tuple, list)) or len(cts) != len(diff):
            got = (f"{type(cts).__name__} of length {len(cts)}"
                   if isinstance(cts, (tuple, list)) else type(cts).__name__)
            rows.append(Row("structure", prefix + "(all)", "FAIL", hints=[
                f"bwd returned a {got}; it must return a tuple with one cotangent per "
                f"differentiable argument ({', '.join(names[i] for i in diff)})"]))
            continue
        bad = []
        for i, ct in zip(diff, cts, strict=True):
            if ct is None:
                continue
            primal_leaves, treedef = jax.tree_util.tree_flatten(pos[i])
            try:
                ct_leaves = treedef.flatten_up_to(ct)
            except (ValueError, TypeError):
                bad.append(Row("structure", prefix + names[i], "FAIL", hints=[
                    f"cotangent structure {jax.tree_util.tree_structure(ct)} does not match "
                    f"the input's {treedef}"]))
                continue
            leaf_labels = _leaf_labels(pos[i], names[i])
            for label, p, c in zip(leaf_labels, primal_leaves, ct_leaves, strict=True):
                problem = _leaf_problem(p, c)
                if problem:
                    bad.append(Row("structure", prefix + label, "FAIL", hints=[problem]))
        rows += bad or [Row("structure", prefix + "(all)", "ok")]
    return rows


def _leaf_problem(p, c) -> str:
    if c is None:
        return ""
    p_aval, c_shape, c_dtype = jax.typeof(p), tuple(c.shape), _dtype(c)
    if not jnp.issubdtype(p_aval.dtype, jnp.inexact):
        if c_dtype == jax.dtypes.float0:
            return ""
        return (f"the input is {p_aval.dtype} (not differentiable) but the rule returned "
                f"{c_dtype}{list(c_shape)}; return None for it (JAX silently discards this)")
    if c_shape != p_aval.shape:
        return (f"cotangent shape {c_shape} for an input of shape {p_aval.shape}: "
                f"{shape_hint(c_shape, p_aval.shape)}")
    if c_dtype != p_aval.dtype:
        return (f"cotangent dtype {c_dtype} for a {p_aval.dtype} input (JAX accepts it "
                "silently, but the gradient changes precision)")
    return ""
