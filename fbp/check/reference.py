r"""The default reference of ``fbp.check_vjp``: ``f``'s own forward code, every rule off.

``f`` is traced to a jaxpr, and that jaxpr is evaluated again with every ``custom_vjp_call``
and ``custom_jvp_call`` replaced by the primal computation it wraps (its ``call_jaxpr``),
recursively: through ``jit``/``pjit``/closed calls (inlined) and through ``scan``,
``while_loop`` and ``cond`` bodies (re-traced with their custom calls replaced).  JAX's own
autodiff of the result is the reference.  The rules of JAX's own library functions
(``jax.nn.softplus``, ``jax.nn.relu``, ``jax.scipy.special.xlogy``: a rule whose primal is
defined in a file of the ``jax`` package) are kept: they are part of JAX's autodiff, as
``jax.grad`` sees them, and their primal code alone has the wrong derivative at points such
as ``xlogy(0, y)``.  Nothing global is patched, so checks may run in several threads at once.

``custom_rules`` lists the outermost ``custom_vjp_call``s of a jaxpr (for the structure
check of functions that call rules rather than being one).
"""

from __future__ import annotations

import os

import jax
import jax.extend.core as jex

_CUSTOM = {"custom_vjp_call", "custom_vjp_call_jaxpr", "custom_jvp_call"}
_INLINE = {"pjit", "jit", "closed_call", "core_call", "remat", "checkpoint"}
_JAX_DIR = os.path.dirname(os.path.abspath(jax.__file__)) + os.sep


def _in_jax(info) -> bool:
    src = getattr(info, "func_src_info", None) or ""
    path = src.rpartition(" at ")[2].rpartition(":")[0]
    return bool(path) and os.path.abspath(path).startswith(_JAX_DIR)


def _jax_own(eqn) -> bool:
    """Whether a custom call is a rule of JAX's own library: its primal function is defined
    in a file of the ``jax`` package (the call's debug info: ``"xlogy at /…/jax/…:937"``),
    and so is its rule where the call names it — ``jax.custom_vjp(jnp.tanh)`` with a rule of
    one's own is the user's, however JAX's own its primal."""
    sub = eqn.params.get("call_jaxpr")
    if not _in_jax(getattr(getattr(sub, "jaxpr", sub), "debug_info", None)):
        return False
    rules = [eqn.params[k] for k in ("bwd", "jvp_jaxpr_fun") if k in eqn.params]
    return all(_in_jax(getattr(r, "debug_info", None)) for r in rules
               if getattr(r, "debug_info", None) is not None)


def _replaced(eqn) -> bool:
    """A custom call the reference replaces by its primal code (every rule but JAX's own)."""
    return eqn.primitive.name in _CUSTOM and not _jax_own(eqn)


def _sub(eqn):
    """The one sub-jaxpr of a call to inline or of a custom call, as (jaxpr, consts)."""
    for key in ("call_jaxpr", "jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(key)
        if isinstance(sub, jex.ClosedJaxpr):
            return sub.jaxpr, sub.consts
        if isinstance(sub, jex.Jaxpr):
            return sub, []
    return None


def _has_custom(jaxpr) -> bool:
    if any(_replaced(eqn) for eqn in jaxpr.eqns):
        return True
    return any(_has_custom(s) for s in jex.subjaxprs(jaxpr))


def _without_rules(closed: jex.ClosedJaxpr) -> jex.ClosedJaxpr:
    """A closed jaxpr traced again with its custom calls replaced (for loop/branch bodies)."""
    if not _has_custom(closed.jaxpr):
        return closed
    avals = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in closed.in_avals]
    return jax.make_jaxpr(lambda *xs: _eval(closed.jaxpr, closed.consts, *xs))(*avals)


def _params_without_rules(params: dict) -> dict:
    """Every closed jaxpr of ``params`` without its rules, in a tuple too (``cond``'s
    branches); a namedtuple keeps its type (``custom_linear_solve``'s ``jaxprs``)."""
    def one(v):
        return _without_rules(v) if isinstance(v, jex.ClosedJaxpr) else v
    return {k: jax.tree_util.tree_map(one, v) if isinstance(v, tuple) else one(v)
            for k, v in params.items()}


def _eval(jaxpr, consts, *args) -> list:
    """Evaluate ``jaxpr`` with every custom rule inside replaced by its primal code."""
    env = {}

    def read(v):
        return v.val if isinstance(v, jex.Literal) else env[v]

    for v, x in zip(jaxpr.constvars, consts, strict=True):
        env[v] = x
    for v, x in zip(jaxpr.invars, args, strict=True):
        env[v] = x
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        sub = _sub(eqn) if _replaced(eqn) or name in _INLINE else None
        if sub is not None:
            outs = _eval(sub[0], sub[1], *ins)
        elif name in _CUSTOM:              # JAX's own rule: kept as it is
            outs = _bind(eqn.primitive, eqn.params, ins)
        else:
            params = eqn.params
            if any(isinstance(v, (jex.ClosedJaxpr, tuple)) for v in params.values()):
                params = _params_without_rules(params)
            outs = _bind(eqn.primitive, params, ins)
        for v, x in zip(eqn.outvars, outs, strict=True):
            if not isinstance(v, jex.DropVar):
                env[v] = x
    return [read(v) for v in jaxpr.outvars]


def primal_of(g):
    """``g`` (a function of pytrees of arrays) with every custom rule replaced by its primal
    code: JAX's autodiff of it is autodiff of the forward code."""
    def primal(*d):
        closed, shape = jax.make_jaxpr(g, return_shape=True)(*d)
        outs = _eval(closed.jaxpr, closed.consts, *jax.tree_util.tree_leaves(d))
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shape), outs)
    return primal


def primal_full(f):
    """``f`` itself (any signature, any arguments) with every custom rule replaced."""
    def primal(*args, **kwargs):
        return primal_of(lambda: f(*args, **kwargs))()
    return primal


def custom_rules(jaxpr) -> list:
    """The outermost ``custom_vjp_call`` equations of ``jaxpr`` (through inlined calls)."""
    found = []
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in ("custom_vjp_call", "custom_vjp_call_jaxpr"):
            found.append(eqn)
        elif name in _INLINE and _sub(eqn) is not None:
            found += custom_rules(_sub(eqn)[0])
    return found


def rule_name(eqn) -> str:
    sub = eqn.params.get("call_jaxpr")
    info = getattr(getattr(sub, "jaxpr", sub), "debug_info", None)
    return getattr(info, "func_name", None) or "rule"


def _bind(primitive, params, ins) -> list:
    """Apply a primitive as JAX's own evaluator does (older JAX: subfuns come first)."""
    got = primitive.get_bind_params(params)
    subfuns, params = got if isinstance(got, tuple) else ((), got)
    out = primitive.bind(*subfuns, *ins, **params)
    return list(out) if primitive.multiple_results else [out]


def bind_eqn(eqn, *ins) -> list:
    """Apply one equation (a custom rule) to ``ins``."""
    return _bind(eqn.primitive, eqn.params, ins)
