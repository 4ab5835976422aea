r"""The structure check of ``fbp.check_vjp``: each rule's fwd and bwd called on their own.

For ``f`` itself a ``jax.custom_vjp``, its ``fwd`` and ``bwd`` are called directly (under
``jax.eval_shape``: shapes only) with the arguments as JAX passes them: the
``nondiff_argnums`` ones held as they are (callables, dtypes, ints, arrays — never traced),
the others traced, wrapped in ``CustomVJPPrimal`` when the rule has ``symbolic_zeros=True``.
A cotangent of the wrong structure, shape or dtype is then named by argument.  For a function
that calls rules, each outermost ``custom_vjp_call`` of its jaxpr is differentiated alone,
and JAX's own complaint, if any, is the row.  ``output_rows`` holds fwd's primal output
against the primal function's (JAX silently uses fwd's when differentiating).
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import CustomVJPPrimal

from fbp.check.args import _arg_names, _dtype, _is_inexact, _leaf_labels, _leaves
from fbp.check.diagnose import shape_hint
from fbp.check.reference import bind_eqn, custom_rules, rule_name
from fbp.check.report import Row, _short


def _zero_cotangent(o):
    if _is_inexact(o):
        return jnp.zeros(np.shape(o), _dtype(o))
    return np.zeros(np.shape(o), jax.dtypes.float0)


def _traced(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray))


def _direct_rows(rule, args, kwargs, names) -> list:
    """fwd then bwd of the rule ``f`` itself, on its own arguments."""
    try:
        bound = inspect.signature(rule.fun).bind(*args, **kwargs)
        bound.apply_defaults()
        pos = list(bound.args)
        nondiff = tuple(rule.nondiff_argnums)
        diff = [i for i in range(len(pos)) if i not in nondiff]
        trees = [jax.tree_util.tree_flatten(pos[i]) for i in diff]
        traced = [[x for x in leaves if _traced(x)] for leaves, _ in trees]

        def fwd_bwd(traced):
            full = list(pos)
            for i, (leaves, tree), t in zip(diff, trees, traced, strict=True):
                it = iter(t)
                full[i] = tree.unflatten([next(it) if _traced(x) else x for x in leaves])
            fwd_args = list(full)
            if rule.symbolic_zeros:
                for i in diff:
                    fwd_args[i] = jax.tree_util.tree_map(
                        lambda x: CustomVJPPrimal(x, _is_inexact(x)), full[i])
            out, res = rule.fwd(*fwd_args)
            ct = jax.tree_util.tree_map(_zero_cotangent, out)
            return rule.bwd(*[full[i] for i in nondiff], res, ct)

        cts = jax.eval_shape(fwd_bwd, traced)
    except Exception as err:  # noqa: BLE001 — reported, not raised
        return [Row("structure", "(rule)", "FAIL", hints=[_short(err)])]
    if not isinstance(cts, (tuple, list)) or len(cts) != len(diff):
        got = (f"{type(cts).__name__} of length {len(cts)}"
               if isinstance(cts, (tuple, list)) else type(cts).__name__)
        return [Row("structure", "(all)", "FAIL", hints=[
            f"bwd returned a {got}; it must return a tuple with one cotangent per "
            f"differentiable argument ({', '.join(names[i] for i in diff)})"])]
    bad = []
    for i, ct in zip(diff, cts, strict=True):
        if ct is None:
            continue
        primal_leaves, treedef = jax.tree_util.tree_flatten(pos[i])
        try:
            ct_leaves = treedef.flatten_up_to(ct)
        except (ValueError, TypeError):
            bad.append(Row("structure", names[i], "FAIL", hints=[
                f"cotangent structure {jax.tree_util.tree_structure(ct)} does not match "
                f"the input's {treedef}"]))
            continue
        for label, p, c in zip(_leaf_labels(pos[i], names[i]), primal_leaves, ct_leaves,
                               strict=True):
            problem = _leaf_problem(p, c)
            if problem:
                bad.append(Row("structure", label, "FAIL", hints=[problem]))
    return bad or [Row("structure", "(all)", "ok")]


def _inner_rows(g, dyn) -> list:
    """Each outermost custom_vjp_call of ``g``'s jaxpr, differentiated on its own."""
    rows = []
    for eqn in custom_rules(jax.make_jaxpr(g)(*dyn).jaxpr):
        label = f"{rule_name(eqn)}: (all)"
        avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in eqn.invars]

        n_consts = eqn.params.get("num_consts", 0)   # constants the rule closes over

        def one(*xs, eqn=eqn, n_consts=n_consts):
            consts = xs[:n_consts]
            outs, vjp = jax.vjp(lambda *r: bind_eqn(eqn, *consts, *r), *xs[n_consts:])
            return vjp([_zero_cotangent(o) for o in outs])
        try:
            jax.eval_shape(one, *avals)
            rows.append(Row("structure", label, "ok"))
        except Exception as err:  # noqa: BLE001 — JAX's own complaint is the row
            rows.append(Row("structure", label, "FAIL", hints=[_short(err)]))
    return rows


