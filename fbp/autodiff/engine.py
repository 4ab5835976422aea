r"""The engine: read a jaxpr, run it forward keeping a tape, walk the tape backwards.

    jaxpr = jax.make_jaxpr(f)(x)           # the computational graph (§4), in program order
    outs, tape = forward(jaxpr, x)         # run each equation; keep its inputs and outputs
    x_bar = backward(jaxpr, tape, ḡ)       # in reverse: x̄ += rule(ḡ, out, inputs)   (§7)

*Active* values are the ones that depend on a differentiated input (float leaves of the
arguments); an equation none of whose inputs is active runs but is not taped, so integer
index arithmetic and constants need no rule.  Where a value is read by several equations its
cotangent is the sum of what each of them sends back (§3.2, the sum over paths): that is the
``+=`` in ``_accumulate``.

Four kinds of equations are not looked up in the table:

* calls (``jit``, ``closed_call``, ``checkpoint``): the engine recurses into their jaxpr;
* ``cond`` (``lax.cond``, ``lax.switch``): going back, the engine's own VJP of every branch
  inside one ``lax.switch`` on the same index — the branch that ran is the one
  differentiated, even under ``jit`` where the index is not known yet (each branch re-runs
  its forward there: the tape of a branch that may not run cannot be kept);
* ``custom_vjp_call`` — every fbp op: the engine runs that op's own ``fwd`` (its residuals
  ``res`` are what the tape keeps) and, going back, its hand-written ``bwd``;
* ``custom_jvp_call`` (``jax.nn.relu``, ``logsumexp``): its JVP rule is linear in the
  tangent, so its VJP is that map transposed (``jax.linear_transpose``).

Forward mode (``jvp``) uses the same table: the JVP of an equation is the transpose of its
VJP rule, ṫ_out = (v ↦ rule(v))ᵀ ṫ_in, taken with ``jax.linear_transpose``; a custom_vjp
op's JVP is likewise its hand-written ``bwd`` transposed (forward mode never runs the primal
through the table when a hand-written rule exists).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import source_info_util
from jax._src.ad_util import Zero
from jax.extend.core import Literal

from fbp.autodiff.rules import NO_GRADIENT, VJP_RULES, apply_rule

CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr",
         "core_call": "call_jaxpr", "checkpoint": "jaxpr", "remat2": "jaxpr"}   # jax.checkpoint
CUSTOM = ("custom_vjp_call", "custom_jvp_call")
BRANCHES = "cond"


class UnsupportedPrimitiveError(NotImplementedError):
    """A primitive the table has no rule for sits on a differentiated path."""


class Step(NamedTuple):
    """One taped equation: what the backward pass needs to apply its rule."""

    eqn: object
    xs: list            # input values
    outs: list          # output values
    active: list        # which inputs depend on a differentiated argument
    inner: object       # calls: (jaxpr, tape) of the callee; custom_vjp: residuals


def describe(eqn, k: int) -> str:
    """``equation 3: f64[5,4] = tanh(f64[5,4]) at model.py:12 (loss)`` for error messages."""
    ins = ", ".join(f"{v.val!r}" if isinstance(v, Literal) else v.aval.str_short()
                    for v in eqn.invars)
    outs = ", ".join(v.aval.str_short() for v in eqn.outvars)
    where = source_info_util.summarize(eqn.source_info)
    return f"equation {k}: {outs} = {eqn.primitive.name}({ins}) at {where}"


def label(eqn) -> str:
    """``custom_vjp_call`` equations by the op they call (``_dense``), others by primitive."""
    name = eqn.params.get("name")
    if eqn.primitive.name in CUSTOM:
        name = eqn.params["call_jaxpr"].jaxpr.debug_info.func_name
    return name if isinstance(name, str) else eqn.primitive.name


def is_float(x) -> bool:
    return jnp.issubdtype(x.dtype if hasattr(x, "dtype") else jnp.result_type(x), jnp.inexact)


def bind(eqn, xs) -> list:
    """Evaluate one equation on values (as ``jax.core.eval_jaxpr`` does)."""
    out = eqn.primitive.bind(*xs, **eqn.primitive.get_bind_params(eqn.params))
    return list(out) if eqn.primitive.multiple_results else [out]


def inner_jaxpr(eqn):
    """The (jaxpr, consts) a call equation runs."""
    sub = eqn.params[CALLS[eqn.primitive.name]]
    return (sub.jaxpr, sub.consts) if hasattr(sub, "consts") else (sub, ())


def _zeros(aval):
    return jnp.zeros(aval.shape, aval.dtype)


def _tangent_zero(aval):
    """A zero tangent of this shape: float0 for integer values, as JAX's own rules expect."""
    if jnp.issubdtype(aval.dtype, jnp.inexact):
        return jnp.zeros(aval.shape, aval.dtype)
    return np.zeros(aval.shape, jax.dtypes.float0)


