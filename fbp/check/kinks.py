r"""Kinks: where the rule and autodiff (or central differences) may both be right.

At a point where a function is not differentiable (relu, |x|, max at a tie), the backward
and forward differences (f(x) − f(x − h eᵢ))/h and (f(x + h eᵢ) − f(x))/h disagree, and any
value between them is a defensible choice: relu's rule says 0 at 0, autodiff of
``jnp.maximum(z, 0)`` says 0.5, central differences say 0.5.  A failing row whose every wrong
element sits on such a kink, with the rule's value between the two one-sided derivatives, is
information, not failure: "at a kink: rule 0, autodiff 0.5 — a convention".  Run only when a
row fails (one more compilation), on the first-order VJP and on the rev-over-rev function.

Only a real kink counts: the one-sided derivatives are extrapolated from steps h and 2h, so
that a smooth function's curvature (h·f'', large in float32) cancels, and they must differ by
more than ten times the rounding noise of the differences (measured from a second step h'
a hair from h, and at least f's last rounding over the step).  A finite-difference row whose
every wrong element is within that noise is information too: the differences are too coarse
to judge the rule there (autodiff still does).
"""

from __future__ import annotations

import numpy as np

from fbp.check.fd import one_sided
from fbp.check.tasks import Task

KINK_CHECKS = ("autodiff", "jacobian", "finite-diff", "rev-over-rev")


def flat_cotangent(u_leaves) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in u_leaves
                           if x is not None])


def kink_task(fn, dyn, eps, rows, sizes, refs) -> Task:
    """One-sided differences of ``fn`` at ``dyn``; ``post`` turns kink rows into info."""
    def post(res):
        js, f0, h = ([np.asarray(j, np.float64) for j in res[0]], np.asarray(res[1]),
                     np.asarray(res[2], np.float64))
        rounding = float(np.finfo(f0.dtype).eps) * np.abs(f0.astype(np.float64))
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        for row in rows:
            j = row.data["leaf"]
            sl = slice(int(offsets[j]), int(offsets[j + 1]))
            u, shape = row.data["u"], row.data["exp"].shape
            floor = (np.abs(u) @ rounding)[..., None] / h[sl]    # f's last rounding over the step
            _reclassify(row, *[(u @ m[:, sl]).reshape(shape) for m in js], ref=refs[row.check],
                        floor=floor.reshape(shape))
        return []
    return Task("kinks", lambda d: one_sided(fn, d, eps), (dyn,), post, quiet=True)


def _reclassify(row, lo_diff, hi_diff, lo2, hi2, lo_near, hi_near, ref: str, floor) -> None:
    exp, got = row.data["exp"], row.data["got"]
    tol = row.data["tol"]
    g_scale = float(np.sqrt(np.mean(np.square(np.where(np.isfinite(exp), exp, 0.0))))) or 1.0
    err = np.abs(got - exp)
    err = np.where(np.isnan(err), np.inf, err)
    bad = err > max(tol[1], 10 * tol[0] * g_scale)
    if not bad.any():
        return
    # Rounding noise: the differences at h and h(1 + 2⁻⁸) differ by it alone (per element,
    # and at least the row's median, since one draw of noise can be small by chance), and
    # it is at least f's last rounding over the step (``floor``).
    noise = np.maximum(np.abs(lo_diff - lo_near), np.abs(hi_diff - hi_near))
    noise = np.maximum(np.maximum(noise, np.median(noise)), floor)
    # One-sided derivatives without their O(h) curvature term (Richardson, from h and 2h):
    # on a smooth function both are f' (to O(h²) and the noise), at a kink f'₋ and f'₊.
    lo, hi = 2 * lo_diff - lo2, 2 * hi_diff - hi2
    size = np.maximum(np.maximum(np.abs(lo), np.abs(hi)), g_scale)
    kink = np.abs(lo - hi) > np.maximum(1e-3 * size, 10 * noise)
    jump = np.maximum(np.abs(lo_diff - lo2), np.abs(hi_diff - hi2)) > np.maximum(
        0.25 * size, 10 * noise)
    slack = 1e-6 * size + 4 * noise
    between = ((got >= np.minimum(lo, hi) - slack) & (got <= np.maximum(lo, hi) + slack))
    fd_noise = ref == "finite differences" and np.all((err <= 4 * noise)[bad])
    if not fd_noise and not np.all(((kink & between) | jump)[bad]):
        return
    k = np.unravel_index(int(np.argmax(np.where(bad, err, -1.0))), err.shape)
    idx = tuple(int(i) for i in k)
    row.status = "info"
    n = int(bad.sum())
    if fd_noise:
        row.hints = [f"finite differences are rounding noise here: rule {got[k]:.4g}, {ref} "
                     f"{exp[k]:.4g}, within the noise {noise[k]:.2g} of f's rounding over the "
                     f"step at {row.arg}{list(idx)} ({n} element(s) like this); too coarse "
                     "to judge the rule"]
        return
    if jump[k]:
        row.hints = [f"at a discontinuity: rule {got[k]:.4g}, {ref} {exp[k]:.4g} — no "
                     f"derivative exists there (the one-sided differences at {row.arg}"
                     f"{list(idx)} grow as the step shrinks; {n} element(s) like this)"]
        return
    row.hints = [f"at a kink: rule {got[k]:.4g}, {ref} {exp[k]:.4g} — a convention (the "
                 f"one-sided derivatives {lo[k]:.4g} and {hi[k]:.4g} differ at "
                 f"{row.arg}{list(idx)}; {n} element(s) like this, each with the rule's value "
                 "between them)"]