def structure_rows(f, args, g) -> tuple[list, list]:
    """(rows, notes) of the structure check of ``f`` at ``args`` (an ``Args``)."""
    if isinstance(f, jax.custom_vjp):
        return _direct_rows(f, args.pos, args.kw, _arg_names(f.fun, len(args.pos))), []
    try:
        rows = _inner_rows(g, args.dyn)
    except Exception as err:  # noqa: BLE001 — JAX runs f eagerly only
        return [Row("structure", "(all)", "skip", hints=[
            "structure skipped: f cannot be traced to a jaxpr, so its rules cannot be found "
            f"({_short(err)})"])], []
    if not rows:
        name = getattr(f, "__name__", type(f).__name__)
        return [], [f"{name} calls no jax.custom_vjp: nothing for the structure check"]
    return rows, []


def output_rows(primal_out, fwd_out, tol) -> list:
    """fwd's primal output against the primal function's, leaf by leaf."""
    p, q = _leaves(primal_out), _leaves(fwd_out)
    if len(p) != len(q):
        return [Row("structure", "(output)", "FAIL", hints=[
            f"fwd returns {len(q)} output leaves, the primal function {len(p)}"])]
    for a, b in zip(p, q, strict=True):
        if a is None or b is None:
            continue
        if a.shape != b.shape:
            return [Row("structure", "(output)", "FAIL", hints=[
                f"fwd's primal output has shape {b.shape}, the primal function's {a.shape}"])]
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        diff = np.where(same, 0.0, np.abs(a - b)).astype(np.float64)
        diff = np.where(np.isnan(diff), np.inf, diff)
        scale = np.abs(a).astype(np.float64)
        if np.any(diff > tol[1] + tol[0] * np.where(np.isfinite(scale), scale, 0.0)):
            k = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.ndim else ()
            return [Row("structure", "(output)", "FAIL", hints=[
                f"fwd's primal output differs from the primal function's (at {tuple(map(int, k))}"
                f": fwd {b[k]!r}, primal {a[k]!r}); JAX uses fwd's output whenever f is "
                "differentiated and the primal function's otherwise"])]
    return []


def _leaf_problem(p, c) -> str:
    if c is None:
        return ""
    try:
        p_aval = jax.typeof(p)
    except TypeError:
        return ""
    c_shape, c_dtype = tuple(c.shape), _dtype(c)
    if not jnp.issubdtype(p_aval.dtype, jnp.inexact):
        if c_dtype == jax.dtypes.float0:
            return ""
        return (f"the input is {p_aval.dtype} (not differentiable) but the rule returned "
                f"{c_dtype}{list(c_shape)}; return None for it (JAX silently discards this)")
    if c_shape != p_aval.shape:
        return (f"cotangent shape {c_shape} for an input of shape {p_aval.shape}: "
                f"{shape_hint(c_shape, p_aval.shape)}")
    if c_dtype != p_aval.dtype and not (p_aval.weak_type and jnp.issubdtype(
            c_dtype, jnp.inexact)):
        return (f"cotangent dtype {c_dtype} for a {p_aval.dtype} input (JAX accepts it "
                "silently, but the gradient changes precision)")
    return ""
