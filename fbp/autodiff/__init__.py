r"""``fbp.autodiff``: a small reverse- and forward-mode engine over jaxprs, to read.

    loss_value, vjp_fn = fbp.autodiff.vjp(loss, params, x, y)
    params_bar, x_bar, y_bar = vjp_fn(1.0)
    grads = fbp.autodiff.grad(loss)(params, x, y)          # = jax.grad(loss)(params, x, y)
    out, tangent = fbp.autodiff.jvp(f, (x,), (v,))          # = jax.jvp(f, (x,), (v,))

How ``jax.grad`` works, in three files:

rules.py    the table: one hand-written VJP per JAX primitive (add, mul, exp, dot_general,
            reduce_sum, broadcast_in_dim, gather, ...), each a few lines
engine.py   trace → run forward keeping a tape → walk it backwards summing cotangents;
            calls recurse, ``jax.custom_vjp`` ops (all of fbp's) run their own fwd/bwd;
            forward mode transposes the same rules
__init__.py this face: pytrees in and out (params NamedTuples), ``vjp``, ``grad``, ``jvp``
__main__.py ``python -m fbp.autodiff``: the engine on a large plain-jnp network vs jax.grad

It follows the tutorial: §4 the graph is the jaxpr, §3.2 cotangents of a value read twice add,
§7.1 the backward walk is the δ recursion, §11.2 the tape is the cache, §13 forward mode.

Misuse is a named error: ``UnsupportedPrimitiveError`` (no rule in the table), ``ClosureError``
(f reads a traced value another call kept), ``TypeError``/``ValueError`` for bad arguments.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

from fbp.autodiff.engine import (
    UnsupportedPrimitiveError,
    _tangent_zero,
    avals_of,
    backward,
    forward,
    tangents_forward,
)
from fbp.autodiff.rules import NO_GRADIENT, VJP_RULES

__all__ = ["NO_GRADIENT", "VJP_RULES", "ClosureError", "UnsupportedPrimitiveError", "grad",
           "jvp", "trace", "value_and_grad", "vjp"]

_ARRAYS = (jax.Array, np.ndarray, np.generic, bool, int, float, complex)


class ClosureError(TypeError):
    """``f`` reads a value traced inside another call, which that call kept instead of returning."""


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _check_arrays(args, what: str = "args") -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(args)[0]:
        if not isinstance(leaf, _ARRAYS):
            raise TypeError(
                f"{what}{jax.tree_util.keystr(path)} = {leaf!r:.60} ({type(leaf).__name__}) is "
                f"not an array; the engine traces f on arrays (numbers, jnp/np arrays, pytrees "
                f"of them). Pass an array, or close over the value: "
                f"fbp.autodiff.grad(lambda x: f(x, value))(x).")


def _conform(tree, likes, what: str) -> list:
    """The leaves of ``tree`` (cotangents, tangents) in the dtypes of the float values ``likes``
    they pair with, None for integer ones; a leaf of another shape is an error."""
    out = []
    for (path, v), like in zip(jax.tree_util.tree_flatten_with_path(tree)[0], likes,
                               strict=True):
        want = jax.ShapeDtypeStruct(jnp.shape(like), jnp.result_type(like))
        if not isinstance(v, _ARRAYS) or jnp.shape(v) != want.shape:
            got = avals_of([v])[0] if isinstance(v, _ARRAYS) else type(v).__name__
            raise ValueError(f"{what}{jax.tree_util.keystr(path)} is {got}; it must have the "
                             f"shape of the value it pairs with, {want}.")
        out.append(jnp.asarray(v, want.dtype) if _is_float(like) else None)
    return out


@contextlib.contextmanager
def _closure_errors():
    """JAX's UnexpectedTracerError (a leaked tracer reached f), said for the engine's user."""
    try:
        yield
    except jax.errors.UnexpectedTracerError as err:
        raise ClosureError(
            "f reads a value traced inside another fbp.autodiff (or jax) call, which kept it "
            "(in a list, a global, an attribute) instead of returning it; outside that call it "
            "has no value. Return it from that function and pass it to f as an argument.") from err


def trace(f, *args):
    """``f``'s jaxpr on flat leaves, with the pytree structures of its arguments and output."""
    _check_arrays(args)
    leaves, in_tree = jax.tree_util.tree_flatten(args)
    out_tree = []

    def flat_f(*flat):
        out = f(*jax.tree_util.tree_unflatten(in_tree, flat))
        out_leaves, tree = jax.tree_util.tree_flatten(out)
        out_tree.append(tree)
        return out_leaves

    closed = jax.make_jaxpr(flat_f)(*leaves)
    return closed, leaves, in_tree, out_tree[0]


