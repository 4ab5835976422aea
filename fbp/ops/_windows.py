r"""Sliding-window geometry shared by conv2d, max_pool2d and avg_pool2d.

A window of size (kh, kw) slides over the padded input ``xp`` (H + pt + pb rows,
W + pl + pr columns) with stride (sh, sw).  Output position (i, j) sees the rows
``i·sh … i·sh + kh − 1`` and columns ``j·sw … j·sw + kw − 1`` of ``xp``, so

    H_out = ⌊(H + pt + pb − kh) / sh⌋ + 1,

and the last ``(H + pt + pb − kh) mod sh`` rows of ``xp`` are in no window at all (they get no
gradient: the "cropped remainder").  Window offset (a, b) of every output at once is one
strided slice of ``xp``; ``window_slices`` yields those kh·kw slices (the im2col patches, one
offset at a time) and ``add_windows`` is their transpose, col2im: it adds per-offset arrays
back into a padded-input-shaped zero array (overlapping windows accumulate).
"""

from __future__ import annotations

import jax.numpy as jnp


def pair(v, name: str, *, low: int = 1) -> tuple[int, int]:
    """An int or a pair of ints, each ≥ low, as a pair; or a ValueError/TypeError."""
    vals = (v, v) if not isinstance(v, (tuple, list)) else tuple(v)
    if len(vals) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) for n in vals):
        raise TypeError(f"{name} must be an int or a pair of ints (rows, columns); got {v!r}.")
    if min(vals) < low:
        raise ValueError(f"{name} must be ≥ {low} in each dimension; got {v!r}. "
                         f"E.g. {name}=1 (or (1, 1)).")
    return vals


def resolve_padding(padding, in_hw, window, stride, name: str = "padding"):
    """``((pt, pb), (pl, pr))`` from "VALID", "SAME", an int, or ((top, bottom), (left, right)).

    "SAME" follows XLA/TensorFlow: H_out = ⌈H / sh⌉, total padding
    max((H_out − 1)·sh + kh − H, 0), the odd row at the bottom (right).
    """
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return ((0, 0), (0, 0))
        if mode == "SAME":
            pads = []
            for n, k, s in zip(in_hw, window, stride):
                total = max((-(-n // s) - 1) * s + k - n, 0)
                pads.append((total // 2, total - total // 2))
            return tuple(pads)
        raise ValueError(f'{name} must be "VALID", "SAME", an int or ((top, bottom), '
                         f'(left, right)); got {padding!r}.')
    if isinstance(padding, int) and not isinstance(padding, bool):
        if padding < 0:
            raise ValueError(f"{name} must be ≥ 0; got {padding}. Use padding=0 or \"VALID\".")
        return ((padding, padding), (padding, padding))
    ok = (isinstance(padding, (tuple, list)) and len(padding) == 2 and all(
        isinstance(p, (tuple, list)) and len(p) == 2 and all(
            isinstance(q, int) and not isinstance(q, bool) and q >= 0 for q in p)
        for p in padding))
    if not ok:
        raise ValueError(f'{name} must be "VALID", "SAME", an int ≥ 0 or ((top, bottom), '
                         f'(left, right)) of ints ≥ 0; got {padding!r}. E.g. padding=((1, 1), '
                         f'(1, 1)).')
    return tuple(tuple(p) for p in padding)


def out_hw(in_hw, window, stride, pads, *, what: str = "window") -> tuple[int, int]:
    """The output height and width, or a ValueError when the window exceeds the padded input."""
    padded = [n + p[0] + p[1] for n, p in zip(in_hw, pads)]
    if any(k > n for k, n in zip(window, padded)):
        raise ValueError(f"the {what} {tuple(window)} is larger than the padded input "
                         f"{tuple(padded)} (input {tuple(in_hw)}, padding {pads}); use a "
                         f"smaller {what}, more padding, or padding=\"SAME\".")
    return tuple((n - k) // s + 1 for n, k, s in zip(padded, window, stride))


def pad_hw(x, pads, value=0.0):
    """``x`` (N, H, W, C) padded on its two spatial axes with ``value``."""
    return jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=value)


def padded_shape(n: int, in_hw, pads, c: int) -> tuple[int, int, int, int]:
    """The (N, H + pt + pb, W + pl + pr, C) shape of the padded input."""
    return (n, *(m + p[0] + p[1] for m, p in zip(in_hw, pads)), c)


def window_slices(xp, window, stride, hw_out):
    """For each window offset (a, b) in row-major order, the (N, H_out, W_out, C) slice of
    the padded input ``xp`` that offset sees: ``xp[:, a + i·sh, b + j·sw, :]``."""
    (kh, kw), (sh, sw), (ho, wo) = window, stride, hw_out
    for a in range(kh):
        for b in range(kw):
            yield xp[:, a:a + (ho - 1) * sh + 1:sh, b:b + (wo - 1) * sw + 1:sw, :]


def add_windows(parts, padded_shape, window, stride, dtype):
    """col2im, the transpose of ``window_slices``: add ``parts[k]`` (N, H_out, W_out, C), the
    values for window offset k = a·kw + b, back into a zero array of ``padded_shape``."""
    kw, (sh, sw) = window[1], stride
    _, ho, wo, _ = parts[0].shape
    xp_bar = jnp.zeros(padded_shape, dtype)
    for k, part in enumerate(parts):
        a, b = divmod(k, kw)
        xp_bar = xp_bar.at[:, a:a + (ho - 1) * sh + 1:sh, b:b + (wo - 1) * sw + 1:sw, :].add(part)
    return xp_bar


def crop_hw(xp, pads):
    """The inverse of ``pad_hw``: the unpadded (N, H, W, C) interior of ``xp``."""
    (pt, pb), (pl, pr) = pads
    return xp[:, pt:xp.shape[1] - pb, pl:xp.shape[2] - pr, :]


def flatten_batch(x, rank: int = 3):
    """``x`` (..., H, W, C) as (N, H, W, C) with N the product of the leading dims (1 if none)."""
    return x.reshape((-1, *x.shape[x.ndim - rank:]))
