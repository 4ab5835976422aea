r"""Kinks: where the rule and autodiff (or central differences) may both be right.

At a point where a function is not differentiable (relu, |x|, max at a tie), the backward
and forward differences (f(x) − f(x − h eᵢ))/h and (f(x + h eᵢ) − f(x))/h disagree, and any
value between them is a defensible choice: relu's rule says 0 at 0, autodiff of
``jnp.maximum(z, 0)`` says 0.5, central differences say 0.5.  A failing row whose every wrong
element sits on such a kink, with the rule's value between the two one-sided derivatives, is
information, not failure: "at a kink: rule 0, autodiff 0.5 — a convention".  Run only when a
row fails (one more compilation), on the first-order VJP and on the rev-over-rev function.
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
        js = [np.asarray(j, np.float64) for j in res]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        for row in rows:
            j = row.data["leaf"]
            sl = slice(int(offsets[j]), int(offsets[j + 1]))
            u, shape = row.data["u"], row.data["exp"].shape
            _reclassify(row, *[(u @ m[:, sl]).reshape(shape) for m in js], refs[row.check])
        return []
    return Task("kinks", lambda d: one_sided(fn, d, eps), (dyn,), post, quiet=True)


def _reclassify(row, lo_diff, hi_diff, lo2, hi2, ref: str) -> None:
    exp, got = row.data["exp"], row.data["got"]
    tol = row.data["tol"]
    g_scale = float(np.sqrt(np.mean(np.square(np.where(np.isfinite(exp), exp, 0.0))))) or 1.0
    err = np.abs(got - exp)
    err = np.where(np.isnan(err), np.inf, err)
    bad = err > max(tol[1], 10 * tol[0] * g_scale)
    if not bad.any():
        return
    size = np.maximum(np.maximum(np.abs(lo_diff), np.abs(hi_diff)), g_scale)
    kink = np.abs(lo_diff - hi_diff) > 1e-3 * size
    jump = (np.abs(lo_diff - lo2) > 0.25 * size) | (np.abs(hi_diff - hi2) > 0.25 * size)
    slack = 1e-3 * size
    between = ((got >= np.minimum(lo_diff, hi_diff) - slack)
               & (got <= np.maximum(lo_diff, hi_diff) + slack))
    if not np.all(((kink & between) | jump)[bad]):
        return
    k = np.unravel_index(int(np.argmax(np.where(bad, err, -1.0))), err.shape)
    idx = tuple(int(i) for i in k)
    row.status = "info"
    n = int(bad.sum())
    if jump[k]:
        row.hints = [f"at a discontinuity: rule {got[k]:.4g}, {ref} {exp[k]:.4g} — no "
                     f"derivative exists there (the one-sided differences at {row.arg}"
                     f"{list(idx)} grow as the step shrinks; {n} element(s) like this)"]
        return
    row.hints = [f"at a kink: rule {got[k]:.4g}, {ref} {exp[k]:.4g} — a convention (the "
                 f"one-sided derivatives {lo_diff[k]:.4g} and {hi_diff[k]:.4g} differ at "
                 f"{row.arg}{list(idx)}; {n} element(s) like this, each with the rule's value "
                 "between them)"]
