r"""``check_vjp``: a hand-written VJP held against autodiff, Jacobians and finite differences.

    report = fbp.check_vjp(my_op, x, W, reference=my_op_in_plain_jnp)
    print(report)            # one row per (check, argument leaf), hints under failing rows
    assert report.ok

The checks, each one row per argument leaf (``params.W``, ``x``, ...):

structure      the rule's cotangents have the pytree structure, shapes and dtypes of the
               primal inputs, and fwd's primal output is the primal function's
               (``fbp.check.structure``).
autodiff       the VJP through the rule vs ``jax.vjp`` of ``reference`` for several random
               cotangents (default reference: ``f``'s jaxpr with every custom rule replaced
               by the primal code it wraps, JAX's own library rules kept,
               ``fbp.check.reference``).
jacobian       every row of the Jacobian through the rule vs the reference's when the output
               is small (reverse mode, or forward mode where JAX cannot reverse the
               reference: a ``while_loop``); random projections ⟨u, J v⟩ when it is large.
finite-diff    the VJP vs central differences of ``f`` itself: needs no reference at all.
jit, vmap, rev-over-rev   the rule against itself (``fbp.check.transforms``).

What is not the rule's fault is never a failure: a reference JAX cannot differentiate is a
``skip`` row, a non-finite reference an ``info`` row saying whether finite differences agree
with the rule, a disagreement confined to kinks an ``info`` row (``fbp.check.kinks``), an
exception inside a check its own row.  Every skip and info row says which checks still vouch
for the rule.  ``rule="surrogate"`` declares a rule that is meant not to be the derivative.
"""

from __future__ import annotations

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

from fbp.check.args import Args, _dtype, _is_complex, _leaves, _precision, _random_like
from fbp.check.fd import fd_vjp
from fbp.check.jacobian import jacobian_task
from fbp.check.kinks import KINK_CHECKS, flat_cotangent, kink_task
from fbp.check.reference import primal_full
from fbp.check.report import Row, VJPCheckError, VJPReport, _compare, _short, _worst
from fbp.check.structure import output_rows, structure_rows
from fbp.check.tasks import (
    Task,
    cotangent_batch,
    merge_vjps,
    ref_skip,
    rule_vjp,
    run,
    scale,
    stack,
)
from fbp.check.transforms import (
    PER_EXAMPLE_WHY,
    alone_task,
    batch_candidates,
    jit_task,
    per_example_task,
    rev_over_rev_task,
    vmap_task,
)
from fbp.numerical import default_eps

__all__ = ["ALL_CHECKS", "INTENTS", "TOLERANCES", "VJPCheckError", "VJPReport", "check_vjp"]

ALL_CHECKS = ("structure", "autodiff", "jacobian", "finite-diff", "jit", "vmap", "rev-over-rev")

# derivative: the rule is the derivative.  surrogate: a linear map of ḡ meant to differ from
# it (straight-through, gradient scaling/reversal).  nonlinear-surrogate: need not even be
# linear in ḡ (clipping the cotangent's norm).
INTENTS = ("derivative", "surrogate", "nonlinear-surrogate")

# (rtol, atol) for comparisons against exact derivatives, and for finite differences.
TOLERANCES = {
    "float64": {"exact": (1e-10, 1e-13), "fd": (1e-7, 1e-10)},
    "float32": {"exact": (1e-5, 1e-7), "fd": (1e-3, 1e-5)},
    "float16": {"exact": (1e-2, 1e-3), "fd": (2e-1, 1e-2)},
    "bfloat16": {"exact": (2e-2, 1e-2), "fd": (3e-1, 1e-1)},
}
_NUMERIC = ("autodiff", "jacobian", "finite-diff")


def _tol(given, default):
    return tuple(d if g is None else g for g, d in zip(given, default, strict=True))


def _eps(dtype) -> float:
    return float(jnp.finfo(dtype).eps)


# Operations that only move, pick or widen values: exact inputs give exact outputs.
# (A cast from bool or int is exact: its inputs are; a float cast of an exact value is too.)
_EXACT_OPS = {"broadcast_in_dim", "reshape", "transpose", "squeeze", "expand_dims", "slice",
              "dynamic_slice", "concatenate", "select_n", "copy", "copy_p", "rev", "pad",
              "gather", "iota", "stop_gradient", "convert_element_type"}


