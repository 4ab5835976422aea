"""An independent GPT in plain ``jnp`` and ``jax.nn`` (no fbp), on fbp's ``GPT`` params.

JAX differentiates it by itself: the test holds every gradient of ``fbp.nets.transformer``
against ``jax.grad`` of this, and the benchmark times the two training steps side by side.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

EPS = 1e-5


def _ln(p, x):
    mu, var = jnp.mean(x, axis=-1, keepdims=True), jnp.var(x, axis=-1, keepdims=True)
    gamma, beta = (jnp.broadcast_to(a, x.shape) for a in p)
    return gamma * (x - mu) / jnp.sqrt(var + EPS) + beta


def _linear(p, x):
    z = x @ p.W.T
    return z + jnp.broadcast_to(p.b, z.shape)


def _heads(a, n_heads):
    *lead, T, D = a.shape
    return jnp.swapaxes(a.reshape(*lead, T, n_heads, D // n_heads), -2, -3)


def _self_attention(p, x, n_heads):
    q, k, v = (_heads(a, n_heads) for a in jnp.split(_linear(p.qkv, x), 3, axis=-1))
    s = jnp.einsum("...td,...sd->...ts", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    s = jnp.where(jnp.tril(jnp.ones(s.shape[-2:], bool)), s, -jnp.inf)
    o = jnp.einsum("...ts,...se->...te", jax.nn.softmax(s, axis=-1), v)
    o = jnp.swapaxes(o, -2, -3)
    return _linear(p.out, o.reshape(*o.shape[:-2], -1))


def reference_gpt(params, ids, n_heads):
    tok, pos, blocks, ln_f = params
    x = tok[ids] + jnp.broadcast_to(pos[: ids.shape[-1]], (*ids.shape, tok.shape[1]))
    for b in blocks:
        x = x + _self_attention(b.attn, _ln(b.ln1, x), n_heads)
        x = x + _linear(b.proj, jax.nn.gelu(_linear(b.fc, _ln(b.ln2, x)), approximate=False))
    return _ln(ln_f, x)


def reference_gpt_loss(params, ids, targets, n_heads):
    logits = reference_gpt(params, ids, n_heads) @ params.tok.T
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))