@_closure_errors()
def vjp(f, *args):
    """``(f(*args), vjp_fn)``; ``vjp_fn(ḡ)`` returns the cotangent of each argument.

    Like ``jax.vjp``: ``ḡ`` has the structure of the output, the result is a tuple with the
    structure of ``args``; integer leaves get float0 zeros.  The forward pass runs now (its
    tape is kept); ``vjp_fn`` walks it backwards each time it is called."""
    closed, leaves, in_tree, out_tree = trace(f, *args)
    active = [_is_float(x) for x in leaves]
    outs, _, tape = forward(closed.jaxpr, closed.consts, leaves, active)

    def vjp_fn(g):
        g_tree = jax.tree_util.tree_structure(g)
        if g_tree != out_tree:
            raise ValueError(f"vjp_fn's cotangent must have the output's structure {out_tree}; "
                             f"got {g_tree}.")
        g_leaves = _conform(g, outs, "vjp_fn's cotangent")
        bars = backward(closed.jaxpr, tape, g_leaves)
        bars = [np.zeros(jnp.shape(x), jax.dtypes.float0) if not a
                else jnp.zeros_like(x) if b is None else b
                for x, a, b in zip(leaves, active, bars, strict=True)]
        return tuple(jax.tree_util.tree_unflatten(in_tree, bars))

    return jax.tree_util.tree_unflatten(out_tree, outs), vjp_fn


def _argnums(argnums) -> tuple:
    """``argnums`` as a tuple of ints (jax.grad's convention: an int or a tuple of ints)."""
    nums = (argnums,) if isinstance(argnums, int) else argnums
    if (not isinstance(nums, tuple) or not nums
            or any(isinstance(i, bool) or not isinstance(i, int) for i in nums)):
        raise TypeError(f"argnums must be an int or a non-empty tuple of ints, as for jax.grad; "
                        f"got {argnums!r}.")
    return nums


def value_and_grad(f, argnums=0):
    """``f``'s value and its gradient with respect to ``args[argnums]`` (an int or a tuple)."""
    if not callable(f):
        raise TypeError(f"f must be a function; got {type(f).__name__}. Write "
                        f"fbp.autodiff.grad(f)(x), not fbp.autodiff.grad(f(x)).")
    nums = _argnums(argnums)

    def value_and_grad_f(*args):
        if not all(-len(args) <= i < len(args) for i in nums):
            raise ValueError(f"argnums={argnums!r} must index f's arguments; f was called with "
                             f"{len(args)}. Pass the argument to differentiate, or change argnums.")
        _check_arrays(args)
        for i in nums:
            dtypes = sorted({str(jnp.result_type(x)) for x in jax.tree.leaves(args[i])})
            if dtypes and not any(_is_float(x) for x in jax.tree.leaves(args[i])):
                raise TypeError(
                    f"grad differentiates floating-point arguments; args[{i}] has only "
                    f"{', '.join(dtypes)} leaves. Pass floats (jnp.asarray(x, float)), or use "
                    f"fbp.autodiff.vjp, which gives integer leaves float0 zeros.")
        value, vjp_fn = vjp(f, *args)
        if not isinstance(value, _ARRAYS) or jnp.shape(value) != () or not _is_float(value):
            got = (jax.ShapeDtypeStruct(jnp.shape(value), jnp.result_type(value))
                   if isinstance(value, _ARRAYS) else f"a {type(value).__name__}")
            raise TypeError(f"grad needs f to return a float scalar; it returned {got}. Return "
                            f"the loss alone (reduced with .sum() or .mean()), or use "
                            f"fbp.autodiff.vjp for other outputs.")
        bars = vjp_fn(jnp.ones((), jnp.result_type(value)))        # the seed ∂L/∂L = 1
        if isinstance(argnums, int):
            return value, bars[argnums]
        return value, tuple(bars[i] for i in nums)
    return value_and_grad_f


def grad(f, argnums=0):
    """``jax.grad`` by the engine: the gradient of the scalar ``f`` at ``args[argnums]``."""
    value_and_grad_f = value_and_grad(f, argnums)
    return lambda *args: value_and_grad_f(*args)[1]


@_closure_errors()
def jvp(f, primals, tangents):
    """``(f(*primals), ∂f·tangents)`` by forward mode over the same table (see engine.py)."""
    if not isinstance(primals, (tuple, list)) or not isinstance(tangents, (tuple, list)):
        raise TypeError("jvp takes primals and tangents as tuples (as jax.jvp does); got "
                        f"{type(primals).__name__} and {type(tangents).__name__}.")
    _check_arrays(tuple(primals), "primals")
    closed, leaves, in_tree, out_tree = trace(f, *primals)
    t_tree = jax.tree_util.tree_structure(tuple(tangents))
    if t_tree != in_tree:
        raise ValueError(f"tangents must have the structure of primals {in_tree}; got {t_tree}.")
    ts = _conform(tuple(tangents), leaves, "tangents")
    outs, t_outs = tangents_forward(closed.jaxpr, closed.consts, leaves, ts)
    t_outs = [_tangent_zero(a) if t is None else t                      # float0 for integers
              for a, t in zip(avals_of(outs), t_outs, strict=True)]
    return (jax.tree_util.tree_unflatten(out_tree, outs),
            jax.tree_util.tree_unflatten(out_tree, t_outs))