def _narrowest(g, dyn, u) -> str | None:
    """The coarsest float dtype of any non-scalar value the VJP computes with (a float32
    accumulation inside a float64 call), or None.  Values that round nothing do not count:
    masks and casts from bool or int, constants, and what is only moved or widened from
    them (``(x > 0).astype(jnp.float16)``, ``jnp.ones(n, jnp.float16)``)."""
    try:
        jaxpr = jax.make_jaxpr(lambda d, u: jax.vjp(g, *d)[1](u))(dyn, u).jaxpr
    except Exception:  # noqa: BLE001 — f runs eagerly only: nothing to inspect
        return None
    found = set()

    def exact_in(v, exact):
        return isinstance(v, jex.Literal) or v in exact or not jnp.issubdtype(
            v.aval.dtype, jnp.inexact)

    def walk(j, exact):
        exact = set(exact) | set(j.constvars)
        for e in j.eqns:
            subs = _calls(e)
            if len(subs) == 1 and len(subs[0].invars) == len(e.invars) and len(
                    subs[0].outvars) == len(e.outvars):      # a call: its inside counts
                inner = walk(subs[0], {w for w, v in zip(subs[0].invars, e.invars,
                                                         strict=True) if exact_in(v, exact)})
                exact.update(o for o, w in zip(e.outvars, subs[0].outvars, strict=True)
                             if exact_in(w, inner))
                continue
            if e.primitive.name in _EXACT_OPS and all(exact_in(v, exact) for v in e.invars):
                exact.update(e.outvars)
            for v in e.outvars:
                a = getattr(v, "aval", None)
                if (v not in exact and getattr(a, "ndim", 0) >= 1
                        and jnp.issubdtype(a.dtype, jnp.inexact)):
                    found.add(_precision(a.dtype))
            for sub in subs:                 # a loop or branch: its inputs may round
                walk(sub, set())
        return exact
    walk(jaxpr, set())
    return max(found, key=_eps) if found else None


def _calls(eqn) -> list:
    """The sub-jaxprs of an equation (a call, a loop body, a branch, a custom rule)."""
    out = []
    for v in eqn.params.values():
        for x in (v if isinstance(v, (tuple, list)) else (v,)):
            if isinstance(x, jex.ClosedJaxpr):
                out.append(x.jaxpr)
            elif isinstance(x, jex.Jaxpr):
                out.append(x)
    return out


