r"""2-D convolution with a hand-written rule — and the same numbers as ``dense`` over patches.

A convolution IS a dense layer applied to every patch: with ``P`` the im2col matrix (one row
per output position, holding the kh·kw·c_in inputs that position sees, in (a, b, c) order),

    Y = P Wᵀ + b,   W = Conv.W.reshape(c_out, kh·kw·c_in)   (the Dense weight, (n_out, n_in)),

so its rule is dense's rule, W̄ = δᵀ P, b̄ = Σ δ, P̄ = δ W, followed by col2im (P̄ added back
into the pixels each patch came from).  ``conv2d(method="im2col")`` runs exactly that, through
``fbp.dense``'s own rule; ``method="direct"`` (the default) runs the same derivation as three
convolutions, without ever building P (tutorial §9.2: every shape below is checked).
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from fbp._validate import float_array, one_of, same_dtype
from fbp.ops import _windows as win
from fbp.ops.linear import Dense, dense


class Conv(NamedTuple):
    """Convolution parameters: ``W`` of shape ``(c_out, kh, kw, c_in)``, ``b`` of ``(c_out,)``."""

    W: jax.Array
    b: jax.Array


_SCHEMES = ("he", "xavier")
_DN = ("NHWC", "OHWI", "NHWC")          # x, W, y: features last, W as (c_out, kh, kw, c_in)


def init_conv(key, c_in: int, c_out: int, kernel_size, scheme: str = "he", dtype=None) -> Conv:
    r"""Random ``Conv(W, b)`` with ``b = 0``; the fan-in of a filter is kh·kw·c_in.

    ``"he"``:     W ~ N(0, 1) · √(2 / (kh·kw·c_in))                 (ReLU nets)
    ``"xavier"``: W ~ N(0, 1) · √(2 / (kh·kw·(c_in + c_out)))        (tanh/sigmoid nets)

    Args:
      key: a ``jax.random`` key.
      c_in, c_out: positive channel counts.
      kernel_size: an int or a pair (kh, kw).
      scheme: ``"he"`` or ``"xavier"``.
      dtype: a floating dtype; default JAX's default float.
    Returns:
      ``Conv(W: (c_out, kh, kw, c_in), b: (c_out,))``.
    """
    for name, n in (("c_in", c_in), ("c_out", c_out)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a positive int; got {n!r}.")
    kh, kw = win.pair(kernel_size, "kernel_size")
    one_of(scheme, "scheme", _SCHEMES)
    dtype = jnp.result_type(float) if dtype is None else dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype; got {dtype}.")
    fan = kh * kw * (c_in if scheme == "he" else c_in + c_out)
    W = jax.random.normal(key, (c_out, kh, kw, c_in), dtype) * math.sqrt(2.0 / fan)
    return Conv(W.astype(dtype), jnp.zeros((c_out,), dtype))


def _correlate(W, b, x, stride, pads):
    y = lax.conv_general_dilated(x, W, stride, pads, dimension_numbers=_DN)
    return y + b.reshape(1, 1, 1, -1)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d(params, x, stride, pads):
    W, b = params
    return _correlate(W, b, x, stride, pads)


def _conv2d_fwd(params, x, stride, pads):
    W, b = params
    return _correlate(W, b, x, stride, pads), (W, x)


def _conv2d_bwd(stride, pads, res, g):
    W, x = res
    delta = g                                                   # (N, H_out, W_out, c_out)
    k_hw, in_hw = W.shape[1:3], x.shape[1:3]
    # rows/columns of the padded input that no window reaches: no gradient flows there
    rem = [(n + p[0] + p[1] - k) % s for n, p, k, s in zip(in_hw, pads, k_hw, stride)]
    # x̄: the transposed convolution — δ dilated by the stride, padded by k − 1 − p, against
    # the kernel flipped in space with c_in and c_out swapped ("IHWO": c_out is its input).
    x_pads = [(k - 1 - p[0], k - 1 - p[1] + r) for k, p, r in zip(k_hw, pads, rem)]
    x_bar = lax.conv_general_dilated(delta, W[:, ::-1, ::-1, :], (1, 1), x_pads,
                                     lhs_dilation=stride,
                                     dimension_numbers=("NHWC", "IHWO", "NHWC"))
    # W̄: the correlation of x with δ — the batch N is the contracted "feature" axis, c_in
    # plays the batch, δ (dilated by the stride) is the kernel; out as (c_out, kh, kw, c_in).
    w_pads = [(p[0], p[1] - r) for p, r in zip(pads, rem)]
    W_bar = lax.conv_general_dilated(x, delta, (1, 1), w_pads, rhs_dilation=stride,
                                     dimension_numbers=("CHWN", "IHWO", "CHWN"))
    b_bar = jnp.sum(delta, axis=(0, 1, 2))                      # Σ δ over batch and space
    return Conv(W_bar, b_bar), x_bar


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


# ── im2col: the patches as an op of their own (its transpose, col2im, is the rule) ──

@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _im2col(x, window, stride, pads):
    return _patches(x, window, stride, pads)


def _patches(x, window, stride, pads):
    hw = win.out_hw(x.shape[1:3], window, stride, pads)
    parts = list(win.window_slices(win.pad_hw(x, pads), window, stride, hw))
    p = jnp.stack(parts, axis=3)                                # (N, H_out, W_out, kh·kw, C)
    return p.reshape(*p.shape[:3], -1)                          # features in (a, b, c) order


def _im2col_fwd(x, window, stride, pads):
    return _patches(x, window, stride, pads), x.shape[1:3]      # res: (H, W) alone (linear)


def _im2col_bwd(window, stride, pads, in_hw, g):
    parts = g.reshape(*g.shape[:3], window[0] * window[1], -1)  # (N, H_out, W_out, kh·kw, C)
    padded = win.padded_shape(g.shape[0], in_hw, pads, parts.shape[-1])
    xp_bar = win.add_windows([parts[:, :, :, k] for k in range(parts.shape[3])], padded,
                             window, stride, g.dtype)
    return (win.crop_hw(xp_bar, pads),)


_im2col.defvjp(_im2col_fwd, _im2col_bwd)


def im2col(x, kernel_size, *, stride=1, padding="VALID"):
    r"""The patches of ``x``: P[..., i, j, (a·kw + b)·C + c] = xp[..., i·sh + a, j·sw + b, c].

    xp is x zero-padded as ``padding`` says.  VJP (col2im): x̄[p, q, c] = Σ of P̄ over every
    (i, j, a, b) with i·sh + a = p + pt and j·sw + b = q + pl (overlapping windows add up),
    the padded border dropped.  Saves: only the input's shape (the op is linear).

    Args:
      x: floating array ``(..., H, W, C)``.
      kernel_size: an int or (kh, kw).  stride, padding: as for ``conv2d``.
    Returns:
      ``(..., H_out, W_out, kh·kw·C)``.
    """
    x = float_array(x, "x", min_rank=3)
    window = win.pair(kernel_size, "kernel_size")
    stride = win.pair(stride, "stride")
    pads = win.resolve_padding(padding, x.shape[-3:-1], window, stride)
    win.out_hw(x.shape[-3:-1], window, stride, pads, what="kernel")
    p = _im2col(win.flatten_batch(x), window, stride, pads)
    return p.reshape(*x.shape[:-3], *p.shape[1:])


def conv2d(params: Conv, x, *, stride=1, padding="VALID", method: str = "direct"):
    r"""2-D convolution (cross-correlation, as in every deep-learning library), features last.

    Forward, with xp the zero-padded input and W of shape (c_out, kh, kw, c_in):
        y[i, j, o] = Σ_{a<kh, b<kw, c} xp[i·sh + a, j·sw + b, c] · W[o, a, b, c] + b[o],
        H_out = ⌊(H + pt + pb − kh)/sh⌋ + 1   (likewise W_out).
    It is ``dense`` over patches: y = P Wᵀ + b with P = im2col(x) (kh·kw·c_in per row) and
    W.reshape(c_out, −1) the (n_out, n_in) Dense weight; ``method="im2col"`` runs exactly that.

    VJP, with δ = ḡ (N, H_out, W_out, c_out) — each is dense's rule read through the patches:
      W̄[o, a, b, c] = Σ_{n,i,j} δ[n, i, j, o] · xp[n, i·sh + a, j·sw + b, c]
                      (δᵀ P: the correlation of x with δ, δ dilated by the stride),
      b̄[o]          = Σ_{n,i,j} δ[n, i, j, o]   (Σ δ),
      x̄[p, q, c]    = Σ_{i,j,a,b,o: i·sh+a = p+pt, j·sw+b = q+pl} δ[i, j, o] · W[o, a, b, c]
                      (δ W then col2im: the transposed convolution — δ dilated by the
                      stride, zero-padded by k − 1 − p, correlated with the kernel flipped
                      in space and c_in ↔ c_out swapped).  The last
                      (H + pt + pb − kh) mod sh rows (and columns) of xp are in no window and
                      get x̄ = 0: the transposed convolution pads them on at the far edge.
    §7.1: δ of the layer below is x̄ times its activation's derivative; §9.2: W̄ has W's shape.
    Saves:    W and x (W̄ needs x, x̄ needs W), as dense does.  im2col: P instead of x
              (kh·kw times larger) plus W — the reason the direct form is the default.
    Forward mode: ``fbp.transposed(fbp.conv2d)`` (the JVP as the transpose of this rule).

    Args:
      params: ``Conv(W: (c_out, kh, kw, c_in), b: (c_out,))``.
      x: floating array ``(..., H, W, c_in)`` (any leading batch dims, or none), W's dtype.
      stride: an int or (sh, sw), each ≥ 1.
      padding: "VALID" (none), "SAME" (H_out = ⌈H/sh⌉, as XLA), an int p (p on every side),
        or ((top, bottom), (left, right)).
      method: "direct" (three convolutions) or "im2col" (patches, then ``fbp.dense``).
    Returns:
      y of shape ``(..., H_out, W_out, c_out)``.
    """
    params, x = validate_conv(params, x)
    one_of(method, "method", ("direct", "im2col"))
    W, b = params
    c_out, kh, kw, c_in = W.shape
    stride = win.pair(stride, "stride")
    pads = win.resolve_padding(padding, x.shape[-3:-1], (kh, kw), stride)
    win.out_hw(x.shape[-3:-1], (kh, kw), stride, pads, what="kernel")
    if method == "im2col":
        patches = im2col(x, (kh, kw), stride=stride, padding=pads)
        return dense(Dense(W.reshape(c_out, -1), b), patches)
    y = _conv2d(params, win.flatten_batch(x), stride, pads)
    return y.reshape(*x.shape[:-3], *y.shape[1:])


def validate_conv(params, x):
    """``(Conv(W, b), x)`` as arrays after the checks conv2d makes."""
    if not (isinstance(params, tuple) and len(params) == 2):
        raise TypeError(f"params must be Conv(W, b); got {type(params).__name__}.")
    W = float_array(params[0], "W")
    b = float_array(params[1], "b")
    x = float_array(x, "x")
    if W.ndim != 4:
        raise ValueError(f"W must have rank 4, shape (c_out, kh, kw, c_in); got shape "
                         f"{W.shape}. For a 1-channel 3×3 kernel use W.reshape(c_out, 3, 3, 1).")
    if b.shape != (W.shape[0],):
        raise ValueError(f"b must have shape (c_out,) = ({W.shape[0]},) to match W {W.shape}; "
                         f"got {b.shape}.")
    if x.ndim < 3:
        raise ValueError(f"x must have shape (..., H, W, c_in), at least rank 3; got shape "
                         f"{x.shape}. A single-channel image (H, W) is x[..., None].")
    if x.shape[-1] != W.shape[3]:
        hint = (" (channels first? fbp puts them last: jnp.moveaxis(x, -3, -1))"
                if x.shape[-3] == W.shape[3] else "")
        raise ValueError(f"x must have c_in = {W.shape[3]} channels last to match W {W.shape}; "
                         f"got x of shape {x.shape}{hint}.")
    same_dtype(W=W, b=b, x=x)
    return Conv(W, b), x
