r"""What kind of mistake a wrong cotangent looks like, for ``fbp.check_vjp``'s report.

Every test here compares the rule's cotangent ``got`` with the expected one ``exp`` (from
autodiff of a reference, or from finite differences) as plain arrays, with no knowledge of
which op produced them: a constant ratio, a sign, a transposition, zeros, an error confined
to one slice of one axis, values copied along an axis, another argument's cotangent.  Each
test is a least-squares fit or an exact comparison within a tolerance ``tol`` relative to
the size of the arrays, so finite-difference noise does not produce a hint and a hint
is only given when the pattern explains the whole error.
"""

from __future__ import annotations

import numpy as np


def _norm(a) -> float:
    return float(np.sqrt(np.sum(np.square(a, dtype=np.float64))))


def _close(a, b, tol: float) -> bool:
    return _norm(a - b) <= tol * (_norm(a) + _norm(b)) or _norm(a - b) == 0.0


def _is(ref: str) -> str:
    return "are" if ref.endswith("s") else "is"


def _nice_factor(k: float, tol: float) -> str:
    """A reading of a ratio k: 'missing 1/n?' for k ≈ n, 'an extra 1/n?' for k ≈ 1/n."""
    mag = abs(k)
    n = round(mag)
    if n >= 2 and abs(mag - n) <= tol * mag:
        return f" (missing 1/{n}? e.g. the 1/m of a mean over {n} elements)"
    n = round(1 / mag) if mag > 0 else 0
    if n >= 2 and abs(1 / mag - n) <= tol / mag:
        return f" (an extra 1/{n}, or a dropped factor {n}?)"
    return ""


def _ratio_hint(got, exp, tol: float, ref: str) -> str | None:
    """got = k·exp for one constant k: sign flip, or a constant factor."""
    ee = float(np.vdot(exp, exp))
    if ee == 0.0:
        return None
    k = float(np.vdot(got, exp)) / ee
    if not _close(got, k * exp, tol):
        return None
    if abs(k) <= tol:
        return f"zero where {ref} {_is(ref)} not (a missing term or a wrong mask?)"
    if abs(k + 1) <= tol:
        return "sign flipped (got = −expected)"
    if abs(k - 1) <= tol:
        return None
    sign = ", and sign flipped" if k < 0 else ""
    return f"off by a constant factor {k:.6g}{sign}{_nice_factor(k, tol)}"


def _subset_hint(got, exp, tol: float, ref: str, scale: float, factors=True) -> str | None:
    """The error sits on a subset of elements and has one shape there (zeros, a factor)."""
    diff = np.abs(got - exp)
    bad = diff > tol * scale
    n_bad, n = int(bad.sum()), bad.size
    if n_bad == 0 or n_bad == n or n < 2:
        return None
    g, e = got[bad], exp[bad]
    if _norm(g) <= tol * _norm(e):
        return (f"zero at {n_bad} of {n} elements where {ref} {_is(ref)} not "
                "(a wrong mask or a dropped term?)")
    ee = float(np.vdot(e, e))
    if ee > 0.0 and factors:
        k = float(np.vdot(g, e)) / ee
        if _close(g, k * e, tol) and abs(k - 1) > tol:
            what = "sign flipped" if abs(k + 1) <= tol else f"off by a constant factor {k:.6g}"
            return f"wrong at {n_bad} of {n} elements only, and there {what}"
    return None


def _axis_factor_hint(got, exp, tol: float) -> str | None:
    """got = exp scaled by a factor that varies along one axis only (a per-row/column scale)."""
    if exp.ndim < 2:
        return None
    for axis in range(exp.ndim):
        if exp.size // exp.shape[axis] < 4:      # too few values per slice to tell
            continue
        e, g = np.moveaxis(exp, axis, 0), np.moveaxis(got, axis, 0)
        ee = np.sum(e * e, axis=tuple(range(1, e.ndim)))
        if np.any(ee == 0):
            continue
        k = np.sum(g * e, axis=tuple(range(1, e.ndim))) / ee
        fitted = k.reshape((-1,) + (1,) * (e.ndim - 1)) * e
        if _close(g, fitted, tol) and np.ptp(k) > tol * np.max(np.abs(k)):
            shown = ", ".join(f"{v:.3g}" for v in k[:4]) + (", …" if k.size > 4 else "")
            return (f"off by a factor that varies along axis {axis} only ({shown}): a missing "
                    "per-feature or per-example scale (γ, 1/σ, a mask)?")
    return None


def _transpose_hint(got, exp, tol: float) -> str | None:
    if exp.ndim < 2:
        return None
    if exp.shape[-1] == exp.shape[-2] and _close(got, np.swapaxes(exp, -1, -2), tol):
        return "looks transposed (got = expectedᵀ)"
    flipped = np.swapaxes(exp, -1, -2)
    if _close(got, flipped.reshape(got.shape), tol):
        return ("looks transposed and then reshaped to fit (an (n_in, n_out) product "
                "reshaped to (n_out, n_in)?)")
    return None


