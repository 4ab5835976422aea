r"""The table: one hand-written VJP per JAX primitive.

A rule is ``rule(g, out, *xs, **params) -> (x̄₁, x̄₂, …)``: the cotangent ``g`` of the
primitive's output, the output ``out`` itself (the forward pass kept it: exp, tanh, σ, √ and
the max reductions read their derivative off it, the tutorial's §11.2 caching), the inputs
``xs`` and the equation's params (axes, shapes, dimension numbers).  It returns one cotangent
per input, ``None`` where an input gets none (an integer index, a boolean mask).
Multiple-result primitives (``split``) get the list of their outputs' cotangents as ``g``.

Every rule is linear in ``g`` — it is the transpose of the primitive's Jacobian, applied to
``g`` without ever forming it (§9.2: x̄ has x's shape).  The engine (``engine.py``) derives
forward mode from this same table by transposing each rule (``jax.linear_transpose``).

``NO_GRADIENT`` lists the primitives whose outputs carry no derivative at all: comparisons,
integer results, and the piecewise-constant ones (floor, sign, stop_gradient).
"""

from __future__ import annotations

import inspect
import math

import jax.numpy as jnp
import numpy as np
from jax import lax

VJP_RULES: dict = {}


def rule(*names):
    """Register the decorated function as the VJP of each primitive in ``names``."""
    def register(fn):
        for name in names:
            VJP_RULES[name] = fn
        return fn
    return register


def apply_rule(name: str, g, out, xs, params: dict):
    """Call the rule of primitive ``name``, passing only the params its signature names."""
    fn = VJP_RULES[name]
    accepted = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        params = {k: v for k, v in params.items() if k in accepted}
    return fn(g, out, *xs, **params)


def unbroadcast(t, like):
    """Sum ``t`` down to ``like``'s shape (a rank-0 operand of a binary op was broadcast)."""
    shape = jnp.shape(like)
    if t.shape == shape:
        return t
    lead = t.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and t.shape[lead + i] != 1)
    return t.sum(axes).reshape(shape)


def _cast(t, like):
    """``t`` in ``like``'s dtype; a complex ``t`` for a real ``like`` keeps its real part (the
    transpose of x ↦ x + 0i)."""
    if jnp.iscomplexobj(t) and not jnp.iscomplexobj(like):
        t = jnp.real(t)
    return t.astype(jnp.result_type(like))


# ── elementwise, one input: x̄ = ḡ ⊙ f'(x) ──

@rule("neg")
def _neg(g, out, x):
    return (-g,)


@rule("exp")
def _exp(g, out, x):
    return (g * out,)                       # (eˣ)' = eˣ: the output is the derivative


@rule("exp2")
def _exp2(g, out, x):
    return (g * out * math.log(2.0),)


@rule("expm1")
def _expm1(g, out, x):
    return (g * (out + 1),)


@rule("log")
def _log(g, out, x):
    return (g / x,)


@rule("log1p")
def _log1p(g, out, x):
    return (g / (1 + x),)


@rule("tanh")
def _tanh(g, out, x):
    return (g * (1 - out * out),)           # tanh' = 1 − tanh²


@rule("logistic")
def _logistic(g, out, x):
    return (g * out * (1 - out),)           # σ' = σ(1 − σ)


@rule("sin")
def _sin(g, out, x):
    return (g * jnp.cos(x),)


@rule("cos")
def _cos(g, out, x):
    return (-g * jnp.sin(x),)


@rule("sqrt")
def _sqrt(g, out, x):
    return (g / (2 * out),)                 # (√x)' = 1 / (2√x)


@rule("rsqrt")
def _rsqrt(g, out, x):
    return (g * (-0.5) * out / x,)          # (x^{−½})' = −½ x^{−½} / x


@rule("erf")
def _erf(g, out, x):
    return (g * (2 / math.sqrt(math.pi)) * jnp.exp(-x * x),)


@rule("abs")
def _abs(g, out, x):
    if jnp.iscomplexobj(x):                 # d|z| = Re(z̄ dz) / |z|: x̄ = ḡ z̄ / |z| (0 at z = 0)
        return (g * jnp.conj(x) / jnp.where(out == 0, 1, out),)
    return (jnp.where(x >= 0, g, -g),)      # |x|' = sign(x), and 1 at the kink (as JAX)


@rule("square")
def _square(g, out, x):
    return (g * 2 * x,)


@rule("integer_pow")
def _integer_pow(g, out, x, *, y):
    return (jnp.zeros_like(g) if y == 0 else g * y * lax.integer_pow(x, y - 1),)


@rule("convert_element_type")
def _convert(g, out, x, **params):
    return (_cast(g, x) if jnp.issubdtype(jnp.result_type(x), jnp.inexact) else None,)


