r"""Scaled dot-product attention with the textbook rule: it saves the probabilities P.

``attention(q, k, v)`` is softmax(q kᵀ · scale) v over the last two axes; every axis before
them (batch, heads) is carried along.  Its rule is the chain rule through three steps —
a matmul, a softmax (``softmax_vjp``, the same line the softmax op uses) and a matmul — and it
keeps P, a ``(..., T, S)`` array: quadratic in the sequence length.  ``flash_attention``
(its own module) computes the same function and keeps only the output and one number per
query; this module is the readable version it is tested against.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp

from fbp._validate import finite_scalar, float_array, is_concrete, same_dtype
from fbp.ops._scale import _acc
from fbp.ops.activations import softmax_vjp


def _scores(q, k, scale, causal):
    """S = q kᵀ · scale, with −∞ above the diagonal when causal (query i sees keys j ≤ i)."""
    s = jnp.einsum("...td,...sd->...ts", q, k) * scale
    if causal:
        t, n = s.shape[-2:]
        s = jnp.where(jnp.tril(jnp.ones((t, n), bool)), s, -jnp.inf)
    return s


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _attention(q, k, v, scale, causal):
    p = jax.nn.softmax(_scores(q, k, scale, causal), axis=-1)
    return jnp.einsum("...ts,...se->...te", p, v)


def _attention_fwd(q, k, v, scale, causal):
    p = jax.nn.softmax(_scores(q, k, scale, causal), axis=-1)      # (..., T, S)
    return jnp.einsum("...ts,...se->...te", p, v), (q, k, v, p)    # res: P, quadratic in T


def _attention_bwd(scale, causal, res, g):
    q, k, v, p = res
    v_bar = jnp.einsum("...ts,...te->...se", p, g)                 # V̄ = Pᵀ Ō
    p_bar = jnp.einsum("...te,...se->...ts", g, v)                 # P̄ = Ō Vᵀ
    delta = softmax_vjp(p, p_bar)                                  # S̄ = P ⊙ (P̄ − rowsum(P̄ ⊙ P))
    q_bar = jnp.einsum("...ts,...sd->...td", delta, k) * scale     # Q̄ = S̄ K · scale
    k_bar = jnp.einsum("...ts,...td->...sd", delta, q) * scale     # K̄ = S̄ᵀ Q · scale
    return q_bar, k_bar, v_bar


_attention.defvjp(_attention_fwd, _attention_bwd)


def validate_attention(q, k, v, causal, scale):
    """``(q, k, v, scale, causal)`` after the checks ``attention`` and ``flash_attention`` make."""
    q = float_array(q, "q", min_rank=2)
    k = float_array(k, "k", min_rank=2)
    v = float_array(v, "v", min_rank=2)
    same_dtype(q=q, k=k, v=v)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must have the same feature size d (the last axis: q is (..., T, d), "
            f"k is (..., S, d)); got q {q.shape} and k {k.shape}. Project both to one d.")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must hold the same number of keys S (axis -2: k is (..., S, d), v is "
            f"(..., S, d_v)); got k {k.shape} and v {v.shape}.")
    if not q.shape[:-2] == k.shape[:-2] == v.shape[:-2]:
        raise ValueError(
            f"q, k and v must share their leading (batch, head) axes; got q {q.shape}, "
            f"k {k.shape}, v {v.shape}. Broadcast them first, e.g. "
            f"jnp.broadcast_to(k, q.shape[:-2] + k.shape[-2:]).")
    if k.shape[-2] == 0:
        raise ValueError(f"attention needs at least one key (S ≥ 1); got k of shape {k.shape}.")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be True or False; got {causal!r}.")
    if causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(
            f"causal=True lets query i see keys j ≤ i of the same sequence, so it needs T = S; "
            f"got q with T = {q.shape[-2]} and k with S = {k.shape[-2]}. Use causal=False "
            f"for cross-attention.")
    if not is_concrete(scale):
        raise TypeError(
            "scale must be a concrete number (the rule treats it as a constant); got a traced "
            f"value {scale!r}. For a learned or traced temperature s, scale the queries "
            "instead: attention(q * s, k, v, scale=1.0).")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else finite_scalar(scale, "scale")
    return q, k, v, scale, causal


def in_wide_dtype(op, q, k, v, *args):
    """``op(q, k, v, *args)`` computed in float32 or wider, returned in q's dtype.

    In float16 the scores q·k overflow from 65,504 (|q|, |k| ≈ 100 at d = 8 is enough) and
    the softmax's sums lose digits: float16 and bfloat16 inputs are widened, as
    ``jax.nn.dot_product_attention`` takes its logits in float32.  float32 and float64 pass
    through unchanged."""
    acc = _acc(q.dtype)
    if acc == q.dtype:
        return op(q, k, v, *args)
    return op(q.astype(acc), k.astype(acc), v.astype(acc), *args).astype(q.dtype)


def attention(q, k, v, *, causal: bool = False, scale: float | None = None):
    r"""Scaled dot-product attention, the textbook rule (Vaswani et al. 2017).

    Forward:  S = Q Kᵀ · scale,  P = softmax(S) over the keys (row by row),  O = P V;
              causal: S_ij = −∞ for j > i, so query i attends to keys j ≤ i only.
    VJP:      the chain rule (tutorial §3) through the three steps, last step first:
                V̄ = Pᵀ Ō,   P̄ = Ō Vᵀ                    (O = P V, a matmul: §5's rule)
                S̄ = P ⊙ (P̄ − rowsum(P̄ ⊙ P))            (softmax_vjp, the softmax op's rule)
                Q̄ = S̄ K · scale,   K̄ = S̄ᵀ Q · scale     (S = Q Kᵀ · scale)
              Masked entries have P = 0, so S̄ = 0 there and no gradient crosses the mask.
              Dimension check (§9.2): S̄ is (T, S), K is (S, d): S̄ K is (T, d) like Q.
    Saves:    q, k, v and P: P is (..., T, S), quadratic in the length (tutorial §11.2: the
              cache a rule keeps).  ``flash_attention`` keeps only O and a log-sum-exp per row.

    Args:
      q: floating array ``(..., T, d)``: the queries; leading axes (batch, heads) are kept.
      k: ``(..., S, d)``, the keys, same leading axes and dtype.
      v: ``(..., S, d_v)``, the values.
      causal: mask keys after each query (needs T = S).
      scale: the factor on q kᵀ; default 1/√d.
    Returns:
      O of shape ``(..., T, d_v)``, in q's dtype (float16 and bfloat16 are computed in
      float32).
    """
    q, k, v, scale, causal = validate_attention(q, k, v, causal, scale)
    return in_wide_dtype(_attention, q, k, v, scale, causal)
