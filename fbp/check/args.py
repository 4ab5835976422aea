r"""Arguments as ``fbp.check_vjp`` sees them: array pytrees are differentiated, anything
else is held static; labels, dtypes and random draws shaped like them."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np

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