@rule("copy", "reduce_precision")
def _identity(g, out, x, **params):
    return (g,)


@rule("optimization_barrier")
def _optimization_barrier(gs, outs, *xs):
    return tuple(gs)                        # several values pass through unchanged


# ── elementwise, two inputs (a rank-0 operand is broadcast: unbroadcast sums it back) ──

@rule("add", "add_any")
def _add(g, out, x, y):
    return unbroadcast(g, x), unbroadcast(g, y)


@rule("sub")
def _sub(g, out, x, y):
    return unbroadcast(g, x), unbroadcast(-g, y)


@rule("mul")
def _mul(g, out, x, y):
    return unbroadcast(g * y, x), unbroadcast(g * x, y)


@rule("div")
def _div(g, out, x, y):
    return unbroadcast(g / y, x), unbroadcast(-g * x / (y * y), y)


def _pick(g, x, y, mine):
    """max/min: the cotangent goes to the input that won; a tie splits it in halves (as JAX)."""
    share = jnp.where(mine, 1.0, jnp.where(x == y, 0.5, 0.0)).astype(g.dtype)
    return g * share


@rule("max")
def _max(g, out, x, y):
    return unbroadcast(_pick(g, x, y, x > y), x), unbroadcast(_pick(g, x, y, y > x), y)


@rule("min")
def _min(g, out, x, y):
    return unbroadcast(_pick(g, x, y, x < y), x), unbroadcast(_pick(g, x, y, y < x), y)


@rule("pow")
def _pow(g, out, x, y):
    # ∂xʸ/∂x = y x^{y−1} (0 where y = 0), ∂xʸ/∂y = xʸ log x (log 1 = 0 where x = 0, as JAX)
    dx = jnp.where(y == 0, 0.0, y * jnp.power(x, y - 1))
    dy = out * jnp.log(jnp.where(x == 0, 1.0, x))
    return unbroadcast(g * dx, x), unbroadcast(g * dy, y)


@rule("atan2")
def _atan2(g, out, x, y):
    r2 = x * x + y * y
    return unbroadcast(g * y / r2, x), unbroadcast(-g * x / r2, y)


@rule("select_n")
def _select_n(g, out, which, *cases):
    # out = cases[which]: each case gets ḡ where it was the one chosen
    return (None, *(unbroadcast(jnp.where(which == i, g, 0.0).astype(g.dtype), c)
                    for i, c in enumerate(cases)))


@rule("clamp")
def _clamp(g, out, lo, x, hi):
    # JAX's conventions at the kinks: x gets ḡ strictly between the bounds, a bound only
    # where x is strictly past it (lo also needs lo < hi); at x = lo or x = hi no one does
    return (unbroadcast(jnp.where((x < lo) & (lo < hi), g, 0.0), lo),
            jnp.where((lo < x) & (x < hi), g, 0.0),
            unbroadcast(jnp.where(x > hi, g, 0.0), hi))


# ── linear algebra ──

@rule("dot_general")
def _dot_general(g, out, a, b, *, dimension_numbers, **params):
    # Name every axis with a letter; out's axes are (batch, a's free, b's free).  Then
    # ā = einsum(out, b → a) and b̄ = einsum(a, out → b): contracted axes are summed back in.
    (ca, cb), (ba, bb) = dimension_numbers
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    sa = [next(letters) for _ in range(a.ndim)]
    sb = [""] * b.ndim
    for i, j in zip((*ca, *ba), (*cb, *bb), strict=True):
        sb[j] = sa[i]
    sb = [s or next(letters) for s in sb]
    so = ([sa[i] for i in ba] + [sa[i] for i in range(a.ndim) if i not in (*ca, *ba)]
          + [sb[j] for j in range(b.ndim) if j not in (*cb, *bb)])
    sa, sb, so = "".join(sa), "".join(sb), "".join(so)
    a_bar = jnp.einsum(f"{so},{sb}->{sa}", g, b, precision=lax.Precision.HIGHEST)
    b_bar = jnp.einsum(f"{sa},{so}->{sb}", a, g, precision=lax.Precision.HIGHEST)
    return _cast(a_bar, a), _cast(b_bar, b)


# ── reductions and scans ──

@rule("reduce_sum")
def _reduce_sum(g, out, x, *, axes, **params):
    return (jnp.broadcast_to(jnp.expand_dims(g, axes), x.shape),)   # Σ fans ḡ back out


def _reduce_extremum(g, out, x, axes):
    # the cotangent goes to the maximal entries, shared equally between ties (as JAX)
    hit = (x == jnp.expand_dims(out, axes)).astype(g.dtype)
    return (hit * jnp.expand_dims(g / hit.sum(axes), axes),)


@rule("reduce_max")
def _reduce_max(g, out, x, *, axes, **params):
    return _reduce_extremum(g, out, x, axes)


