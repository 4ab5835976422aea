r"""Finite differences for ``fbp.check_vjp``: complex arguments, and one-sided differences.

Complex numbers follow JAX's convention for VJPs: for a cotangent ḡ of an output w the
pairing is ℓ = Re Σ ḡ·w (no conjugate), and the cotangent of a complex input z = x + iy is
∂ℓ/∂x − i ∂ℓ/∂y (so ``jax.grad`` of |z|² is 2z̄).  ``fd_vjp`` therefore splits every
complex leaf into its real and imaginary parts, differences the real function, and joins the
parts again.  ``one_sided`` gives the forward and backward differences of every coordinate,
(f(x) − f(x − h eᵢ))/h and (f(x + h eᵢ) − f(x))/h: where they disagree, x sits on a kink.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fbp.check.args import _is_complex
from fbp.numerical import _numerical_vjp, _ravel


def _split(x):
    return [jnp.real(x), jnp.imag(x)] if _is_complex(x) else x


def fd_vjp(fn, d, u, eps=None, order=2):
    """Central-difference ḡᵀJ of ``fn(*d)`` for the cotangent ``u`` (complex: see above)."""
    d_leaves, d_tree = jax.tree_util.tree_flatten(d)
    u_leaves = jax.tree_util.tree_leaves(u)
    cplx = [_is_complex(x) for x in d_leaves]

    def real_fn(parts):
        leaves = [p[0] + 1j * p[1] if c else p for p, c in zip(parts, cplx, strict=True)]
        out = jax.tree_util.tree_leaves(fn(*d_tree.unflatten(leaves)))
        return [_split(o) for o in out]

    real_u = [[jnp.real(c), -jnp.imag(c)] if _is_complex(c) else c for c in u_leaves]
    (parts,) = _numerical_vjp(real_fn, ([_split(x) for x in d_leaves],), real_u, eps, order)
    joined = [p[0] - 1j * p[1] if c else p for p, c in zip(parts, cplx, strict=True)]
    return d_tree.unflatten(joined)


def one_sided(fn, d, eps):
    """([J₋, J₊, J₋², J₊², J₋', J₊'], f(x), h): backward and forward differences at steps h, 2h and
    h' = h·(1 + 2⁻⁸), each (n_out, n_in) over the flattened outputs and input coordinates of
    the real ``fn(*d)``.  Where J₋ ≠ J₊ the point is a kink; where a one-sided difference
    changes with the step (a jump: it grows like 1/h) the function has no derivative there
    at all.  Steps h and h' are too close for any derivative to tell apart, while the
    rounding of ``fn`` at x ± h and x ± h' is independent: |J(h) − J(h')| is the rounding
    noise of the differences (unless ``fn`` rounds so coarsely that f(x + h) and f(x + h')
    round alike: ``f(x)`` and the steps h bound that noise, ε|f|/h)."""
    flat, rel_eps, unravel, _ = _ravel(d, 2)
    if eps is not None:
        rel_eps = jnp.full_like(rel_eps, eps)
    h = rel_eps * jnp.maximum(1, jnp.abs(flat))

    def value(x):
        leaves = jax.tree_util.tree_leaves(fn(*unravel(x)))
        return jnp.concatenate([jnp.ravel(o).astype(flat.dtype) for o in leaves])

    f0 = value(flat)

    def column(i):
        out = []
        for k in (1, 2, 1 + 2 ** -8):
            e = jax.nn.one_hot(i, flat.size, dtype=flat.dtype) * (k * h[i])
            xp, xm = flat + e, flat - e
            out += [(f0 - value(xm)) / (flat[i] - xm[i]), (value(xp) - f0) / (xp[i] - flat[i])]
        return out

    return [j.T for j in jax.vmap(column)(jnp.arange(flat.size))], f0, h
