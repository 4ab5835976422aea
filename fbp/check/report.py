r"""What ``fbp.check_vjp`` reports: one ``Row`` per (check, argument leaf), and the table."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fbp.check.diagnose import diagnose, shape_hint
from fbp.numerical import rel_error


class VJPCheckError(AssertionError):
    """A VJP failed ``check_vjp``; the message is the report's table."""


@dataclass
class Row:
    check: str
    arg: str
    status: str                     # "ok", "FAIL", "skip" (could not run) or "info"
    max_abs: float = math.nan
    rel: float = math.nan
    index: tuple | None = None
    expected: float = math.nan
    got: float = math.nan
    hints: list = field(default_factory=list)
    data: dict = field(default_factory=dict, repr=False, compare=False)  # arrays for post-passes


@dataclass
class VJPReport:
    """What ``check_vjp`` found: ``rows`` (one per check and argument leaf) and ``.ok``.

    A row's status is ``ok``, ``FAIL``, ``skip`` (the check could not run: the row says why
    and which checks still vouch for the rule) or ``info`` (a difference that is not the
    rule's fault: a kink, a non-finite reference, a declared surrogate).  ``.ok`` is true
    when no row fails.
    """

    name: str
    dtype: str
    rows: list
    notes: list

    @property
    def ok(self) -> bool:
        return all(r.status != "FAIL" for r in self.rows)

    @property
    def failures(self) -> list:
        return [r for r in self.rows if r.status == "FAIL"]

    @property
    def skipped(self) -> list:
        return [r for r in self.rows if r.status == "skip"]

    @property
    def info(self) -> list:
        return [r for r in self.rows if r.status == "info"]

    def __str__(self) -> str:
        n_fail = len(self.failures)
        head = f"check_vjp({self.name}) {self.dtype}: " + (
            "ok" if self.ok else f"FAILED {n_fail} of {len(self.rows)} rows")
        lines = [head] + [f"  note: {n}" for n in self.notes]
        lines.append(f"  {'check':<13} {'argument':<18} {'max|Δ|':>9} {'rel err':>9}  "
                     f"{'worst at':<12} {'expected':>11} {'got':>11}  status")
        for r in self.rows:
            idx = "" if r.index is None else str(tuple(int(i) for i in r.index))
            num = "" if math.isnan(r.rel) else (   # structure rows carry no numbers
                f"{r.max_abs:>9.2e} {r.rel:>9.2e}  {idx:<12} {r.expected:>11.4g} {r.got:>11.4g}")
            lines.append(f"  {r.check:<13} {r.arg:<18} {num:<57}  {r.status}")
            lines += [f"      ↳ {h}" for h in r.hints]
        return "\n".join(lines)



def _short(err: Exception) -> str:
    text = f"{type(err).__name__}: {err}".strip().splitlines()[0]
    return text if len(text) <= 300 else text[:297] + "..."


# ── comparisons → rows ──

def _real(a) -> np.ndarray:
    """float64 view of an array; a complex one as (..., 2) real and imaginary parts."""
    a = np.asarray(a)
    if np.iscomplexobj(a):
        return np.stack([a.real, a.imag], axis=-1).astype(np.float64)
    return a.astype(np.float64)


def _row(check, label, exp, got, tol, hint_tol, others, ref, slices, noise=0.0) -> Row:
    if exp is None and got is None:
        return Row(check, label, "ok")
    if exp is None or got is None:
        missing = "the rule" if got is None else "the reference"
        return Row(check, label, "FAIL", hints=[f"{missing} gives no cotangent here"])
    exp, got = _real(exp), _real(got)
    if exp.shape != got.shape:
        return Row(check, label, "FAIL",
                   hints=[f"shape {got.shape}, expected {exp.shape}: "
                          f"{shape_hint(got.shape, exp.shape)}"])
    if exp.size == 0:
        return Row(check, label, "ok", 0.0, 0.0)
    same = (exp == got) | (np.isnan(exp) & np.isnan(got))      # equal infs are equal
    ref_bad = ~np.isfinite(exp) & ~same                          # the reference's fault
    exp_c = np.where(ref_bad, got, exp)                          # compared where finite
    with np.errstate(invalid="ignore"):
        diff = np.where(same | ref_bad, 0.0, np.abs(got - exp_c))
    diff = np.where(np.isnan(diff), np.inf, diff)
    flat = int(np.argmax(diff))
    idx = np.unravel_index(flat, diff.shape)
    fin = np.isfinite(exp_c) & np.isfinite(got)
    rel = rel_error(exp_c[fin], got[fin]) if np.all(fin | same) else math.inf
    max_abs = float(diff.ravel()[flat])
    passed = rel <= tol[0] or max_abs <= tol[1]
    hints = []
    if not passed:
        hints = ([f"an error of the size of rounding at the precision the rule computes in "
                  f"(rel {rel:.1e}): no structural cause"] if rel <= noise else
                 diagnose(got, exp_c, tol=hint_tol, ref=ref, others=others, slices=slices))
    row = Row(check, label, "ok" if passed else "FAIL", max_abs, rel, idx,
              float(exp.ravel()[flat]), float(got.ravel()[flat]), hints)
    row.data = {"exp": exp, "got": got}
    if ref_bad.any():
        k = np.unravel_index(int(np.argmax(ref_bad)), ref_bad.shape)
        row.data["ref_bad"] = ref_bad
        row.hints.append(f"{ref} {_is_are(ref)} non-finite at {int(ref_bad.sum())} of "
                         f"{ref_bad.size} elements where the rule is not (at "
                         f"{tuple(int(i) for i in k)}: {ref} {exp[k]:.4g}, rule {got[k]:.4g})")
        if passed:
            row.status = "info"
    return row


def _is_are(ref: str) -> str:
    return "are" if ref.endswith("s") else "is"


def _compare(check, labels, exps, gots, tol, *, ref="autodiff", slices=True,
             noise=0.0) -> list:
    hint_tol = min(max(10 * tol[0], 1e-3), 5e-2)
    rows = []
    for i, (label, e, g) in enumerate(zip(labels, exps, gots, strict=True)):
        others = {labels[j]: exps[j] for j in range(len(labels)) if j != i
                  and exps[j] is not None}
        rows.append(_row(check, label, e, g, tol, hint_tol, others, ref, slices, noise))
    return rows


def _worst(row_sets: list) -> list:
    """Per leaf, the row of the worst of several comparisons (several cotangents)."""
    def badness(r):
        return ({"FAIL": 2, "info": 1}.get(r.status, 0),
                r.rel if not math.isnan(r.rel) else -1.0)
    return [max(rs, key=badness) for rs in zip(*row_sets, strict=True)]
