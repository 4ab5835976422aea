r"""How ``fbp.check_vjp`` runs its checks: each is a traced computation and a comparison.

All tasks are traced and compiled under one ``jax.jit`` (one compilation); if that fails,
each alone under ``jax.jit``, and if that fails too, eagerly (a rule that cannot be traced
under ``jit`` — an array built inside ``f`` at a ``nondiff_argnums`` position — is still
checked numerically; its ``jit`` row says why ``jit`` refuses it).  An exception a check
raises becomes a row: the check, the exception's type and first line.  A task marks what
the reference alone could not do (``state``), so that a reference JAX cannot differentiate
is a ``skip``, never a failure of the rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from fbp.check.args import _dtype, _inexact_only
from fbp.check.compile_options import fast_compile
from fbp.check.report import Row, _short
from fbp.numerical import _jit_call


@dataclass
class Task:
    check: str
    fn: object           # traced: fn(*inputs) -> arrays
    inputs: tuple
    post: object         # post(outputs) -> rows
    quiet: bool = False  # a helper for hints only: no row when it cannot run
    why: str = ""        # what it means when the check cannot run
    eager_ok: bool = True   # may fall back to eager evaluation
    state: dict = field(default_factory=dict)
    vjps: tuple | None = None   # (g, ref_g, fallback): fn(d, cts) is ``cotangent_batch``
    parts: list = field(default_factory=list)   # a merged task: the tasks it stands for


def rule_vjp(g):
    """The VJP of ``g`` as a function of the point and the cotangent (inexact leaves only)."""
    def rule(d, u):
        return _inexact_only(jax.vjp(g, *d)[1](u))
    return rule


def cotangent_batch(g, ref_g, state, d, cts, fallback=None):
    """(reference, rule): a stack of cotangents through one ``vmap`` of each VJP.  The
    reference is ``fallback(d)`` (or None, its error kept in ``state``) where JAX cannot
    differentiate it."""
    rule = jax.vmap(lambda u: rule_vjp(g)(d, u))(cts)
    ref = try_ref(state, lambda: jax.vmap(lambda u: rule_vjp(ref_g)(d, u))(cts))
    if ref is None and fallback is not None:
        ref = fallback(d)
    return ref, rule


def merge_vjps(tasks: list) -> list:
    """The tasks that push cotangent stacks through the same rule and reference at the same
    point (autodiff, the rows of the Jacobian) as one task: each VJP is traced and compiled
    once, for every cotangent of every check.  Each part keeps its own rows, and runs alone
    if the merged task cannot."""
    shared = [t for t in tasks if t.vjps is not None]
    if len(shared) < 2 or len({(id(t.vjps[0]), id(t.vjps[1]), id(t.inputs[0]))
                               for t in shared}) != 1:
        return tasks
    g, ref_g, _ = shared[0].vjps
    counts = [len(jax.tree_util.tree_leaves(t.inputs[1])[0]) for t in shared]
    ends = np.cumsum(counts)
    cts = jax.tree_util.tree_map(lambda *xs: jnp.asarray(np.concatenate(
        [np.asarray(x) for x in xs])), *[t.inputs[1] for t in shared])

    def fn(d, cts):
        state = {}
        ref, rule = cotangent_batch(g, ref_g, state, d, cts)
        outs = []
        for t, lo, hi in zip(shared, ends - counts, ends, strict=True):
            def cut(tree, lo=lo, hi=hi):
                return None if tree is None else jax.tree_util.tree_map(lambda x: x[lo:hi], tree)
            if ref is None:
                t.state.setdefault("ref_error", state["ref_error"])
            e = cut(ref)
            if e is None and t.vjps[2] is not None:
                e = t.vjps[2](d)
            outs.append((e, cut(rule)))
        return outs

    merged = Task(shared[0].check, fn, (shared[0].inputs[0], cts), None, parts=shared)
    at = tasks.index(shared[0])
    return [t for t in tasks[:at] if t not in shared] + [merged] + [
        t for t in tasks[at:] if t not in shared]


def run(tasks: list) -> list:
    """Rows of every task; each task's failure to run is its own row."""
    if not tasks:
        return []
    try:
        outs = _jit_call(lambda ins: [t.fn(*i) for t, i in zip(tasks, ins, strict=True)],
                         [t.inputs for t in tasks], compiler_options=fast_compile())
    except Exception:  # noqa: BLE001 — find out which check cannot run
        outs = None
    rows = []
    for n, t in enumerate(tasks):
        rows += _rows(t, (lambda n=n: outs[n]) if outs is not None else (lambda t=t: _alone(t)))
    return rows


def _rows(t: Task, result) -> list:
    """The rows of ``t`` from ``result()``; a merged task's parts each alone if it fails."""
    try:
        res = result()
        if t.parts:
            return [row for p, r in zip(t.parts, res, strict=True)
                    for row in _rows(p, lambda r=r: r)]
        return t.post(res)
    except Exception as err:  # noqa: BLE001 — a check that cannot run is a row
        if t.parts:
            return [row for p in t.parts for row in _rows(p, lambda p=p: _alone(p))]
        return [] if t.quiet else [Row(t.check, "(all)", "FAIL", hints=[t.why + _short(err)])]


def _alone(t: Task):
    try:
        return _jit_call(t.fn, *t.inputs, compiler_options=fast_compile())
    except Exception as err:
        if not t.eager_ok:
            raise
        t.state["eager"], t.state["jit_error"] = True, _short(err)
        return t.fn(*t.inputs)           # jit refuses f: the numbers eagerly


def try_ref(state: dict, fn, *a):
    """``fn(*a)`` at trace time; None (and the error kept in ``state``) if JAX refuses it."""
    try:
        return fn(*a)
    except Exception as err:  # noqa: BLE001 — the reference's fault, not the rule's
        state.setdefault("ref_error", err)
        return None


def ref_skip(check: str, state: dict) -> Row:
    return Row(check, "(all)", "skip", hints=[
        f"{check} skipped: JAX cannot differentiate the reference here "
        f"({_short(state['ref_error'])})"])


def scale(tree, k):
    """k · tree on the host (NumPy): nothing compiled for a constant of the checks."""
    return jax.tree_util.tree_map(lambda x: np.asarray(k * np.asarray(x), _dtype(x)), tree)


def stack(trees):
    """The trees stacked leaf by leaf on a new axis 0, on the host."""
    return jax.tree_util.tree_map(lambda *xs: jnp.asarray(np.stack([np.asarray(x) for x in xs])),
                                  *trees)
