"""More correct rules for tests/_correct_rules.py: linear algebra, attention, complex
numbers, integer outputs, PRNG keys, fixed-point solvers and surrogates (written for these
tests; no third-party code)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# ── linear algebra, attention, scans ──

def matmul_fn(a, b):
    return a @ b


def matmul_bwd(res, g):
    (a, b), _ = res
    return g @ b.T, a.T @ g


def attention_fn(q, k, v):
    return jax.nn.softmax(q @ k.T / np.sqrt(q.shape[-1]), axis=-1) @ v


def attention_fwd(q, k, v):
    p = jax.nn.softmax(q @ k.T / np.sqrt(q.shape[-1]), axis=-1)
    return p @ v, (q, k, v, p)


def attention_bwd(res, g):
    q, k, v, p = res
    dp = g @ v.T
    ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True)) / np.sqrt(q.shape[-1])
    return ds @ k, ds.T @ q, p.T @ g


def cumsum_fn(x):
    return jnp.cumsum(x, axis=-1)


def cumsum_bwd(res, g):
    return (jnp.flip(jnp.cumsum(jnp.flip(g, -1), axis=-1), -1),)


def dense32_fn(W, x):
    return x @ W.T


def dense32_bwd(res, g):          # accumulates in float32 inside a float64 call
    (W, x), _ = res
    g32 = g.astype(jnp.float32)
    return ((g32.T @ x.astype(jnp.float32)).astype(W.dtype),
            (g32 @ W.astype(jnp.float32)).astype(x.dtype))


def cmatmul_fn(A, z):             # complex, holomorphic: JAX's VJP has no conjugate
    return A @ z


def cmatmul_bwd(res, g):
    (A, z), _ = res
    return jnp.outer(g, z), A.T @ g


def square_and_abs2_fn(z):        # one holomorphic and one real (non-holomorphic) output
    return z * z, jnp.real(z * jnp.conj(z))


def square_and_abs2_bwd(res, g):
    (z,), _ = res
    g_sq, g_abs = g
    return (g_sq * 2 * z + g_abs * 2 * jnp.conj(z),)


def sort_fn(x):                   # a float and an integer output
    idx = jnp.argsort(x)
    return x[idx], idx


def sort_fwd(x):
    idx = jnp.argsort(x)
    return (x[idx], idx), idx


def sort_bwd(idx, g):
    g_sorted, _ = g
    return (jnp.zeros_like(g_sorted).at[idx].set(g_sorted),)


def dropout_fn(x, key):           # a typed PRNG key as an argument
    keep = jax.random.bernoulli(key, 0.7, x.shape)
    return jnp.where(keep, x / 0.7, 0.0)


def dropout_fwd(x, key):
    keep = jax.random.bernoulli(key, 0.7, x.shape)
    return jnp.where(keep, x / 0.7, 0.0), keep


def dropout_bwd(keep, g):
    return jnp.where(keep, g / 0.7, 0.0), None


# ── solvers ──

def _fixed_point(W, x):
    def body(c):
        z, _, i = c
        z_new = jnp.tanh(W @ z + x)
        return z_new, jnp.max(jnp.abs(z_new - z)), i + 1
    z, _, _ = jax.lax.while_loop(lambda c: (c[1] > 1e-15) & (c[2] < 500), body,
                                 (jnp.zeros_like(x), jnp.asarray(1.0, x.dtype), 0))
    return z


def fixed_point_fwd(W, x):
    z = _fixed_point(W, x)
    return z, (W, z)


def fixed_point_bwd(res, g):      # implicit function theorem: (I − Jᵀ) λ = ḡ
    W, z = res
    s = 1 - z ** 2
    lam = jnp.linalg.solve(jnp.eye(z.size, dtype=z.dtype) - (s[:, None] * W).T, g)
    u = s * lam
    return jnp.outer(u, z), u


def _newton_sqrt(x):
    def body(c):
        y, _ = c
        y_new = 0.5 * (y + x / y)
        return y_new, jnp.max(jnp.abs(y_new - y))
    y, _ = jax.lax.while_loop(lambda c: c[1] > 1e-15, body, (jnp.ones_like(x) + x,
                                                            jnp.asarray(1.0, x.dtype)))
    return y


def newton_sqrt_bwd(res, g):
    _, y = res
    return (g / (2 * y),)


# ── surrogates: meant not to be the derivative ──

def qdq_fn(x):
    return jnp.round(x * 8) / 8


def ste_bwd(res, g):
    return (g,)


def identity_fn(x):
    return x


def reverse_bwd(res, g):
    return (-0.5 * g,)


def clip_norm_bwd(res, g):
    n = jnp.sqrt(jnp.sum(g ** 2))
    return (g * jnp.minimum(1.0, 0.5 / jnp.where(n > 0, n, 1.0)),)