def _real(ct):
    """A rule's cotangent, with JAX's symbolic zeros (and float0) turned into None."""
    if ct is None or isinstance(ct, Zero) or type(ct).__name__ == "SymbolicZero":
        return None
    return None if jnp.result_type(ct) == jax.dtypes.float0 else ct


# ── custom rules: an op's own fwd/bwd (custom_vjp), its JVP transposed (custom_jvp) ──

def custom_vjp_fwd(eqn, xs, active):
    """Run the op's own ``fwd``: its outputs and the residuals its ``bwd`` reads."""
    _, fwd, _ = eqn.primitive.get_bind_params(eqn.params)["subfuns"]
    n_consts = eqn.params["num_consts"]
    flags = [False] * n_consts + list(active[n_consts:])
    res_and_outs = fwd.call_wrapped(*[z for pair in zip(xs, flags, strict=True) for z in pair])
    _, res_tree, forwarded = eqn.params["out_trees"]()
    n_res = res_tree.num_leaves - sum(i is not None for i in forwarded)
    saved = iter(res_and_outs[:n_res])
    res = [next(saved) if i is None else xs[i] for i in forwarded]   # inputs saved as res
    return list(res_and_outs[n_res:]), res


def custom_vjp_bwd(eqn, res, gs):
    """The op's own ``bwd``: one cotangent per input (None where it gives none)."""
    _, _, bwd = eqn.primitive.get_bind_params(eqn.params)["subfuns"]
    gs = [_zeros(v.aval) if g is None else g for g, v in zip(gs, eqn.outvars, strict=True)]
    return [_real(c) for c in bwd.call_wrapped(*res, *gs)]


def custom_jvp_tangents(eqn, xs, ts):
    """The op's own JVP rule: (outputs, output tangents) for input tangents ``ts``."""
    _, jvp = eqn.primitive.get_bind_params(eqn.params)["subfuns"]
    ts = [_tangent_zero(a) if t is None else t for a, t in zip(avals_of(xs), ts, strict=True)]
    outs = jvp.call_wrapped(*xs, *ts)
    n = len(outs) // 2
    return list(outs[:n]), [None if _real(t) is None else t for t in outs[n:]]


def transpose_into(linear, in_avals, in_keep, out_avals, out_keep):
    """The transpose of a linear map, through ``jax.linear_transpose``.

    ``linear`` takes one vector per ``in_avals`` entry and returns one per ``out_avals`` entry
    (None for zero).  Only the kept entries are variables; the others are held at zero.  The
    returned function takes a list aligned with ``out_avals`` and returns one aligned with
    ``in_avals`` (None where not kept)."""
    ins = [i for i, keep in enumerate(in_keep) if keep]
    outs = [j for j, keep in enumerate(out_keep) if keep]

    def restricted(*vs):
        full = [_tangent_zero(a) for a in in_avals]
        for i, v in zip(ins, vs, strict=True):
            full[i] = v
        got = linear(full)
        return [_zeros(out_avals[j]) if got[j] is None else got[j] for j in outs]

    transposed = jax.linear_transpose(
        restricted, *[jax.ShapeDtypeStruct(in_avals[i].shape, in_avals[i].dtype) for i in ins])

    def apply(ws):
        got = iter(transposed([_zeros(out_avals[j]) if ws[j] is None else ws[j]
                               for j in outs]))
        return [next(got) if keep else None for keep in in_keep]
    return apply


def table_vjp(eqn, step_outs, xs, gs):
    """Cotangents of the inputs from the table's rule for this equation's primitive."""
    name = eqn.primitive.name
    if eqn.primitive.multiple_results:
        return list(apply_rule(name, gs, step_outs, xs, eqn.params))
    return list(apply_rule(name, gs[0], step_outs[0], xs, eqn.params))


