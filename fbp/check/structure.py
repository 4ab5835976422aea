r"""The custom rules a function calls, and its arguments, as ``fbp.check_vjp`` sees them.

``_custom_vjp_calls`` records the outermost ``jax.custom_vjp`` calls of a function (to hold
each rule's own fwd/bwd against its primal inputs: the structure check), or switches every
custom rule off (its undecorated primal code is then the autodiff reference).
"""

from __future__ import annotations

import contextlib
import inspect
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from fbp._diagnose import shape_hint
from fbp._report import Row, _short

# ── the custom_vjp rules f calls: recorded (for the structure check) or switched off ──

@contextlib.contextmanager
def _custom_vjp_calls(record: list | None = None, unwrap: bool = False):
    """Within: record the outermost ``jax.custom_vjp`` calls, or (``unwrap``) make every
    ``jax.custom_vjp`` and ``jax.custom_jvp`` run its undecorated primal code instead."""
    classes = (jax.custom_vjp, jax.custom_jvp) if unwrap else (jax.custom_vjp,)
    originals, depth = [c.__call__ for c in classes], [0]

    def primal(self, *args, **kwargs):
        return self.fun(*args, **kwargs)

    def recording(self, *args, **kwargs):
        if depth[0] == 0 and record is not None:
            record.append((self, args, kwargs))
        depth[0] += 1
        try:
            return originals[0](self, *args, **kwargs)
        finally:
            depth[0] -= 1

    for c in classes:
        c.__call__ = primal if unwrap else recording
    try:
        yield
    finally:
        for c, orig in zip(classes, originals, strict=True):
            c.__call__ = orig


def _primal_of(f):
    """f with every custom rule it calls switched off: JAX's autodiff of the forward code."""
    if isinstance(f, (jax.custom_vjp, jax.custom_jvp)):
        return f.fun

    def primal(*args):
        with _custom_vjp_calls(unwrap=True):
            return f(*args)
    return primal


# ── arguments: array pytrees are differentiated, anything else is held static ──

def _is_dynamic(arg) -> bool:
    leaves = jax.tree_util.tree_leaves(arg)
    return bool(leaves) and all(isinstance(x, (jax.Array, np.ndarray)) for x in leaves)


def _arg_names(f, n: int) -> list[str]:
    try:
        params = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):
        params = []
    names = []
    for i in range(n):
        if i < len(params) and params[i].kind in (params[i].POSITIONAL_ONLY,
                                                  params[i].POSITIONAL_OR_KEYWORD):
            names.append(params[i].name)
        else:
            names.append(f"args[{i}]")
    return names


def _leaf_labels(tree, name: str) -> list[str]:
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [name + jax.tree_util.keystr(p) for p, _ in paths]


def _dtype(x):
    return x.dtype if hasattr(x, "dtype") else jnp.result_type(x)


def _is_float(x) -> bool:
    return x is not None and jnp.issubdtype(_dtype(x), jnp.floating)


def _no_ints(tree):
    """Non-float leaves (float0 cotangents of integer inputs) → None, inside a trace."""
    return jax.tree_util.tree_map(lambda x: x if _is_float(x) else None, tree)


def _float_leaves(tree) -> list:
    """Leaves with None for non-float ones (float0 cotangents of integer inputs)."""
    leaves = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: x is None)
    return [np.asarray(x) if _is_float(x) else None for x in leaves]


def _random_like(rng: np.random.Generator, tree):
    """Standard normal arrays shaped like ``tree`` (drawn by NumPy: nothing to compile)."""
    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(rng.standard_normal(np.shape(x)), _dtype(x)), tree)


def _dtype_of(leaves) -> str:
    floats = [jnp.asarray(x).dtype for x in leaves if _is_float(x)]
    if not floats:
        raise TypeError("check_vjp needs at least one floating-point array argument.")
    return str(max(floats, key=lambda d: float(jnp.finfo(d).eps)))



# ── structure: call each recorded rule's fwd and bwd directly ──

def _fwd_bwd(rule, *pos):
    """The rule's own fwd then bwd (under eval_shape: shapes and structure, nothing run)."""
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
            cts = jax.eval_shape(partial(_fwd_bwd, rule), *pos)
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