def check_vjp(f, *args, reference=None, checks=ALL_CHECKS, n_cotangents: int = 3,
              rtol=None, atol=None, fd_rtol=None, fd_atol=None, eps=None,
              max_jacobian_rows: int = 64, n_projections: int = 8, batch_argnums=None,
              seed: int = 0, raise_on_fail: bool = False, name: str | None = None,
              rule: str = "derivative", f_kwargs: dict | None = None,
              n_draws: int = 3) -> VJPReport:
    r"""Check the reverse-mode rule of ``f`` at ``args`` every way there is; see the module doc.

    Args:
      f: a ``jax.custom_vjp`` function (any ``nondiff_argnums``, ``symbolic_zeros``), or any
        function that calls some (fbp's public ops).
      *args: its arguments.  Floating and complex leaves, and Python floats, are
        differentiated, leaf by leaf; integer arrays, PRNG keys and anything else are held,
        and so is every argument at a ``nondiff_argnums`` position of ``f``.
      reference: a function with ``f``'s signature differentiated by JAX's own autodiff,
        returning what ``f`` returns (pytree, shapes, dtypes);
        default: ``f``'s own forward code with every custom rule replaced by its primal
        (the rules of JAX's own functions, ``jax.nn.softplus``, ``xlogy``, are kept).
      checks: a non-empty subset of ``ALL_CHECKS`` (a tuple, or one name alone).
      n_cotangents: random cotangents for the autodiff check (the worst one is reported).
      rtol, atol: tolerances against exact derivatives (autodiff, jacobian, jit, vmap);
        fd_rtol, fd_atol: against finite differences.  Default: ``TOLERANCES[dtype]``, of
        the coarser dtype where the rule computes in lower precision inside.
      eps: the relative finite-difference step (default from ``fbp.numerical``).
      max_jacobian_rows: full Jacobian up to this many outputs, projections beyond.
      n_projections: random ⟨u, J v⟩ per argument leaf for large outputs.
      batch_argnums: positions of arguments whose axis 0 is a batch of independent
        examples: adds the per-example vmap check.  The vmap check itself stacks
        ``n_draws`` draws of all inputs on a new axis and needs no batch.
      seed: seeds the NumPy generator of the random cotangents, draws and projections.
      raise_on_fail: raise ``VJPCheckError`` with the table when a row fails.
      name: the name printed in the report.
      rule: the declared intent, one of ``INTENTS``: ``"surrogate"`` checks structure,
        jit, vmap, rev-over-rev and linearity in ḡ, and reports the difference from the
        derivative as information; ``"nonlinear-surrogate"`` reports linearity as
        information too.
      f_kwargs: keyword arguments of ``f`` (their float leaves are differentiated too).
      n_draws: draws stacked on the new axis of the vmap check.
    Returns:
      a ``VJPReport``: ``.ok``, ``.rows``, ``.failures``, ``.skipped``, ``.info``, ``str()``.
    Raises:
      TypeError, ValueError: at once, for a bad call of ``check_vjp`` itself (an ``f`` or
        ``reference`` that is not a function, a reference returning other outputs than
        ``f``, unknown or no ``checks``, an array of dtype object); never for the rule.
    """
    checks = _checks_asked(checks)
    if not callable(f):
        raise TypeError("f must be a function (a jax.custom_vjp, or any function calling "
                        f"some); got {type(f).__name__} {repr(f)[:80]}.  Pass the function "
                        "itself: check_vjp(my_op, x), not check_vjp(my_op(x), x).")
    if reference is not None and not callable(reference):
        raise TypeError("reference must be a function with f's signature, or None for the "
                        f"default; got {type(reference).__name__} {repr(reference)[:80]}.  "
                        "Pass e.g. reference=lambda x: jnp.tanh(x).")
    if rule not in INTENTS:
        raise ValueError(f"rule must be one of {INTENTS}; got {rule!r}.")
    name = name or getattr(f, "__name__", type(f).__name__)
    a = _prepare(f, args, f_kwargs or {})
    if reference is not None:
        _same_outputs(f, reference, a)
    notes = [a.note] if a.note else []
    rows = []
    try:
        rows += _checks(f, a, reference, checks, rule, notes, dict(
            n_cotangents=n_cotangents, given=((rtol, atol), (fd_rtol, fd_atol)), eps=eps,
            max_rows=max_jacobian_rows, n_proj=n_projections, batch_argnums=batch_argnums,
            rng=np.random.default_rng(seed), n_draws=n_draws))
    except Exception as err:  # noqa: BLE001 — never raise for a problem of the rule
        rows.append(Row("structure", "(all)", "FAIL", hints=[_short(err)]))
    _vouch(rows)
    report = VJPReport(name, a.dtype(), rows, notes)
    if raise_on_fail and not report.ok:
        raise VJPCheckError("\n" + str(report))
    return report


def _checks_asked(checks) -> tuple:
    """``checks`` as a tuple of names: one name alone is a tuple of one."""
    if isinstance(checks, str):
        checks = (checks,)
    try:
        checks = tuple(checks)
    except TypeError:
        raise TypeError(f"checks must be a tuple of names from {ALL_CHECKS}; got "
                        f"{type(checks).__name__} {repr(checks)[:80]}.") from None
    unknown = [c for c in checks if c not in ALL_CHECKS]
    if unknown:
        raise ValueError(f"checks must be among {ALL_CHECKS}; got {unknown}.")
    if not checks:
        raise ValueError("checks is empty, so nothing would be checked: leave it out for "
                         "every check, or name some of ALL_CHECKS, e.g. checks=('autodiff',).")
    return checks


