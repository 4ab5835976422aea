r"""Attention without its T × S matrix: an online softmax forward and a recomputing rule.

The same function as ``fbp.ops.attention.attention``, computed block by block (Dao et al.
2022, FlashAttention; Milakov & Gimelshein 2018 for the online softmax).  Queries and keys are
cut into blocks of ``block_size`` rows (the last block of each is padded and its padding
masked, so no length needs to be a multiple of the block).  For each query block a loop over
the key blocks keeps, per query row, the running maximum m, the running sum ℓ of e^{s − m}
and the unnormalised output; only O and the row log-sum-exp L = m + log ℓ survive the
forward.  The backward walks the same blocks again and rebuilds each block of P from L.

Causal skipping: with query and key blocks of the same size, key block j lies entirely
above the diagonal of query block i when j > i; the loop over key blocks runs the block's
work under ``lax.cond(j ≤ i, …)``, so those blocks cost a skipped branch and nothing else
(about half the blocks at large T).  The loop bounds stay static, so the rule itself can
still be differentiated (reverse over reverse).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fbp.ops.attention import in_wide_dtype, validate_attention


def _pad_rows(x, n_rows):
    """Pad axis 1 of ``x`` with zeros to ``n_rows``."""
    pad = [(0, 0)] * x.ndim
    pad[1] = (0, n_rows - x.shape[1])
    return jnp.pad(x, pad)


def _block(x, i, size):
    """Rows ``[i·size, (i + 1)·size)`` of axis 1 of ``x`` (a padded array)."""
    return lax.dynamic_slice_in_dim(x, i * size, size, axis=1)


def _block_scores(q_i, k_j, i, j, size, n_keys, scale, causal):
    """S_ij = q_i k_jᵀ · scale for one (query block, key block) pair, masked: −∞ on the
    padding keys (column ≥ S) and, when causal, above the diagonal (column > row)."""
    s = jnp.einsum("btd,bsd->bts", q_i, k_j) * scale
    rows = i * size + jnp.arange(size)[:, None]
    cols = j * size + jnp.arange(size)[None, :]
    keep = cols < n_keys
    if causal:
        keep = keep & (cols <= rows)
    return jnp.where(keep[None], s, -jnp.inf)


def _flash_forward(q, k, v, scale, causal, size):
    """(O, L) for q (B, T, d), k (B, S, d), v (B, S, d_v): L the row log-sum-exp (B, T)."""
    B, T, _ = q.shape
    S, dv = k.shape[1], v.shape[2]
    nq, nk = -(-T // size), -(-S // size)
    qp, kp, vp = _pad_rows(q, nq * size), _pad_rows(k, nk * size), _pad_rows(v, nk * size)

    def query_block(i):
        q_i = _block(qp, i, size)

        def visit(j, carry):
            m, l, acc = carry
            k_j, v_j = _block(kp, j, size), _block(vp, j, size)
            s = _block_scores(q_i, k_j, i, j, size, S, scale, causal)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))            # running max (finite
            alpha = jnp.exp(m - m_new)                             # after block 0: key 0
            p = jnp.exp(s - m_new[..., None])                      # is never masked)
            return (m_new, alpha * l + jnp.sum(p, axis=-1),
                    alpha[..., None] * acc + jnp.einsum("bts,bse->bte", p, v_j))

        def step(j, carry):
            if not causal:
                return visit(j, carry)
            return lax.cond(j <= i, visit, lambda j, c: c, j, carry)  # skip j > i blocks

        init = (jnp.full((B, size), -jnp.inf, q.dtype), jnp.zeros((B, size), q.dtype),
                jnp.zeros((B, size, dv), q.dtype))
        m, l, acc = lax.fori_loop(0, nk, step, init)
        return acc / l[..., None], m + jnp.log(l)

    o, lse = lax.map(query_block, jnp.arange(nq))                 # (nq, B, size, ·)
    o = jnp.moveaxis(o, 0, 1).reshape(B, nq * size, dv)[:, :T]
    lse = jnp.moveaxis(lse, 0, 1).reshape(B, nq * size)[:, :T]
    return o, lse


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _flash_attention(q, k, v, scale, causal, size):
    return _flash_forward(q, k, v, scale, causal, size)[0]


def _flash_attention_fwd(q, k, v, scale, causal, size):
    o, lse = _flash_forward(q, k, v, scale, causal, size)
    return o, (q, k, v, o, lse)         # res: O and one log-sum-exp per query, never P


def _flash_attention_bwd(scale, causal, size, res, g):
    q, k, v, o, lse = res
    T, S = q.shape[1], k.shape[1]
    nq, nk = -(-T // size), -(-S // size)
    D = jnp.sum(g * o, axis=-1)                                   # D = rowsum(Ō ⊙ O)
    qp, gp = _pad_rows(q, nq * size), _pad_rows(g, nq * size)    # padded rows: ḡ = 0, so
    lp, Dp = _pad_rows(lse, nq * size), _pad_rows(D, nq * size)  # they contribute nothing
    kp, vp = _pad_rows(k, nk * size), _pad_rows(v, nk * size)

    def query_block(carry, i):
        q_i, g_i = _block(qp, i, size), _block(gp, i, size)
        l_i, D_i = _block(lp, i, size), _block(Dp, i, size)

        def contributions(j):
            k_j, v_j = _block(kp, j, size), _block(vp, j, size)
            s = _block_scores(q_i, k_j, i, j, size, S, scale, causal)
            p = jnp.exp(s - l_i[..., None])                       # P rebuilt from L
            v_bar_j = jnp.einsum("bts,bte->bse", p, g_i)          # V̄_j += Pᵀ Ō_i
            p_bar = jnp.einsum("bte,bse->bts", g_i, v_j)          # P̄ = Ō_i V_jᵀ
            delta = p * (p_bar - D_i[..., None])                  # S̄ = P ⊙ (P̄ − D)
            return (jnp.einsum("bts,bsd->btd", delta, k_j) * scale,   # Q̄_i += S̄ K_j·scale
                    jnp.einsum("bts,btd->bsd", delta, q_i) * scale,   # K̄_j += S̄ᵀ Q_i·scale
                    v_bar_j)

        def step(j, inner):
            q_bar_i, k_bar, v_bar = inner
            if causal:                                            # skip j > i blocks
                zeros = (jnp.zeros_like(q_i), jnp.zeros_like(_block(kp, j, size)),
                         jnp.zeros_like(_block(vp, j, size)))
                dq, dk, dv = lax.cond(j <= i, contributions, lambda j: zeros, j)
            else:
                dq, dk, dv = contributions(j)
            k_bar = lax.dynamic_update_slice_in_dim(
                k_bar, _block(k_bar, j, size) + dk, j * size, axis=1)
            v_bar = lax.dynamic_update_slice_in_dim(
                v_bar, _block(v_bar, j, size) + dv, j * size, axis=1)
            return q_bar_i + dq, k_bar, v_bar

        q_bar_i, k_bar, v_bar = lax.fori_loop(0, nk, step, (jnp.zeros_like(q_i), *carry))
        return (k_bar, v_bar), q_bar_i

    (k_bar, v_bar), q_bar = lax.scan(query_block, (jnp.zeros_like(kp), jnp.zeros_like(vp)),
                                     jnp.arange(nq))
    q_bar = jnp.moveaxis(q_bar, 0, 1).reshape(qp.shape)[:, :T]
    return q_bar, k_bar[:, :S], v_bar[:, :S]


_flash_attention.defvjp(_flash_attention_fwd, _flash_attention_bwd)


def flash_attention(q, k, v, *, causal: bool = False, scale: float | None = None,
                    block_size: int = 256):
    r"""Scaled dot-product attention that never holds the (T, S) matrix (FlashAttention).

    Forward:  O = softmax(Q Kᵀ · scale) V, exactly ``attention``'s function, over key blocks
              with an online softmax: for each query row and key block j,
                m′ = max(m, max_j s),   ℓ′ = e^{m − m′} ℓ + Σ_j e^{s − m′},
                A′ = e^{m − m′} A + e^{s − m′} V_j;   at the end O = A / ℓ,  L = m + log ℓ.
    VJP:      the textbook rule (``attention``) block by block, with P rebuilt from L:
                P_ij = exp(S_ij − L_i),   D_i = rowsum(Ō_i ⊙ O_i) = rowsum(P̄ ⊙ P)_i,
                V̄_j += P_ijᵀ Ō_i,   P̄_ij = Ō_i V_jᵀ,   S̄_ij = P_ij ⊙ (P̄_ij − D_i),
                Q̄_i += S̄_ij K_j · scale,   K̄_j += S̄_ijᵀ Q_i · scale.
              D replaces softmax_vjp's rowsum(P̄ ⊙ P): Σ_j P_ij (Ō_i · V_j) = Ō_i · O_i, so a
              block needs only its own P and P̄ (tutorial §11.2: cache the small statistic,
              recompute the rest).
    Saves:    q, k, v, O and L: (..., T) numbers beyond the inputs and output, never P.
              The temporary memory of forward + backward grows like T · block_size.
    Causal:   key blocks above the diagonal (j > i) are skipped with ``lax.cond``.

    Args:
      q: floating array ``(..., T, d)``; k ``(..., S, d)``; v ``(..., S, d_v)``; the same
        leading (batch, head) axes and dtype.
      causal: query i sees keys j ≤ i (needs T = S).
      scale: the factor on q kᵀ; default 1/√d.
      block_size: rows per query block and per key block, a positive int; it need not divide
        T or S (the last block is padded and masked).
    Returns:
      O of shape ``(..., T, d_v)``, in q's dtype (float16 and bfloat16 are computed in
      float32).
    """
    if isinstance(block_size, (bool, np.bool_)) or not isinstance(block_size, (int, np.integer)) \
            or block_size < 1:
        raise ValueError(f"block_size must be a positive int (rows per block); got "
                         f"{block_size!r}. Use e.g. block_size=128.")
    q, k, v, scale, causal = validate_attention(q, k, v, causal, scale)
    lead, (T, d), (S, dv) = q.shape[:-2], q.shape[-2:], v.shape[-2:]
    B = math.prod(lead)
    if B == 0 or T == 0:
        return jnp.zeros((*lead, T, dv), q.dtype)
    size = min(int(block_size), max(T, S))
    o = in_wide_dtype(_flash_attention, q.reshape(B, T, d), k.reshape(B, S, d),
                      v.reshape(B, S, dv), scale, causal, size)
    return o.reshape(*lead, T, dv)
