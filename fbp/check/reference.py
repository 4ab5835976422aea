r"""The default reference of ``fbp.check_vjp``: ``f`` with every custom rule switched off.

``_custom_vjp_calls`` records the outermost ``jax.custom_vjp`` calls of a function (to hold
each rule's own fwd/bwd against its primal inputs: the structure check), or switches every
custom rule off (its undecorated primal code is then the autodiff reference).
"""

from __future__ import annotations

import contextlib

import jax

# ── the custom_vjp rules f calls: recorded (for the structure check) or switched off ──

@contextlib.contextmanager
def _custom_vjp_calls(record: list | None = None, unwrap: bool = False):
    """Within: record the outermost ``jax.custom_vjp`` calls, or (``unwrap``) make every
    ``jax.custom_vjp`` and ``jax.custom_jvp`` run its undecorated primal code instead."""
    classes = (jax.custom_vjp, jax.custom_jvp) if unwrap else (jax.custom_vjp,)
    originals, depth = [c.__call__ for c in classes], [0]

    def primal(self, *args, **kwargs):
        return self.fun(*args, **kwargs)

    def recording(self, *args, **kwargs):
        if depth[0] == 0 and record is not None:
            record.append((self, args, kwargs))
        depth[0] += 1
        try:
            return originals[0](self, *args, **kwargs)
        finally:
            depth[0] -= 1

    for c in classes:
        c.__call__ = primal if unwrap else recording
    try:
        yield
    finally:
        for c, orig in zip(classes, originals, strict=True):
            c.__call__ = orig


def _primal_of(f):
    """f with every custom rule it calls switched off: JAX's autodiff of the forward code."""
    if isinstance(f, (jax.custom_vjp, jax.custom_jvp)):
        return f.fun

    def primal(*args):
        with _custom_vjp_calls(unwrap=True):
            return f(*args)
    return primal