def _same_outputs(f, reference, a: Args) -> None:
    """A given reference returns what ``f`` returns: the pytree, shapes and dtypes."""
    try:
        want, got = (jax.eval_shape(a.bind(fn), *a.dyn) for fn in (f, reference))
    except Exception:  # noqa: BLE001 — f or the reference runs eagerly only: the checks tell
        return

    def spec(tree):
        return str(jax.tree_util.tree_map(lambda x: f"{x.dtype}{list(x.shape)}", tree)
                   ).replace("'", "")
    if spec(want) != spec(got) or (jax.tree_util.tree_structure(want)
                                   != jax.tree_util.tree_structure(got)):
        raise ValueError(f"reference must return what f returns: f returns {spec(want)}, "
                         f"reference returns {spec(got)} at these arguments.  Make reference "
                         "compute f's outputs, in the same pytree, shapes and dtypes.")


def _prepare(f, args, kwargs) -> Args:
    a = Args.of(f, args, kwargs)
    a.note = ""
    if a.has_python_floats:
        try:
            jax.eval_shape(a.bind(f), *a.dyn)
        except Exception as err:  # noqa: BLE001 — f wants them concrete: hold them
            a = Args.of(f, args, kwargs, hold_floats=True)
            a.note = f"Python floats held static: f refuses them traced ({_short(err)})"
    if not jax.tree_util.tree_leaves(a.dyn):
        raise ValueError("check_vjp needs at least one floating-point array argument (or a "
                         "Python float) to differentiate; got "
                         f"{[type(x).__name__ for x in [*args, *kwargs.values()]]}.")
    return a