def check_rule(eqn, k: int) -> None:
    name = eqn.primitive.name
    if (name in VJP_RULES or name in CALLS or name in CUSTOM or name in NO_GRADIENT
            or name == BRANCHES):
        return
    raise UnsupportedPrimitiveError(
        f"fbp.autodiff has no rule for the primitive {name!r}, which the differentiated "
        f"inputs reach in {describe(eqn, k)}.  Add a rule to fbp.autodiff.rules "
        f"(@rule({name!r}) def _{name}(g, out, *xs, **params): ...), wrap the code in a "
        f"jax.custom_vjp, or differentiate with jax.grad.  The table has "
        f"{len(VJP_RULES)} primitives: {', '.join(sorted(VJP_RULES))}.")


# ── reverse mode ──

def environment(jaxpr, consts, args):
    """The values of a jaxpr's variables so far (its consts and inputs), and how to read one."""
    env = dict(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    return env, lambda v: v.val if isinstance(v, Literal) else env[v]


def forward(jaxpr, consts, args, active_args):
    """Run ``jaxpr``; return its outputs, which of them are active, and the tape."""
    env, read = environment(jaxpr, consts, args)
    live = {v for v, a in zip(jaxpr.invars, active_args, strict=True) if a}
    tape = []
    for k, eqn in enumerate(jaxpr.eqns):
        xs = [read(v) for v in eqn.invars]
        active = [not isinstance(v, Literal) and v in live for v in eqn.invars]
        name = eqn.primitive.name
        out_live = [False] * len(eqn.outvars)
        if not any(active) or name in NO_GRADIENT:
            outs = bind(eqn, xs)
        else:
            check_rule(eqn, k)
            if name in CALLS:
                sub, sub_consts = inner_jaxpr(eqn)
                outs, out_live, sub_tape = forward(sub, sub_consts, xs, active)
                inner = (sub, sub_tape)
            elif name == "custom_vjp_call":
                outs, inner = custom_vjp_fwd(eqn, xs, active)
            else:
                outs, inner = bind(eqn, xs), None
            out_live = [is_float(o) for o in outs] if name not in CALLS else out_live
            tape.append(Step(eqn, xs, outs, active, inner))
        for v, o, a in zip(eqn.outvars, outs, out_live, strict=True):
            env[v] = o
            if a:
                live.add(v)
    outs = [read(v) for v in jaxpr.outvars]
    return outs, [not isinstance(v, Literal) and v in live for v in jaxpr.outvars], tape


def _accumulate(cts: dict, v, ct) -> None:
    if ct is None or isinstance(v, Literal):
        return
    cts[v] = ct if v not in cts else cts[v] + ct      # fan-out: sum over paths (§3.2)


def backward(jaxpr, tape, cts_out):
    """Walk the tape in reverse; return the cotangent of each input of ``jaxpr`` (or None)."""
    cts = {}
    for v, ct in zip(jaxpr.outvars, cts_out, strict=True):
        _accumulate(cts, v, ct)
    for k in reversed(range(len(tape))):
        eqn, xs, outs, active, inner = tape[k]
        gs = [cts.pop(v, None) for v in eqn.outvars]
        if all(g is None for g in gs):
            continue
        name = eqn.primitive.name
        with jax.named_scope(f"{k}.{label(eqn)}"):      # each rule's equations say
            # which equation of the jaxpr they came from (experiments/graph.py draws them)
            if name in CALLS:
                x_bars = backward(inner[0], inner[1], gs)
            elif name == "custom_vjp_call":
                x_bars = custom_vjp_bwd(eqn, inner, gs)
            elif name == BRANCHES:
                x_bars = cond_vjp(eqn, xs, active, gs)
            elif name == "custom_jvp_call":
                tangents = lambda ts, eqn=eqn, xs=xs: custom_jvp_tangents(eqn, xs, ts)[1]
                x_bars = transpose_into(tangents, avals_of(xs), active, avals_of(outs),
                                        [is_float(o) for o in outs])(gs)
            else:
                gs = [_zeros(v.aval) if g is None else g for g, v in zip(gs, eqn.outvars,
                                                                          strict=True)]
                x_bars = table_vjp(eqn, outs, xs, gs)
        for v, x_bar, a in zip(eqn.invars, x_bars, active, strict=True):
            if a:
                _accumulate(cts, v, x_bar)
    return [cts.get(v) for v in jaxpr.invars]


# ── forward mode ──

def tangents_forward(jaxpr, consts, args, tangents):
    """Run ``jaxpr`` on (primal, tangent) pairs; tangent None means zero."""
    env, read = environment(jaxpr, consts, args)
    tan = {v: t for v, t in zip(jaxpr.invars, tangents, strict=True) if t is not None}
    for k, eqn in enumerate(jaxpr.eqns):
        xs = [read(v) for v in eqn.invars]
        ts = [None if isinstance(v, Literal) else tan.get(v) for v in eqn.invars]
        active = [t is not None for t in ts]
        name = eqn.primitive.name
        t_outs = [None] * len(eqn.outvars)
        if not any(active) or name in NO_GRADIENT or not any(is_float(v.aval)
                                                                for v in eqn.outvars):
            outs = bind(eqn, xs)                # (an integer cast: its tangent is zero)
        else:
            check_rule(eqn, k)
            avals = [v.aval for v in eqn.outvars]
            if name in CALLS:
                sub, sub_consts = inner_jaxpr(eqn)
                outs, t_outs = tangents_forward(sub, sub_consts, xs, ts)
            elif name == "custom_jvp_call":
                outs, t_outs = custom_jvp_tangents(eqn, xs, ts)
            elif name == BRANCHES:
                outs, t_outs = bind(eqn, xs), cond_tangents(eqn, xs, ts)
            elif name == "custom_vjp_call":     # the op's hand-written bwd, transposed
                outs, res = custom_vjp_fwd(eqn, xs, active)
                cotangents = lambda gs, eqn=eqn, res=res: custom_vjp_bwd(eqn, res, gs)
                t_outs = transpose_into(cotangents, avals, [is_float(o) for o in outs],
                                        avals_of(xs), active)(ts)
            else:                               # the table's rule, transposed
                outs = bind(eqn, xs)
                cotangents = lambda gs, eqn=eqn, xs=xs, outs=outs: table_vjp(eqn, outs, xs, gs)
                t_outs = transpose_into(cotangents, avals, [is_float(o) for o in outs],
                                        avals_of(xs), active)(ts)
        for v, o, t in zip(eqn.outvars, outs, t_outs, strict=True):
            env[v] = o
            if t is not None:
                tan[v] = t
    return ([read(v) for v in jaxpr.outvars],
            [None if isinstance(v, Literal) else tan.get(v) for v in jaxpr.outvars])


# ── lax.cond / lax.switch: the engine's own rule for each branch, switched on the index ──

def _switch(eqn, xs, per_branch):
    """``lax.switch`` on the cond's index over ``per_branch(branch_jaxpr, operands)``."""
    index, ops = xs[0], xs[1:]
    return jax.lax.switch(index, [lambda ops, b=b: per_branch(b, ops)
                                  for b in eqn.params["branches"]], ops)


def cond_vjp(eqn, xs, active, gs):
    """x̄ of a cond's operands: each branch's forward and backward by the engine (§7)."""
    act = active[1:]
    gs = [_zeros(v.aval) if g is None else g for g, v in zip(gs, eqn.outvars, strict=True)]

    def branch_vjp(b, ops):
        _, _, tape = forward(b.jaxpr, b.consts, ops, act)
        bars = backward(b.jaxpr, tape, gs)
        return [_zeros(v.aval) if bar is None else bar
                for v, bar, a in zip(b.jaxpr.invars, bars, act, strict=True) if a]
    got = iter(_switch(eqn, xs, branch_vjp))
    return [None] + [next(got) if a else None for a in act]        # the index: no cotangent


def cond_tangents(eqn, xs, ts):
    """ṫ of a cond's outputs: each branch's forward mode, switched on the same index."""
    def branch_jvp(b, ops):
        _, t_outs = tangents_forward(b.jaxpr, b.consts, ops, ts[1:])
        return [_tangent_zero(v.aval) if t is None else t
                for v, t in zip(b.jaxpr.outvars, t_outs, strict=True)]
    return [t if is_float(v.aval) else None for t, v in zip(_switch(eqn, xs, branch_jvp),
                                                             eqn.outvars, strict=True)]


def avals_of(values):
    return [jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)) for x in values]
