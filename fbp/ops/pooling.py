r"""Max and average pooling over (H, W) windows, each with a hand-written rule.

Both walk the kh·kw window offsets (a, b) in row-major order, one strided slice of the padded
input per offset (``fbp.ops._windows``), and their rules add per-offset cotangents back into
the input (col2im), so overlapping windows (stride < window) accumulate.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fbp._validate import float_array
from fbp.ops import _windows as win


def _geometry(x, window, stride, padding, op: str):
    x = float_array(x, "x", min_rank=3)
    window = win.pair(window, "window")
    stride = window if stride is None else win.pair(stride, "stride")
    pads = win.resolve_padding(padding, x.shape[-3:-1], window, stride)
    for k, p, axis in zip(window, pads, ("rows", "columns")):
        if max(p) >= k:
            raise ValueError(f"{op}: padding {pads} puts a whole window of the {axis} in the "
                             f"padding (window {window}); each side's padding must be < the "
                             f"window ({k}). Use padding=\"SAME\" or a smaller padding.")
    win.out_hw(x.shape[-3:-1], window, stride, pads)
    return x, window, stride, pads


# ── max_pool2d: the gradient goes to the first maximum of each window ──

def _window_max(x, window, stride, pads):
    """(max, offset of the first max in row-major window order) of every window; a NaN is
    larger than everything (as in ``lax.max`` and ``np.argmax``), so it is never hidden."""
    hw = win.out_hw(x.shape[1:3], window, stride, pads)
    xp = win.pad_hw(x, pads, -jnp.inf)
    slices = win.window_slices(xp, window, stride, hw)
    best = next(slices)
    arg = jnp.zeros(best.shape, jnp.uint8 if window[0] * window[1] <= 256 else jnp.int32)
    for k, s in enumerate(slices, start=1):
        # strictly greater: a tie keeps the earlier offset; the first NaN wins and stays
        later = (s > best) | (jnp.isnan(s) & ~jnp.isnan(best))
        best = jnp.where(later, s, best)
        arg = jnp.where(later, jnp.asarray(k, arg.dtype), arg)
    return best, arg


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool2d(x, window, stride, pads):
    return lax.reduce_window(win.pad_hw(x, pads, -jnp.inf), -jnp.inf, lax.max,
                             (1, *window, 1), (1, *stride, 1), "VALID")


def _max_pool2d_fwd(x, window, stride, pads):
    y, arg = _window_max(x, window, stride, pads)
    return y, (arg, x.shape[1:3])               # res: the argmax offsets (1 byte each), no x


def _max_pool2d_bwd(window, stride, pads, res, g):
    arg, in_hw = res
    zero = jnp.zeros((), g.dtype)
    parts = [jnp.where(arg == k, g, zero) for k in range(window[0] * window[1])]
    padded = win.padded_shape(g.shape[0], in_hw, pads, g.shape[-1])
    return (win.crop_hw(win.add_windows(parts, padded, window, stride, g.dtype), pads),)


_max_pool2d.defvjp(_max_pool2d_fwd, _max_pool2d_bwd)


def max_pool2d(x, window, *, stride=None, padding="VALID"):
    r"""Max pooling:  y[i, j, c] = max_{a<kh, b<kw} xp[i·sh + a, j·sw + b, c].

    xp is x padded with −∞ (padding never wins).  Each window's maximum is a selection, so
    its derivative is 1 at the chosen element and 0 elsewhere (§3 chain rule):
        x̄[p, q, c] = Σ over the windows (i, j) whose chosen element is (p, q) of ḡ[i, j, c].
    Ties (two or more equal maxima in one window): ALL of ḡ goes to the FIRST maximum in
    row-major window order (smallest a, then smallest b) — the rule this function states
    and its tests hold it to.  (At a tie max is not differentiable; JAX's autodiff of
    ``lax.reduce_window`` may split or place it differently.)  An element that is the chosen
    maximum of several overlapping windows collects all their ḡ.
    NaN: a window holding a NaN has y = NaN (as ``lax.reduce_window``'s max and ``jnp.max``),
    and its ḡ goes to the window's FIRST NaN: NaN counts as larger than every number, as in
    ``np.argmax``.  (JAX's autodiff of reduce_window sends it to a position of its own choice.)
    Saves:    the offset a·kw + b of each window's maximum (uint8 for windows up to 256
              elements): one byte per output, where autodiff of reduce_window keeps x.
    Forward mode: ``fbp.transposed(fbp.max_pool2d)`` (the JVP as the transpose of this rule).

    Args:
      x: floating array ``(..., H, W, C)``.
      window: an int or (kh, kw).
      stride: an int or (sh, sw); default: the window (non-overlapping).
      padding: "VALID", "SAME", an int, or ((top, bottom), (left, right)); each side < the
        window, so that no window is padding only.
    Returns:
      ``(..., H_out, W_out, C)`` with H_out = ⌊(H + pt + pb − kh)/sh⌋ + 1.
    """
    x, window, stride, pads = _geometry(x, window, stride, padding, "max_pool2d")
    y = _max_pool2d(win.flatten_batch(x), window, stride, pads)
    return y.reshape(*x.shape[:-3], *y.shape[1:])


# ── avg_pool2d: the gradient is spread evenly over each window's valid elements ──

def _valid_counts(in_hw, window, stride, pads) -> np.ndarray:
    """(H_out, W_out, 1) array: how many elements of each window are inside x (not padding)."""
    ones = np.pad(np.ones(in_hw), pads)
    hw = win.out_hw(in_hw, window, stride, pads)
    parts = win.window_slices(ones[None, :, :, None], window, stride, hw)
    return sum(parts)[0]


def _window_mean(x, window, stride, pads):
    total = lax.reduce_window(win.pad_hw(x, pads), np.zeros((), x.dtype), lax.add,
                              (1, *window, 1), (1, *stride, 1), "VALID")
    return total / _valid_counts(x.shape[1:3], window, stride, pads)[None].astype(x.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _avg_pool2d(x, window, stride, pads):
    return _window_mean(x, window, stride, pads)


def _avg_pool2d_fwd(x, window, stride, pads):
    # the primal computed directly (not by calling _avg_pool2d), so that forward mode over
    # this rule (jax.jvp of jax.grad, jax.hessian) differentiates plain lax ops
    return _window_mean(x, window, stride, pads), x.shape[1:3]    # res: (H, W) (linear op)


def _avg_pool2d_bwd(window, stride, pads, in_hw, g):
    share = g / _valid_counts(in_hw, window, stride, pads)[None].astype(g.dtype)  # ḡ / count
    padded = win.padded_shape(g.shape[0], in_hw, pads, g.shape[-1])
    xp_bar = win.add_windows([share] * (window[0] * window[1]), padded, window, stride, g.dtype)
    return (win.crop_hw(xp_bar, pads),)


_avg_pool2d.defvjp(_avg_pool2d_fwd, _avg_pool2d_bwd)


def avg_pool2d(x, window, *, stride=None, padding="VALID"):
    r"""Average pooling:  y[i, j, c] = (1/nᵢⱼ) Σ_{a,b valid} xp[i·sh + a, j·sw + b, c].

    The divisor nᵢⱼ is the number of elements of window (i, j) that lie inside x, the
    padding NOT counted (TensorFlow's "SAME" average; PyTorch's count_include_pad=False):
    without padding it is kh·kw everywhere, and a border window of a padded input is the
    mean of its real elements.  The op is linear, so its VJP is its transpose (§3):
        x̄[p, q, c] = Σ over the windows (i, j) that contain (p, q) of ḡ[i, j, c] / nᵢⱼ,
    each window's ḡ spread evenly over its valid elements (padding gets nothing).
    Saves:    nothing but the input's (H, W): the counts are constants of the shapes.
    Forward mode: ``fbp.transposed(fbp.avg_pool2d)`` (the JVP as the transpose of this rule).

    Args:
      x: floating array ``(..., H, W, C)``.
      window, stride, padding: as for ``max_pool2d`` (each side's padding < the window).
    Returns:
      ``(..., H_out, W_out, C)``.
    """
    x, window, stride, pads = _geometry(x, window, stride, padding, "avg_pool2d")
    y = _avg_pool2d(win.flatten_batch(x), window, stride, pads)
    return y.reshape(*x.shape[:-3], *y.shape[1:])
