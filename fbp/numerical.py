r"""Central-difference derivatives and the relative error (tutorial §10), vectorised.

The tutorial's gradient check perturbs one coordinate at a time in a Python loop with a
fixed ε = 1e-7.  Here every coordinate of every floating leaf of a pytree is perturbed,
``batch_size`` coordinates per step of one ``jax.lax.map``, so 10⁴ parameters take
vectorised work of a second, not 10⁴ Python round trips.  Two central stencils:

    order 2:  f'(x) ≈ [f(x + h) − f(x − h)] / 2h                              error O(h²)
    order 4:  f'(x) ≈ [8(f(x + h) − f(x − h)) − (f(x + 2h) − f(x − 2h))] / 12h   error O(h⁴)

and the step is chosen from the dtype, h_i = ε · max(1, |x_i|), with ε the value that
balances the truncation error against the O(machine ε / h) rounding error of the stencil:
∛(machine ε) for order 2 (6.1e-6 in float64, 4.9e-3 in float32), (machine ε)^{1/5} for
order 4 (7.4e-4, 4.1e-2).  Order 4 is the default: a loss such as the mean BCE carries a
rounding error of a few ulps of its largest *term*, not of its value, and after training
order 2 then bottoms out near 1e-9 relative while order 4 reaches about 1e-11.
The differences are divided by the steps actually taken, (x_i + h_i) − (x_i − h_i).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

# Elements of the perturbed copies held in memory at once: batch_size · n ≤ this.
_CHUNK_ELEMENTS = 1 << 22


def default_eps(dtype, order: int = 4) -> float:
    """The relative step for ``dtype``: ∛(machine ε) for order 2, (machine ε)^{1/5} for order 4.

    Each minimises truncation (h², resp. h⁴) plus rounding (ε/h) error of its stencil.
    """
    return float(np.finfo(np.dtype(dtype)).eps) ** (1.0 / (order + 1))


def _is_float_leaf(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic, float)) and jnp.issubdtype(
        jnp.result_type(x), jnp.floating)


def _ravel(tree, order: int):
    """Float leaves of ``tree`` flattened into one vector; ``unravel`` maps a vector back.

    Non-float leaves (integer labels, booleans) are not perturbed: ``unravel`` keeps them
    as they are and ``cotangent_tree`` puts ``None`` in their place.
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    which = [_is_float_leaf(x) for x in leaves]
    floats = [jnp.asarray(x) for x, w in zip(leaves, which, strict=True) if w]
    if not floats:
        raise ValueError("there is nothing to differentiate: no floating-point leaves.")
    dtype = jnp.result_type(*floats)
    flat = jnp.concatenate([x.astype(dtype).ravel() for x in floats])
    eps = jnp.concatenate([jnp.full((x.size,), default_eps(x.dtype, order), dtype) for x in floats])
    sizes = [x.size for x in floats]
    splits = list(np.cumsum(sizes)[:-1])

    def pieces(v):
        parts = jnp.split(v, splits)
        return [p.reshape(x.shape).astype(x.dtype) for p, x in zip(parts, floats, strict=True)]

    def unravel(v):
        it = iter(pieces(v))
        return treedef.unflatten([next(it) if w else x for x, w in zip(leaves, which, strict=True)])

    def cotangent_tree(v):
        it = iter(pieces(v))
        return treedef.unflatten([next(it) if w else None for w in which])

    return flat, eps, unravel, cotangent_tree


def _tree_vdot(a, b):
    """Σ over leaves of ⟨a, b⟩, computed in the wider of the two dtypes."""
    pairs = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    terms = [jnp.vdot(jnp.asarray(x).ravel(), jnp.asarray(y).ravel()) for x, y in pairs]
    return sum(terms[1:], terms[0]) if terms else jnp.zeros(())