def _slice_hint(got, exp, tol: float, scale: float) -> str | None:
    """The whole error lies in one index of one axis (one batch row, one column, ...)."""
    diff = np.abs(got - exp)
    total = _norm(diff)
    if exp.ndim < 1 or total == 0.0:
        return None
    for axis in range(exp.ndim):
        if exp.shape[axis] < 2:
            continue
        per = np.sqrt(np.sum(np.square(np.moveaxis(diff, axis, 0)).reshape(
            exp.shape[axis], -1), axis=1))
        i = int(np.argmax(per))
        rest = np.delete(per, i)
        if np.all(rest <= tol * scale):
            if axis == 0 and exp.ndim >= 2:
                return f"differs only on one batch row: row {i} of axis 0"
            if exp.ndim == 1:
                return f"differs only at one element: index {i}"
            return f"differs only at index {i} of axis {axis}"
    return None


def _copied_hint(got, exp, tol: float) -> str | None:
    """got repeats one value along an axis where exp does not (summed, then broadcast)."""
    if _norm(got) <= tol * _norm(exp):          # all zeros: said already
        return None
    for axis in range(exp.ndim):
        if exp.shape[axis] < 2:
            continue
        g0 = np.take(got, [0], axis=axis)
        e0 = np.take(exp, [0], axis=axis)
        if _close(got, np.broadcast_to(g0, got.shape), tol) and not _close(
                exp, np.broadcast_to(e0, exp.shape), tol):
            return (f"the same along axis {axis} while the expected values vary there "
                    "(reduced over that axis and broadcast back: a broadcasting slip?)")
    return None


def diagnose(got, exp, *, tol: float = 1e-3, ref: str = "autodiff", others=None,
             slices: bool = True) -> list[str]:
    r"""Recognisable shapes of the error got − exp, as short sentences (most specific first).

    Args:
      got, exp: arrays of one shape (the rule's cotangent and the expected one).
      tol: relative tolerance within which a pattern must explain the error.
      ref: the name of the expected values in the sentences ("autodiff", ...).
      others: ``{label: expected cotangent}`` of the other arguments, to recognise a
        cotangent returned for the wrong argument.
      slices: look for structure along the axes (an error confined to one index of one
        axis, a factor varying along one axis); off for Jacobians, whose rows are sparse.
    """
    got = np.asarray(got, np.float64)
    exp = np.asarray(exp, np.float64)
    if not np.all(np.isfinite(got)):
        return ["non-finite values (NaN/inf) in the rule's cotangent"]
    exp = np.where(np.isfinite(exp), exp, got)   # a non-finite reference explains nothing
    if got.shape != exp.shape or _close(got, exp, tol):
        return []
    hints = []
    for label, other in (others or {}).items():
        other = np.asarray(other, np.float64)
        if other.shape == got.shape and _norm(other) > 0:
            if _close(got, other, tol):
                hints.append(f"equals the expected cotangent of {label} "
                             "(returned for the wrong argument?)")
            elif _close(got, -other, tol):
                hints.append(f"equals minus the expected cotangent of {label} "
                             "(returned for the wrong argument?)")
    scale = max(_norm(exp), _norm(got)) / np.sqrt(max(exp.size, 1))
    for hint in (_ratio_hint(got, exp, tol, ref), _transpose_hint(got, exp, tol),
                 _axis_factor_hint(got, exp, tol) if slices else None,
                 _subset_hint(got, exp, tol, ref, scale, factors=slices),
                 _slice_hint(got, exp, tol, scale) if slices else None,
                 _copied_hint(got, exp, tol)):
        if hint:
            hints.append(hint)
    return hints


def shape_hint(got_shape: tuple, want_shape: tuple) -> str:
    """Why a cotangent of shape ``got_shape`` may have come out for an input ``want_shape``."""
    got_shape, want_shape = tuple(got_shape), tuple(want_shape)
    if len(want_shape) >= 2 and got_shape == want_shape[::-1]:
        return "looks transposed"
    k = len(want_shape)
    if len(got_shape) > k and got_shape[len(got_shape) - k:] == want_shape:
        extra = got_shape[:len(got_shape) - k]
        return (f"extra leading axes {extra}: not summed over the batch? "
                "(a parameter broadcast over the batch gets the sum of its cotangents)")
    if int(np.prod(got_shape)) == int(np.prod(want_shape)):
        return "same number of elements in another shape (a reshape or transposition slip?)"
    if len(got_shape) < k:
        return "lower rank than the input: summed over an axis that should be kept?"
    try:
        np.broadcast_shapes(got_shape, want_shape)
        return "broadcasts against the input but is not its shape (a broadcasting slip?)"
    except ValueError:
        return ""
