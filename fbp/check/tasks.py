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

from fbp.check.args import _dtype
from fbp.check.report import Row, _short
from fbp.numerical import _jit_call

# XLA's optimisation passes cost more to run than the small programs of a check save.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


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


def run(tasks: list) -> list:
    """Rows of every task; each task's failure to run is its own row."""
    if not tasks:
        return []
    try:
        outs = _jit_call(lambda ins: [t.fn(*i) for t, i in zip(tasks, ins, strict=True)],
                         [t.inputs for t in tasks], compiler_options=_FAST_COMPILE)
    except Exception:  # noqa: BLE001 — find out which check cannot run
        outs = None
    rows = []
    for n, t in enumerate(tasks):
        try:
            rows += t.post(outs[n] if outs is not None else _alone(t))
        except Exception as err:  # noqa: BLE001 — a check that cannot run is a row
            if not t.quiet:
                rows.append(Row(t.check, "(all)", "FAIL", hints=[t.why + _short(err)]))
    return rows


def _alone(t: Task):
    try:
        return _jit_call(t.fn, *t.inputs, compiler_options=_FAST_COMPILE)
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