def _held_static(args):
    """The array leaves of ``args`` and ``rebuild``, which puts ``args`` back together from
    them with every other leaf (ints, strings, flags, Python floats) held as it is."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    arr = [isinstance(x, (jax.Array, np.ndarray, np.generic)) for x in leaves]

    def rebuild(dyn):
        it = iter(dyn)
        return treedef.unflatten([next(it) if a else x for x, a in zip(leaves, arr, strict=True)])

    return [x for x, a in zip(leaves, arr, strict=True) if a], rebuild


def _jit_call(fn, *args, compiler_options=None):
    """``fn(*args)`` under one ``jax.jit``: array leaves traced, anything else held static.

    Tracing the held-fixed arguments too keeps value checks in ``f`` (label ranges and the
    like, which only run on concrete values) out of the way of the perturbed evaluations.
    """
    dyn, rebuild = _held_static(args)
    return jax.jit(lambda dyn: fn(*rebuild(dyn)), compiler_options=compiler_options)(dyn)


def numerical_vjp(f, args, cotangent, eps: float | None = None, order: int = 4,
                  batch_size: int | None = None):
    r"""ḡᵀ J by central differences: the VJP of ``f`` at ``args``, with no autodiff.

    For each floating coordinate x_i of the pytree ``args`` (order 2 shown):

        (ḡᵀ J)_i ≈ ⟨ḡ, f(x + h_i e_i) − f(x − h_i e_i)⟩ / ((x_i + h_i) − (x_i − h_i))

    The outputs are differenced element by element before the inner product, so a large
    output does not lose the difference to cancellation.

    Args:
      f: a function of ``*args`` returning any pytree of floating arrays.
      args: a tuple of the arguments of ``f`` (pytrees; integer leaves are held fixed).
      cotangent: ḡ, a pytree shaped like ``f(*args)``.
      eps: the relative step ε, h_i = ε · max(1, |x_i|); default ``default_eps`` of each
        leaf's dtype for ``order``.
      order: 4 (default, five-point stencil) or 2 (the tutorial's two-point stencil).
      batch_size: coordinates perturbed per ``lax.map`` step (default: as many as keep
        about 4·10⁶ perturbed elements in memory).
    Returns:
      a tuple shaped like ``args``: the cotangent of every floating leaf, ``None`` for
      integer leaves.
    """
    if not isinstance(args, tuple):
        raise TypeError(f"args must be a tuple of f's arguments; got {type(args).__name__}.")
    _check_order(order)
    batch_size = _batch_size(args, batch_size)
    return _jit_call(lambda a, ct: _numerical_vjp(f, a, ct, eps, order, batch_size),
                     args, cotangent)


def _check_order(order) -> None:
    if order not in (2, 4) or isinstance(order, bool):
        raise ValueError(f"order must be 2 or 4; got {order!r}.")


def _n_coords(tree) -> int:
    return sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(tree) if _is_float_leaf(x))


def _batch_size(tree, batch_size) -> int:
    """Default: as many coordinates as keep about 4·10⁶ perturbed elements in memory."""
    if batch_size is None:
        n = max(_n_coords(tree), 1)
        return max(1, min(n, _CHUNK_ELEMENTS // n))
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}.")
    return int(batch_size)


def _numerical_vjp(f, args, cotangent, eps=None, order=4, batch_size=None):
    """``numerical_vjp`` without the jit around it (for use inside a traced function)."""
    _check_order(order)
    batch_size = _batch_size(args, batch_size)
    flat, rel_eps, unravel, cotangent_tree = _ravel(args, order)
    if eps is not None:
        rel_eps = jnp.full_like(rel_eps, eps)
    n = flat.size
    h = rel_eps * jnp.maximum(1, jnp.abs(flat))

    def central(i, k):
        """⟨ḡ, f(x + k h_i e_i) − f(x − k h_i e_i)⟩ / (2k h_i as actually taken)."""
        e = jax.nn.one_hot(i, n, dtype=flat.dtype) * (k * h[i])   # no scatter: cheap to compile
        xp, xm = flat + e, flat - e
        diff = jax.tree_util.tree_map(lambda a, b: a - b, f(*unravel(xp)), f(*unravel(xm)))
        return _tree_vdot(cotangent, diff) / ((flat[i] + k * h[i]) - (flat[i] - k * h[i]))

    def directional(i):
        if order == 2:
            return central(i, 1)
        return (4 * central(i, 1) - central(i, 2)) / 3    # Richardson: cancels the h² term

    if batch_size >= n:
        out = jax.vmap(directional)(jnp.arange(n))
    else:
        out = jax.lax.map(directional, jnp.arange(n), batch_size=batch_size)
    return cotangent_tree(out.astype(flat.dtype))


def numerical_grad(f, *args, argnums=0, eps: float | None = None, order: int = 4,
                   batch_size: int | None = None):
    r"""∇f by central differences for a scalar ``f``, shaped like ``jax.grad(f, argnums)``.

    The tutorial's §10 ``compute_numerical_gradient``, for every coordinate of every
    argument in ``argnums`` at once (see ``numerical_vjp`` for the step and chunking).

    Args:
      f: a function returning a scalar.
      *args: its arguments; those not in ``argnums`` are held fixed.
      argnums: an int or a tuple of ints, as for ``jax.grad``.
      eps, order, batch_size: as for ``numerical_vjp``.
    Returns:
      the gradient with respect to ``args[argnums]`` (a tuple of them for a tuple argnums);
      integer leaves get ``None``.
    """
    single = isinstance(argnums, (int, np.integer))
    nums = (argnums,) if single else tuple(argnums)
    if not nums or any(isinstance(i, bool) or not isinstance(i, (int, np.integer))
                       or not -len(args) <= i < len(args) for i in nums):
        raise ValueError(f"argnums must index the {len(args)} arguments; got {argnums!r}.")
    nums = tuple(int(i) % len(args) for i in nums)
    _check_order(order)
    floating = [i for i in nums
                if any(_is_float_leaf(leaf) for leaf in jax.tree_util.tree_leaves(args[i]))]
    if not floating:              # integer arguments beside floating ones just get None
        got = ", ".join(f"args[{i}]: {getattr(args[i], 'dtype', type(args[i]).__name__)}"
                        for i in nums)
        raise ValueError(
            f"argnums={argnums!r} selects no floating-point argument ({got}); numerical_grad "
            f"differentiates floating arguments only (integer ones get None). Point argnums at "
            f"a floating argument, or cast it, e.g. jnp.asarray(args[{nums[0]}], jnp.float64).")

    dyn, rebuild = _held_static(args)                  # strings and flags stay Python values
    value = jax.eval_shape(lambda dyn: f(*rebuild(dyn)), dyn)
    if getattr(value, "shape", None) != ():
        raise ValueError(f"f must return a scalar for numerical_grad; got {value}. "
                         "For a vector output use numerical_vjp with a cotangent.")

    def run(*all_args):
        def f_of(*chosen):
            full = list(all_args)
            for i, a in zip(nums, chosen, strict=True):
                full[i] = a
            return f(*full)

        return _numerical_vjp(f_of, tuple(all_args[i] for i in nums),
                              jnp.ones((), value.dtype), eps, order, batch_size)

    batch_size = _batch_size(tuple(args[i] for i in nums), batch_size)
    grads = _jit_call(run, *args)
    return grads[0] if single else grads


def rel_error(a, b) -> float:
    r"""‖a − b‖ / (‖a‖ + ‖b‖) over all leaves of two pytrees (tutorial §10).

    The norms are Euclidean over every element of every leaf.  0/0 (both all zeros) is
    defined as 0: two zero gradients agree.  ``None`` leaves (no cotangent) are skipped.
    The result lies in [0, 1]; 1 means no agreement at all (e.g. b = −a, or one is zero).
    """
    la = [x for x in jax.tree_util.tree_leaves(a) if x is not None]
    lb = [x for x in jax.tree_util.tree_leaves(b) if x is not None]
    if len(la) != len(lb):
        raise ValueError(f"a and b must have the same leaves; got {len(la)} and {len(lb)}.")
    num = den_a = den_b = 0.0
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.shape != y.shape:
            raise ValueError(f"a and b must have the same leaf shapes; got {x.shape} and "
                             f"{y.shape}.")
        num += float(np.sum((x - y) ** 2))
        den_a += float(np.sum(x * x))
        den_b += float(np.sum(y * y))
    den = math.sqrt(den_a) + math.sqrt(den_b)
    return 0.0 if den == 0.0 else math.sqrt(num) / den
