r"""Forward mode for any hand-written reverse rule: the JVP as the transpose of the VJP.

A ``jax.custom_vjp`` op runs in reverse mode only (``jax.jvp`` and ``jax.jacfwd`` raise on
it).  Its rule ``ḡ ↦ Jᵀ ḡ`` is linear in ḡ, so it has a transpose, and that transpose is the
forward rule::

    VJP:  ḡ ↦ Jᵀ ḡ          (the hand-written bwd)
    JVP:  ẋ ↦ J ẋ = (Jᵀ)ᵀ ẋ   (``jax.linear_transpose`` of the bwd)

``transposed(op)`` wraps an op in a ``jax.custom_jvp`` whose tangent is exactly that: the
op's own hand-written rule, transposed by JAX — no second derivation to get wrong, and the
identity ⟨ḡ, J ẋ⟩ = ⟨Jᵀ ḡ, ẋ⟩ holds by construction (tests hold it against ``jax.jvp`` of an
independent reference).  Integer arguments (labels, ids), keys and keyword options are held
fixed; only floating-point array leaves get tangents (a Python float is an option, like
leaky_relu's α, and is held fixed too).  Tutorial §13: forward and reverse mode
are one linear map read in two directions.

    conv_fwd = fbp.transposed(fbp.conv2d)
    y, y_dot = jax.jvp(lambda x: conv_fwd(params, x, stride=2), (x,), (x_dot,))

The twin works under ``jax.jit``, ``jax.vmap``, ``jax.jvp`` and ``jax.jacfwd``; reverse mode of
the twin is JAX's transpose of the transposed rule, i.e. the hand-written rule again.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _is_float_leaf(x) -> bool:
    """Floating-point arrays get tangents; Python numbers (options such as α) are held fixed."""
    return isinstance(x, (jax.Array, np.ndarray)) and bool(jnp.issubdtype(x.dtype, jnp.inexact))


def transposed(op):
    """``op`` with a forward-mode rule: the transpose of its hand-written VJP.

    Args:
      op: any function whose differentiable work happens in ``jax.custom_vjp`` rules (an fbp
        op, a network of them, or your own ``custom_vjp``).
    Returns:
      A function with ``op``'s signature, ``jax.custom_jvp`` over the floating-point array
      leaves of its positional arguments; other leaves and keyword arguments are held fixed.
    """

    @functools.wraps(op)
    def twin(*args, **kwargs):
        leaves, treedef = jax.tree_util.tree_flatten(args)
        is_float = [_is_float_leaf(x) for x in leaves]
        floats = [x for x, f in zip(leaves, is_float) if f]
        fixed = [x for x, f in zip(leaves, is_float) if not f]

        def call(*float_leaves):
            it_f, it_o = iter(float_leaves), iter(fixed)
            full = [next(it_f) if f else next(it_o) for f in is_float]
            return op(*jax.tree_util.tree_unflatten(treedef, full), **kwargs)

        fn = jax.custom_jvp(call)

        @fn.defjvp
        def _jvp(primals, tangents):
            out, vjp_fn = jax.vjp(call, *primals)
            (out_dot,) = jax.linear_transpose(vjp_fn, out)(tuple(tangents))
            return out, out_dot

        return fn(*floats)

    return twin
