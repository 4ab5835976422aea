r"""Arguments as ``fbp.check_vjp`` sees them, leaf by leaf.

Every leaf of every argument (positional and keyword) is sorted on its own:

differentiated   floating and complex arrays, and Python floats/complex numbers (as arrays
                 of the arguments' dtype) — unless ``f`` refuses them traced (a float at a
                 ``nondiff_argnums`` position, a value checked in Python): then they are held.
held             everything else: integer and boolean arrays (labels, masks), typed PRNG keys,
                 Python ints and bools, callables, dtypes, strings, None; and every leaf of
                 an argument at a ``nondiff_argnums`` position of ``f`` itself (a
                 ``custom_vjp``/``custom_jvp``), float arrays too: JAX never traces those.

So a dict ``{"scale": 0.5, "name": "x"}`` has one differentiated leaf and one held one; the
held ones are closed over, never traced.  ``Args.bind(fn)`` is ``fn`` as a function of the
differentiated parts alone (a tuple with one pytree per argument, ``None`` at held leaves),
and its outputs keep only their inexact leaves (integer outputs have no cotangent).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np


def _dtype(x):
    return x.dtype if hasattr(x, "dtype") else jnp.result_type(x)


def _is_inexact(x) -> bool:
    return x is not None and jnp.issubdtype(_dtype(x), jnp.inexact)


def _is_complex(x) -> bool:
    return x is not None and jnp.issubdtype(_dtype(x), jnp.complexfloating)


def _inexact_only(tree):
    """Non-inexact leaves (integer outputs, float0 cotangents) → None."""
    return jax.tree_util.tree_map(lambda x: x if _is_inexact(x) else None, tree)


def _leaves(tree) -> list:
    """Leaves as NumPy arrays, None for non-inexact ones (one entry per labelled leaf: the
    cotangents JAX returns have the structure of the differentiated parts)."""
    return [np.asarray(x) if _is_inexact(x) else None for x in jax.tree_util.tree_leaves(tree)]


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


def _random_like(rng: np.random.Generator, tree):
    """Standard normal arrays shaped like ``tree`` (complex: both parts); drawn by NumPy."""
    def one(x):
        shape, dtype = np.shape(x), _dtype(x)
        v = rng.standard_normal(shape)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            v = (v + 1j * rng.standard_normal(shape)) / np.sqrt(2)
        return jnp.asarray(v, dtype)
    return jax.tree_util.tree_map(one, tree)


def _precision(dtype) -> str:
    """The real dtype whose rounding a (possibly complex) dtype carries."""
    return str(jnp.finfo(dtype).dtype)


def _is_python_number(x) -> bool:
    return isinstance(x, (float, complex)) and not isinstance(x, bool)


def _nondiff_args(f, n_pos: int, kwargs) -> frozenset:
    """Indexes (positional arguments, then keyword ones) of the arguments at the
    ``nondiff_argnums`` positions of ``f``, a keyword one by its place in the signature."""
    nondiff = set(getattr(f, "nondiff_argnums", None) or ())
    if not nondiff:
        return frozenset()
    try:
        params = list(inspect.signature(f).parameters)
    except (TypeError, ValueError):
        params = []
    by_name = {n_pos + j for j, key in enumerate(kwargs)
               if key in params and params.index(key) in nondiff}
    return frozenset({k for k in range(n_pos) if k in nondiff} | by_name)


def _diff_leaf(x) -> bool:
    if isinstance(x, (jax.Array, np.ndarray, np.generic)):
        return jnp.issubdtype(x.dtype, jnp.inexact)
    return _is_python_number(x)


@dataclass
class Args:
    """The arguments of ``f``, split into differentiated leaves and held ones."""

    pos: tuple
    kw: dict
    names: list                    # one per argument: positional names, then kwargs keys
    dyn: tuple = ()                # one pytree per argument: its differentiated leaves
    labels: list = field(default_factory=list)
    held_floats: bool = False      # Python floats held (f refuses them traced)
    held_args: frozenset = frozenset()   # arguments at f's nondiff_argnums: held whole

    @classmethod
    def of(cls, f, args, kwargs, hold_floats=False) -> Args:
        a = cls(tuple(args), dict(kwargs), _arg_names(f, len(args)) + list(kwargs))
        a.held_floats = hold_floats
        a.held_args = _nondiff_args(f, len(a.pos), a.kw)
        for arg, name in zip(a._all(), a.names, strict=True):
            for lab, x in zip(_leaf_labels(arg, name), jax.tree_util.tree_leaves(arg),
                              strict=True):
                if isinstance(x, np.ndarray) and x.dtype == np.dtype(object):
                    raise TypeError(
                        f"{lab} is a NumPy array of dtype object; check_vjp needs numeric "
                        "arrays (floating ones to differentiate).  Convert it, e.g. "
                        f"np.asarray({lab}, dtype=np.float64).")
        arrays = [x for k, arg in enumerate(a._all()) for x in jax.tree_util.tree_leaves(arg)
                  if a._differentiated(k, x) and not _is_python_number(x)]
        real = [_precision(x.dtype) for x in arrays]
        widest = max(real, key=lambda d: -float(jnp.finfo(d).eps)) if real else str(
            jnp.asarray(0.0).dtype)
        dyn = []
        for k, arg in enumerate(a._all()):
            leaves, tree = jax.tree_util.tree_flatten(arg)
            dyn.append(tree.unflatten([a._as_array(x, widest) if a._differentiated(k, x)
                                       else None for x in leaves]))
        a.dyn = tuple(dyn)
        a.labels = [lab for d, n in zip(a.dyn, a.names, strict=True)
                    for lab in _leaf_labels(d, n)]
        return a

    def _all(self) -> list:
        return [*self.pos, *self.kw.values()]

    def _differentiated(self, k: int, x) -> bool:
        """Whether leaf ``x`` of argument ``k`` is differentiated."""
        return (k not in self.held_args and _diff_leaf(x)
                and not (self.held_floats and _is_python_number(x)))

    @staticmethod
    def _as_array(x, real_dtype):
        if not _is_python_number(x):
            return x
        if isinstance(x, complex):
            return jnp.asarray(x, jnp.result_type(real_dtype, jnp.complex64))
        return jnp.asarray(x, real_dtype)

    @property
    def has_python_floats(self) -> bool:
        return any(_is_python_number(x) and self._differentiated(k, x)
                   for k, arg in enumerate(self._all()) for x in jax.tree_util.tree_leaves(arg))

    @property
    def held(self) -> list:
        """Labels of the held leaves that look like data (for the report's notes)."""
        out = []
        for k, (arg, name) in enumerate(zip(self._all(), self.names, strict=True)):
            for path, x in jax.tree_util.tree_flatten_with_path(arg)[0]:
                if not self._differentiated(k, x) and (
                        isinstance(x, (jax.Array, np.ndarray)) or _is_python_number(x)):
                    out.append(name + jax.tree_util.keystr(path))
        return out

    def full(self, d, held=None) -> tuple[list, dict]:
        """The positional and keyword arguments with the differentiated leaves ``d``
        (and each held array leaf x of argument k replaced by ``held(k, x)``)."""
        full = []
        for k, (arg, part) in enumerate(zip(self._all(), d, strict=True)):
            leaves, tree = jax.tree_util.tree_flatten(arg)
            it = iter(jax.tree_util.tree_leaves(part))
            full.append(tree.unflatten([
                next(it) if self._differentiated(k, x) else
                held(k, x) if held is not None and isinstance(x, (jax.Array, np.ndarray))
                else x for x in leaves]))
        n = len(self.pos)
        return full[:n], dict(zip(self.kw, full[n:], strict=True))

    def bind(self, fn, held=None):
        """``fn`` of the differentiated parts; outputs keep only their inexact leaves."""
        def g(*d):
            pos, kw = self.full(d, held)
            return _inexact_only(fn(*pos, **kw))
        return g

    def dtype(self) -> str:
        """The dtype of the checks: the coarsest rounding among the differentiated leaves."""
        real = [_precision(_dtype(x)) for x in jax.tree_util.tree_leaves(self.dyn)]
        if not real:
            raise TypeError("check_vjp needs at least one floating-point array argument.")
        return max(real, key=lambda d: float(jnp.finfo(d).eps))