def _checks(f, a: Args, reference, checks, intent, notes, o) -> list:
    g, dyn, labels, rng = a.bind(f), a.dyn, a.labels, o["rng"]
    dtype = a.dtype()
    defaults = TOLERANCES.get(dtype, TOLERANCES["float32"])
    try:
        out = g(*dyn)
    except Exception as err:  # noqa: BLE001
        return [Row("structure", "(all)", "FAIL", hints=["f raises: " + _short(err)])]
    if not jax.tree_util.tree_leaves(out):
        raise TypeError("f must return floating-point arrays to have a VJP.")
    rows = []
    if "structure" in checks:
        r, n = structure_rows(f, a, g)
        rows += r
        notes += n
    try:
        fwd_out, vjp_fn = jax.vjp(g, *dyn)
        us = [_random_like(rng, out) for _ in range(max(o["n_cotangents"], 1))]
        eager = _leaves(vjp_fn(us[0]))
    except Exception as err:  # noqa: BLE001 — the rule cannot run: report why
        if any(r.status == "FAIL" for r in rows):    # already explained, argument by argument
            notes.append("JAX refuses the rule, so no numerical check could run")
        else:
            rows.append(Row("structure", "(all)", "FAIL", hints=[_short(err)]))
        return rows
    eps, narrow = o["eps"], _narrowest(g, dyn, us[0])
    if narrow and _eps(narrow) > _eps(dtype):
        notes.append(f"the rule computes in {narrow} inside a {dtype} call: {narrow} "
                     "tolerances and finite-difference steps apply")
        defaults = TOLERANCES.get(narrow, TOLERANCES["float32"])
        eps = eps or default_eps(narrow, 2)
    exact, fd = _tol(o["given"][0], defaults["exact"]), _tol(o["given"][1], defaults["fd"])
    noise = 1e3 * _eps(narrow or dtype)
    if "structure" in checks:
        rows += output_rows(out, fwd_out, exact)
    ref_f = reference if reference is not None else primal_full(f)
    ref_g = a.bind(ref_f)
    notes.append("reference: " + ("the one given" if reference is not None else
                                  "autodiff of f's undecorated primal code (its jaxpr, every "
                                  "custom rule but JAX's own replaced by the code it wraps)"))
    cplx = any(_is_complex(x) for x in jax.tree_util.tree_leaves((dyn, out)))
    sizes = [int(np.size(x)) for x in jax.tree_util.tree_leaves(dyn)]
    tasks, kink_fns, extra = [], {}, {}
    if "autodiff" in checks:
        tasks.append(_autodiff_task(g, ref_g, dyn, us, labels, exact, noise, intent, extra))
    if "jacobian" in checks and intent == "derivative":
        tasks.append(jacobian_task(g, ref_g, dyn, out, labels, exact, o["max_rows"],
                                   o["n_proj"], rng))
    if "finite-diff" in checks:
        u_flat = None if cplx else flat_cotangent(jax.tree_util.tree_leaves(us[0]))

        def fd_rows(res):
            rs = _compare("finite-diff", labels, _leaves(res[0]), _leaves(res[1]), fd,
                          ref="finite differences", noise=noise)
            for j, r in enumerate(rs):
                r.data.update(u=u_flat, tol=fd, leaf=j)
            return rs
        tasks.append(Task("finite-diff", lambda d, u: (fd_vjp(g, d, u, eps), rule_vjp(g)(d, u)),
                          (dyn, us[0]), fd_rows))
    if "jit" in checks:
        tasks.append(jit_task(g, dyn, us[0], eager, labels, exact))
    cand = None
    if "vmap" in checks:
        tasks.append(vmap_task(g, dyn, out, labels, exact, rng, max(o["n_draws"], 2)))
        if o["batch_argnums"] is not None and len(np.atleast_1d(o["batch_argnums"])):
            cand = batch_candidates(a, o["batch_argnums"])
            if cand is None:
                rows.append(Row("vmap", "(all) [per example]", "skip", hints=[
                    "per-example vmap check skipped: the batch_argnums arguments share no "
                    "leading batch size ≥ 2"]))
            else:
                try:
                    tasks.append(per_example_task(f, a, cand, labels, exact, rng))
                except Exception as err:  # noqa: BLE001 — f needs its batch axis: one row
                    rows.append(Row("vmap", "(all) [per example]", "FAIL", hints=[
                        PER_EXAMPLE_WHY + "f itself raises " + _short(err) + "; if f needs "
                        "its batch axis, leave out batch_argnums (the vmap check over a new "
                        "axis of draws needs none)"]))
    narrowed = [lab for lab, p, c in zip(labels, jax.tree_util.tree_leaves(dyn), eager,
                                         strict=True)
                if c is not None and c.dtype != _dtype(p)]
    if "rev-over-rev" in checks and narrowed:
        rows.append(Row("rev-over-rev", "(all)", "skip", hints=[
            f"rev-over-rev skipped: the rule returns {', '.join(narrowed)} in a narrower "
            "dtype than the input, too coarse for finite differences"]))
    elif "rev-over-rev" in checks:
        tasks.append(rev_over_rev_task(g, dyn, us[0], labels, fd, eps, rng, kink_fns))
    rows += run(merge_vjps(tasks))
    _after(rows, f, ref_f, a, g, dyn, cplx, sizes, eps, exact, intent, kink_fns,
           extra, o, cand)
    return rows


def _autodiff_task(g, ref_g, dyn, us, labels, tol, noise, intent, extra) -> Task:
    n = len(us)              # the last cotangent is 2·us[0]: a VJP is linear in ḡ
    flat_us = [None if any(_is_complex(x) for x in jax.tree_util.tree_leaves(u)) else
               flat_cotangent(jax.tree_util.tree_leaves(u)) for u in us]
    extra["nonlinear"] = []

    def both(d, us):     # vmap over the cotangents: one copy of each VJP to compile
        return cotangent_batch(g, ref_g, task.state, d, us)

    def post(res):
        r = _leaves(res[1])
        lin = _compare("linearity", labels, [None if x is None else 2 * x[0] for x in r],
                       [None if x is None else x[n] for x in r], tol, ref="2 × VJP(ḡ)")
        extra["nonlinear"] += [row.arg for row in lin if row.status == "FAIL"]
        out = lin if intent != "derivative" else []
        if res[0] is None:
            return [*out, ref_skip("autodiff", task.state)]
        e = _leaves(res[0])
        sets = []
        for k in range(n):
            rs = _compare("autodiff", labels, [None if x is None else x[k] for x in e],
                          [None if x is None else x[k] for x in r], tol, noise=noise)
            for j, row in enumerate(rs):
                row.data.update(u=flat_us[k], tol=tol, leaf=j)
            sets.append(rs)
        return [*out, *_worst(sets)]

    task = Task("autodiff", both, (dyn, stack([*us, scale(us[0], 2)])), post,
                vjps=(g, ref_g, None))
    return task


