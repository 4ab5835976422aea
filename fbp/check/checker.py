r"""``check_vjp``: a hand-written VJP held against autodiff, Jacobians and finite differences.

    report = fbp.check_vjp(my_op, x, W, reference=my_op_in_plain_jnp)
    print(report)            # one row per (check, argument leaf), hints under failing rows
    assert report.ok

The checks, each one row per argument leaf (``params.W``, ``x``, ...):

structure      the rule's cotangents have the pytree structure, shapes and dtypes of the
               primal inputs (integer inputs get None/float0); run on the rule itself, so
               the report says which argument and which shape instead of JAX's error.
autodiff       the VJP through the rule vs ``jax.vjp`` of ``reference`` for several random
               cotangents (default reference: the undecorated primal of every
               ``jax.custom_vjp`` that ``f`` calls, i.e. autodiff of the forward code).
jacobian       every row of the Jacobian through the rule vs ``jax.jacrev(reference)`` when
               the output is small; random projections ⟨u, J v⟩ (v through ``jax.jvp`` of
               the reference) when it is large.
finite-diff    the VJP vs central differences of ``f`` itself (``fbp.numerical``): needs
               no reference at all.
jit            the VJP under ``jax.jit`` equals the eager one.
vmap           per-example VJPs under ``jax.vmap`` equal a Python loop over examples.
rev-over-rev   ``jax.grad`` of ⟨w, VJP(x)⟩ vs finite differences of that first-order VJP.

Tolerances default by dtype (see ``TOLERANCES``); all are arguments.  Failing rows carry
hints from ``fbp.check.diagnose`` where the error has a recognisable shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from fbp.check.args import (
    _arg_names,
    _dtype,
    _dtype_of,
    _float_leaves,
    _is_dynamic,
    _is_float,
    _leaf_labels,
    _no_ints,
    _random_like,
)
from fbp.check.reference import _custom_vjp_calls, _primal_of
from fbp.check.report import Row, VJPCheckError, VJPReport, _compare, _short, _worst
from fbp.check.structure import _structure_rows
from fbp.numerical import _jit_call, _numerical_vjp, rel_error

__all__ = ["ALL_CHECKS", "TOLERANCES", "VJPCheckError", "VJPReport", "check_vjp"]

# The two-point stencil (step ∛ε) in the checks: half the evaluations of the default
# five-point one, and ~1e-10 relative in float64, far inside the finite-difference tolerance.
_FD_ORDER = 2

# XLA's optimisation passes cost more to run than the small programs of a check save.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}

ALL_CHECKS = ("structure", "autodiff", "jacobian", "finite-diff", "jit", "vmap", "rev-over-rev")

# (rtol, atol) for comparisons against exact derivatives, and for finite differences.
TOLERANCES = {
    "float64": {"exact": (1e-10, 1e-13), "fd": (1e-7, 1e-10)},
    "float32": {"exact": (1e-5, 1e-7), "fd": (1e-3, 1e-5)},
    "float16": {"exact": (1e-2, 1e-3), "fd": (2e-1, 1e-2)},
    "bfloat16": {"exact": (2e-2, 1e-2), "fd": (3e-1, 1e-1)},
}



# ── the checker: each check is a traced computation and a comparison of its results ──

@dataclass
class _Task:
    check: str
    fn: object          # traced: fn(*inputs) -> arrays
    inputs: tuple
    post: object        # post(outputs) -> rows
    quiet: bool = False  # a helper for hints only: no row when it cannot run
    why: str = ""        # what it means when the check cannot run


def _run(tasks: list) -> list:
    """All tasks under one jax.jit (one compilation); one by one if that fails."""
    try:
        outs = _jit_call(lambda ins: [t.fn(*i) for t, i in zip(tasks, ins, strict=True)],
                         [t.inputs for t in tasks], compiler_options=_FAST_COMPILE)
    except Exception:  # noqa: BLE001 — find out which check cannot run
        outs = None
    rows = []
    for n, t in enumerate(tasks):
        try:
            rows += t.post(outs[n] if outs is not None else _jit_call(t.fn, *t.inputs))
        except Exception as err:  # noqa: BLE001 — a check that cannot run is a failure
            if not t.quiet:
                rows.append(Row(t.check, "(all)", "FAIL", hints=[t.why + _short(err)]))
    return rows


def _scale(tree, k):
    return jax.tree_util.tree_map(lambda x: k * x, tree)


def _stack(trees):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def _tol(given, default):
    return tuple(d if g is None else g for g, d in zip(given, default, strict=True))


def check_vjp(f, *args, reference=None, checks=ALL_CHECKS, n_cotangents: int = 3,
              rtol=None, atol=None, fd_rtol=None, fd_atol=None, eps=None,
              max_jacobian_rows: int = 64, n_projections: int = 8, batch_argnums=None,
              seed: int = 0, raise_on_fail: bool = False, name: str | None = None) -> VJPReport:
    r"""Check the reverse-mode rule of ``f`` at ``args`` every way there is; see the module doc.

    Args:
      f: a ``jax.custom_vjp`` function, or any function that calls some (fbp's public ops).
      *args: its arguments.  Pytrees of arrays are differentiated (integer leaves get no
        cotangent); anything else (Python numbers, strings) is held static.
      reference: a function with ``f``'s signature differentiated by JAX's own autodiff;
        default: ``f.fun`` for a ``custom_vjp``, else ``f`` with every ``custom_vjp`` it
        calls running its undecorated primal code.  Pass one built from ``jax.nn`` / plain
        ``jnp`` for an independent check.
      checks: a subset of ``ALL_CHECKS``.
      n_cotangents: random cotangents for the autodiff check (the worst one is reported).
      rtol, atol: tolerances against exact derivatives (autodiff, jacobian, jit, vmap);
        fd_rtol, fd_atol: against finite differences.  Default: ``TOLERANCES[dtype]``.
        A row passes when its relative error ≤ rtol or its max abs error ≤ atol.
      eps: the relative finite-difference step (default from ``fbp.numerical``).
      max_jacobian_rows: full Jacobian up to this many outputs, projections beyond.
      n_projections: random ⟨u, J v⟩ per argument leaf for large outputs.
      batch_argnums: positions of the arguments whose axis 0 is the batch, for the vmap
        check; default: the highest-rank array argument, and every other array argument
        with the same leading size.  ``()`` skips the vmap check.
      seed: seeds the NumPy generator of the random cotangents and projections.
      raise_on_fail: raise ``VJPCheckError`` with the table when a row fails.
      name: the name printed in the report.
    Returns:
      a ``VJPReport``: ``.ok``, ``.rows``, ``.failures``, and a readable ``str()``.
    """
    unknown = set(checks) - set(ALL_CHECKS)
    if unknown:
        raise ValueError(f"checks must be among {ALL_CHECKS}; got {sorted(unknown)}.")
    name = name or getattr(f, "__name__", type(f).__name__)
    rng = np.random.default_rng(seed)
    dyn_pos = [i for i, a in enumerate(args) if _is_dynamic(a)]
    if not dyn_pos:
        raise ValueError("check_vjp needs at least one array argument to differentiate; "
                         f"got {[type(a).__name__ for a in args]}.")
    names = _arg_names(f, len(args))
    labels = [lab for i in dyn_pos for lab in _leaf_labels(args[i], names[i])]
    dyn = tuple(args[i] for i in dyn_pos)
    dtype = _dtype_of(jax.tree_util.tree_leaves(dyn))
    defaults = TOLERANCES.get(dtype, TOLERANCES["float32"])
    exact, fd = _tol((rtol, atol), defaults["exact"]), _tol((fd_rtol, fd_atol), defaults["fd"])
    rows, notes = [], []

    def bind(fn):
        def g(*d):
            full = list(args)
            for i, a in zip(dyn_pos, d, strict=True):
                full[i] = a
            return fn(*full)
        return g

    g = bind(f)
    record = []
    with _custom_vjp_calls(record=record):
        out = g(*dyn)
    if not all(_is_float(x) for x in jax.tree_util.tree_leaves(out)):
        raise TypeError(f"{name} must return floating-point arrays to have a VJP.")
    if "structure" in checks:
        if record:
            rows += _structure_rows(record, f, names)
        else:
            notes.append(f"{name} calls no jax.custom_vjp: nothing for the structure check")
    try:
        out, vjp_fn = jax.vjp(g, *dyn)
        us = [_random_like(rng, out) for _ in range(max(n_cotangents, 1))]
        eager = _float_leaves(vjp_fn(us[0]))
    except Exception as err:  # noqa: BLE001 — the rule cannot run: report why
        if any(r.status == "FAIL" for r in rows):    # already explained, argument by argument
            notes.append("JAX refuses the rule, so no numerical check could run")
        else:
            rows.append(Row("structure", "(all)", "FAIL", hints=[_short(err)]))
        return _finish(VJPReport(name, dtype, rows, notes), raise_on_fail)
    ref = reference if reference is not None else _primal_of(f)
    notes.append("reference: " + ("the one given" if reference is not None else
                                  f"autodiff of {name}'s undecorated primal code"))
    ref_g = bind(ref)

    def rule(d, u):
        return _no_ints(jax.vjp(g, *d)[1](u))

    tasks, nonlinear = [], []
    if "autodiff" in checks:
        def autodiff(d, us):    # vmap over the cotangents: one copy of each VJP to compile
            ref_vjp, rule_vjp = jax.vjp(ref_g, *d)[1], jax.vjp(g, *d)[1]
            return jax.vmap(lambda u: (_no_ints(ref_vjp(u)), _no_ints(rule_vjp(u))))(us)

        def autodiff_rows(res):
            e, r = _float_leaves(res[0]), _float_leaves(res[1])
            n = len(us)          # the last cotangent is 2·us[0]: a VJP is linear in ḡ
            nonlinear.extend(lab for lab, x in zip(labels, r, strict=True) if x is not None
                             and rel_error(2 * x[0], x[n]) > exact[0] and
                             np.max(np.abs(2 * x[0] - x[n])) > exact[1])
            return _worst([_compare("autodiff", labels, [None if x is None else x[k] for x in e],
                                    [None if x is None else x[k] for x in r], exact)
                           for k in range(n)])

        tasks.append(_Task("autodiff", autodiff, (dyn, _stack([*us, _scale(us[0], 2)])),
                           autodiff_rows))
    if "jacobian" in checks:
        tasks.append(_jacobian_task(g, ref_g, dyn, out, labels, exact, max_jacobian_rows,
                                    n_projections, rng))
    if "finite-diff" in checks:
        tasks.append(_Task(
            "finite-diff", lambda d, u: (_numerical_vjp(g, d, u, eps, _FD_ORDER), rule(d, u)),
            (dyn, us[0]), lambda res: _compare("finite-diff", labels, _float_leaves(res[0]),
                                               _float_leaves(res[1]), fd,
                                               ref="finite differences")))
    if "jit" in checks:
        tasks.append(_Task("jit", rule, (dyn, us[0]), lambda res: _compare(
            "jit", labels, eager, _float_leaves(res), exact, ref="eager")))
    alone, alone_task = [], None
    if "vmap" in checks:
        vm_tasks, note = _vmap_tasks(g, ref_g, args, dyn, dyn_pos, batch_argnums, labels,
                                     exact, rng, alone)
        tasks += vm_tasks[:1]
        alone_task = vm_tasks[1] if len(vm_tasks) > 1 else None
        if note:
            notes.append(note)
            rows.append(Row("vmap", "(all)", "skip"))
    narrowed = [lab for lab, p, c in zip(labels, jax.tree_util.tree_leaves(dyn), eager,
                                         strict=True)
                if c is not None and c.dtype != _dtype(p)]
    if "rev-over-rev" in checks and narrowed:
        notes.append(f"rev-over-rev skipped: the rule returns {', '.join(narrowed)} in a "
                     "narrower dtype than the input, too coarse for finite differences")
    elif "rev-over-rev" in checks:
        tasks.append(_rev_over_rev_task(g, dyn, us[0], labels, fd, eps, rng))
    rows += _run(tasks)
    if alone_task and any(r.status == "FAIL" and r.check in _NUMERIC for r in rows):
        _run([alone_task])      # only for a hint, so only when there is something to explain
    for r in rows:
        if r.status == "FAIL" and r.check in _NUMERIC and r.arg in nonlinear:
            r.hints.insert(0, "not linear in the incoming cotangent ḡ: the rule ignores ḡ "
                              "(assumes ḡ = 1?) or adds a term that does not scale with it")
    if alone and all(alone):
        for r in rows:
            if r.status == "FAIL" and r.check in _NUMERIC:
                r.hints.append("correct for each example alone (batch size 1) but not for "
                               "the batch: the rule mixes examples or mishandles the batch axis")
    return _finish(VJPReport(name, dtype, rows, notes), raise_on_fail)


_NUMERIC = ("autodiff", "jacobian", "finite-diff")


def _finish(report: VJPReport, raise_on_fail: bool) -> VJPReport:
    if raise_on_fail and not report.ok:
        raise VJPCheckError("\n" + str(report))
    return report


def _jacobian_task(g, ref_g, dyn, out, labels, tol, max_rows, n_proj, rng) -> _Task:
    out_leaves, out_tree = jax.tree_util.tree_flatten(out)
    sizes = [int(np.size(o)) for o in out_leaves]
    n_out = sum(sizes)
    if n_out <= max_rows:      # every row of J: the rule's VJP of each basis cotangent
        def unflat(e):
            parts = jnp.split(e, list(np.cumsum(sizes)[:-1]))
            return out_tree.unflatten([p.reshape(np.shape(o)).astype(_dtype(o))
                                       for p, o in zip(parts, out_leaves, strict=True)])

        def ref_flat(*d):
            return jnp.concatenate([jnp.ravel(o) for o in jax.tree_util.tree_leaves(ref_g(*d))])

        def both(d):
            rule_vjp = jax.vjp(g, *d)[1]
            basis = jnp.eye(n_out, dtype=jnp.result_type(*[_dtype(o) for o in out_leaves]))
            exp = jax.jacrev(ref_flat, argnums=tuple(range(len(d))), allow_int=True)(*d)
            return _no_ints(exp), _no_ints(jax.vmap(lambda e: rule_vjp(unflat(e)))(basis))

        return _Task("jacobian", both, (dyn,), lambda res: _compare(
            "jacobian", labels, _float_leaves(res[0]), _float_leaves(res[1]), tol,
            slices=False))

    # ⟨u, J v⟩: u through the rule's VJP, v through forward mode of the reference
    leaves, treedef = jax.tree_util.tree_flatten(dyn)
    us = _random_like(rng, jax.tree_util.tree_map(
        lambda o: jax.ShapeDtypeStruct((n_proj, *np.shape(o)), _dtype(o)), out))
    vs = [jnp.asarray(rng.standard_normal((n_proj, *np.shape(x))), _dtype(x))
          if _is_float(x) else None for x in leaves]

    def projections(d, us, vs):
        d_leaves = jax.tree_util.tree_leaves(d)
        rule_cts = jax.tree_util.tree_leaves(jax.vmap(jax.vjp(g, *d)[1])(us),
                                             is_leaf=lambda x: x is None)
        pairs = []
        for j, v in enumerate(vs):
            if v is None:
                continue

            def jvp_ref(vj, j=j):
                tangents = [vj if i == j else (jnp.zeros_like(x) if _is_float(x) else
                                               np.zeros(np.shape(x), jax.dtypes.float0))
                            for i, x in enumerate(d_leaves)]
                return jax.jvp(ref_g, d, tuple(treedef.unflatten(tangents)))[1]

            jv = jax.vmap(jvp_ref)(v)
            exp = sum(jnp.sum((a * b).reshape(n_proj, -1), axis=1) for a, b in zip(
                jax.tree_util.tree_leaves(us), jax.tree_util.tree_leaves(jv), strict=True))
            pairs.append((exp, jnp.sum((rule_cts[j] * v).reshape(n_proj, -1), axis=1)))
        return pairs

    def post(pairs):
        pairs, rows = iter(pairs), []
        for label, v in zip(labels, vs, strict=True):
            if v is not None:
                exp, got = next(pairs)
                rows += _compare("jacobian", [label + " ⟨u,Jv⟩"], [np.asarray(exp)],
                                 [np.asarray(got)], tol, slices=False)
        return rows

    return _Task("jacobian", projections, (dyn, us, vs), post)


def _vmap_tasks(g, ref_g, args, dyn, dyn_pos, batch_argnums, labels, tol, rng, alone):
    """vmap of per-example VJPs vs a loop; and (into ``alone``) whether each example
    alone, as a batch of one, agrees with the reference."""
    if batch_argnums is None:   # the highest-rank array sets m; arrays of leading size m join
        cand = [i for i in dyn_pos if isinstance(args[i], (jax.Array, np.ndarray))
                and np.ndim(args[i]) >= 1]
        if cand:
            lead = max(cand, key=lambda i: (np.ndim(args[i]), -i))
            cand = [i for i in cand if np.shape(args[i])[0] == np.shape(args[lead])[0]]
    else:
        cand = [int(i) for i in np.atleast_1d(np.asarray(batch_argnums, int))]
    sizes = {np.shape(args[i])[0] for i in cand}
    if not cand or len(sizes) != 1 or next(iter(sizes)) < 2:
        why = ("no batched array argument" if not cand else
               f"batched arguments disagree on the batch size {sorted(sizes)}"
               if len(sizes) != 1 else "batch of one")
        return [], f"vmap check skipped: {why}"
    m = next(iter(sizes))
    batched = [dyn_pos.index(i) for i in cand]

    def take(d, i, keep):
        """Example i of every batched argument (kept as a batch of one with ``keep``)."""
        def one(x):
            x1 = jax.lax.dynamic_slice_in_dim(x, i, 1, axis=0)
            return x1 if keep else x1[0]
        return tuple(jax.tree_util.tree_map(one, a) if j in batched else a
                     for j, a in enumerate(d))

    try:
        out_one = jax.eval_shape(g, *take(dyn, 0, False))
    except Exception as err:  # noqa: BLE001
        return [], f"vmap check skipped: f does not take a single example ({_short(err)})"
    us = _random_like(rng, jax.tree_util.tree_map(
        lambda o: jax.ShapeDtypeStruct((m, *o.shape), o.dtype), out_one))

    def per_example(d, d_b, u):
        d = list(d)
        for j, x in zip(batched, d_b, strict=True):
            d[j] = x
        return _no_ints(jax.vjp(g, *d)[1](u))

    def both(d, us):
        vm = jax.vmap(per_example, in_axes=(None, 0, 0))(d, tuple(d[j] for j in batched), us)
        loop = jax.lax.map(lambda iu: _no_ints(jax.vjp(g, *take(d, iu[0], False))[1](iu[1])),
                           (jnp.arange(m), us))     # a sequential loop over the examples
        return vm, loop

    n_alone = min(m, 4)
    us1 = _random_like(rng, jax.tree_util.tree_map(
        lambda o: jax.ShapeDtypeStruct((n_alone, *o.shape), o.dtype),
        jax.eval_shape(g, *take(dyn, 0, True))))

    def each_alone(d, us1):
        def one(iu):
            di = take(d, iu[0], True)
            return (_no_ints(jax.vjp(ref_g, *di)[1](iu[1])),
                    _no_ints(jax.vjp(g, *di)[1](iu[1])))
        return jax.lax.map(one, (jnp.arange(n_alone), us1))

    def alone_post(res):
        e, r = _float_leaves(res[0]), _float_leaves(res[1])
        alone.append(all(row.status == "ok" for k in range(n_alone) for row in _compare(
            "alone", labels, [None if x is None else x[k] for x in e],
            [None if x is None else x[k] for x in r], tol)))
        return []

    return [_Task("vmap", both, (dyn, us), lambda res: _compare(
                "vmap", labels, _float_leaves(res[1]), _float_leaves(res[0]), tol,
                ref="a loop"), why=(
                "the VJP fails on a single example (axis 0 of the batched arguments taken "
                "away; pass batch_argnums=() if f only takes batches): ")),
            _Task("alone", each_alone, (dyn, us1), alone_post, quiet=True)], ""


def _rev_over_rev_task(g, dyn, u, labels, tol, eps, rng) -> _Task:
    """jax.grad of ⟨w, VJP(x)⟩ against central differences of that first-order VJP."""
    cts = jax.eval_shape(lambda d, u: jax.vjp(g, *d)[1](u), dyn, u)
    ws = [_random_like(rng, c) if _is_float(c) else None
          for c in jax.tree_util.tree_leaves(cts)]

    def both(d, u, ws):
        def h(*d):
            leaves = jax.tree_util.tree_leaves(jax.vjp(g, *d)[1](u))
            return sum(jnp.vdot(w, c) for w, c in zip(ws, leaves, strict=True)
                       if w is not None)
        got = jax.grad(h, argnums=tuple(range(len(d))), allow_int=True)(*d)
        exp = _numerical_vjp(h, tuple(d), jnp.ones((), jnp.result_type(h(*d))), eps, _FD_ORDER)
        return exp, _no_ints(got)

    return _Task("rev-over-rev", both, (dyn, u, ws), lambda res: _compare(
        "rev-over-rev", labels, _float_leaves(res[0]), _float_leaves(res[1]), tol,
        ref="finite differences"))