@rule("reduce_min")
def _reduce_min(g, out, x, *, axes, **params):
    return _reduce_extremum(g, out, x, axes)


@rule("cumsum")
def _cumsum(g, out, x, *, axis, reverse):
    return (lax.cumsum(g, axis, reverse=not reverse),)   # the transpose runs the other way


# ── shapes: move the cotangent back where the value came from ──

@rule("broadcast_in_dim")
def _broadcast_in_dim(g, out, x, *dyn, shape, broadcast_dimensions, **params):
    new = tuple(i for i in range(len(shape)) if i not in broadcast_dimensions)
    stretched = tuple(d for i, d in enumerate(broadcast_dimensions)
                      if x.shape[i] == 1 and shape[d] != 1)
    return (g.sum(new + stretched, keepdims=True).reshape(x.shape) if new + stretched
            else g.reshape(x.shape), *(None for _ in dyn))


@rule("reshape", "squeeze")   # (jnp.expand_dims is a broadcast_in_dim)
def _reshape(g, out, x, *dyn, **params):
    return (g.reshape(x.shape), *(None for _ in dyn))


@rule("transpose")
def _transpose(g, out, x, *, permutation):
    return (g.transpose(np.argsort(permutation)),)


@rule("rev")
def _rev(g, out, x, *, dimensions):
    return (lax.rev(g, dimensions),)


@rule("concatenate")
def _concatenate(g, out, *xs, dimension):
    ends = np.cumsum([x.shape[dimension] for x in xs])
    return tuple(lax.slice_in_dim(g, e - x.shape[dimension], e, axis=dimension)
                 for x, e in zip(xs, ends, strict=True))


@rule("split")
def _split(gs, outs, x, *, sizes, axis):
    return (jnp.concatenate([jnp.zeros(o.shape, x.dtype) if g is None else g
                             for g, o in zip(gs, outs, strict=True)], axis=axis),)


@rule("slice")
def _slice(g, out, x, *, start_indices, limit_indices, strides):
    strides = strides or (1,) * x.ndim
    config = [(s, n - (s + (m - 1) * st + 1), st - 1) if m else (n, 0, 0)
              for s, n, m, st in zip(start_indices, x.shape, g.shape, strides, strict=True)]
    return (lax.pad(g, jnp.zeros((), g.dtype), config),)       # zeros where nothing was read


@rule("pad")
def _pad(g, out, x, value, *, padding_config):
    grow = [(max(-lo, 0), max(-hi, 0), 0) for lo, hi, _ in padding_config]
    g2 = lax.pad(g, jnp.zeros((), g.dtype), grow)              # undo cropping (negative pads)
    starts = [max(lo, 0) for lo, _, _ in padding_config]
    limits = [n - max(hi, 0) for n, (_, hi, _) in zip(g2.shape, padding_config, strict=True)]
    x_bar = lax.slice(g2, starts, limits, [i + 1 for _, _, i in padding_config])
    return x_bar, g.sum() - x_bar.sum()                          # the pad value fills the rest


@rule("dynamic_slice")
def _dynamic_slice(g, out, x, *starts, slice_sizes):
    return (lax.dynamic_update_slice(jnp.zeros_like(x), g, starts), *(None for _ in starts))


@rule("dynamic_update_slice")
def _dynamic_update_slice(g, out, x, update, *starts):
    return (lax.dynamic_update_slice(g, jnp.zeros_like(update), starts),
            lax.dynamic_slice(g, starts, update.shape), *(None for _ in starts))


@rule("gather")
def _gather(g, out, x, indices, *, dimension_numbers, slice_sizes, mode, fill_value=None,
            indices_are_sorted=False, unique_indices=False):
    # the transpose of reading rows is adding into them: a row read twice gets both ḡ's
    d = dimension_numbers
    scatter = lax.ScatterDimensionNumbers(
        update_window_dims=d.offset_dims, inserted_window_dims=d.collapsed_slice_dims,
        scatter_dims_to_operand_dims=d.start_index_map,
        operand_batching_dims=d.operand_batching_dims,
        scatter_indices_batching_dims=d.start_indices_batching_dims)
    return (lax.scatter_add(jnp.zeros_like(x), indices, g, scatter,
                            indices_are_sorted=indices_are_sorted,
                            unique_indices=unique_indices, mode=mode), None)


# ── no derivative: integer or boolean results, piecewise-constant functions ──

NO_GRADIENT = frozenset({
    "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not", "xor", "is_finite",
    "argmax", "argmin", "iota", "floor", "ceil", "round", "sign", "stop_gradient",
    "shift_left", "shift_right_logical", "shift_right_arithmetic", "population_count",
    "random_bits", "random_seed", "random_wrap", "random_unwrap", "threefry2x32",
    "nextafter",
})