def _after(rows, f, ref_f, a, g, dyn, cplx, sizes, eps, exact, intent, kink_fns,
           extra, o, cand) -> None:
    """Hints and re-readings once every check has run."""
    failing = [r for r in rows if r.status == "FAIL" and r.check in _NUMERIC]
    alone, helpers = [], []
    if failing and o["batch_argnums"] != ():
        cand = cand or batch_candidates(a, None)
        if cand is not None:
            try:
                helpers.append(alone_task(f, ref_f, a, cand, a.labels, exact, o["rng"], alone))
            except Exception:  # noqa: BLE001, S110 — a hint only
                pass
    if intent == "derivative" and not cplx:
        helpers += _kink_tasks(rows, g, dyn, sizes, eps, kink_fns)
    run(helpers)                 # one compilation for the helpers of the hints
    failing = [r for r in failing if r.status == "FAIL"]     # kinks are information
    if failing:
        if alone and all(alone) and any(r.check in ("autodiff", "jacobian") for r in failing):
            for r in failing:                # (alone is against the reference, as they are)
                r.hints.append("correct for each example alone (batch size 1) but not for "
                               "the batch: the rule mixes examples or mishandles the batch axis")
    for r in failing:
        if r.arg in extra.get("nonlinear", []):
            r.hints.insert(0, "not linear in the incoming cotangent ḡ: the rule ignores ḡ "
                              "(assumes ḡ = 1?) or adds a term that does not scale with it")
    fd_rows = {r.arg: r for r in rows if r.check == "finite-diff"}
    for r in rows:
        if "ref_bad" in r.data and r.check in ("autodiff", "jacobian"):
            fd_row = fd_rows.get(r.arg)
            r.hints.append("finite differences agree with the rule (its finite-diff row is ok)"
                           if fd_row is not None and fd_row.status == "ok" else
                           "finite differences do not settle it: see the finite-diff row")
    if intent != "derivative":
        for r in rows:
            if r.check in _NUMERIC or (r.check == "linearity" and intent != "surrogate"):
                if r.status in ("ok", "FAIL"):
                    what = "agrees with" if r.status == "ok" else "differs from"
                    r.hints = [f"declared a {intent}: {what} the "
                               f"{'derivative' if r.check != 'linearity' else 'linear map'} "
                               f"here (rel {r.rel:.2e})"]
                    r.status = "info"


def _kink_tasks(rows, g, dyn, sizes, eps, kink_fns) -> list:
    wanted = {c: [r for r in rows if r.check == c and r.status == "FAIL"
                  and r.data.get("u") is not None] for c in KINK_CHECKS}
    tasks = []
    refs = {"autodiff": "autodiff", "jacobian": "autodiff",
            "finite-diff": "finite differences", "rev-over-rev": "finite differences"}
    first = wanted["autodiff"] + wanted["jacobian"] + wanted["finite-diff"]
    if first and sum(sizes) <= 4096:
        tasks.append(kink_task(g, dyn, eps, first, sizes, refs))
    if wanted["rev-over-rev"] and "rev-over-rev" in kink_fns and sum(sizes) <= 4096:
        h, _ = kink_fns["rev-over-rev"]()
        tasks.append(kink_task(h, dyn, eps, wanted["rev-over-rev"], sizes, refs))
    return tasks


def _vouch(rows) -> None:
    """Each skip and info row: the checks that still vouch for the rule."""
    order = [c for c in ALL_CHECKS + ("linearity",) if any(r.check == c for r in rows)]
    good = [c for c in order if any(r.check == c and r.status == "ok" for r in rows)
            and not any(r.check == c and r.status == "FAIL" for r in rows)]
    for r in rows:
        if r.status in ("skip", "info"):
            r.hints.append("still vouching for the rule: " + (", ".join(good) or "no check"))
