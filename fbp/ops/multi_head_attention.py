r"""Multi-head self-attention as a layer: ``dense`` → split heads → attention → merge → ``dense``.

No rule of its own is needed: every step that computes is an fbp op with its hand-written
rule (``dense`` twice, ``attention`` or ``flash_attention`` once).  The head split and merge
in between are reshapes and a transpose, which move numbers without computing (their VJP is
the inverse move, and JAX derives it exactly).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fbp._validate import float_array
from fbp.ops.attention import attention
from fbp.ops.flash_attention import flash_attention
from fbp.ops.linear import Dense, dense, init_dense


class MultiHeadAttention(NamedTuple):
    """``qkv``: Dense(W: (3·d_model, d_model), b: (3·d_model,)), the query, key and value
    projections stacked; ``out``: Dense(W: (d_model, d_model), b: (d_model,))."""

    qkv: Dense
    out: Dense


def init_multi_head_attention(key, d_model: int, n_heads: int, dtype=None) -> MultiHeadAttention:
    """Xavier-initialised projections for ``n_heads`` heads of width d_model / n_heads."""
    _check_heads(d_model, n_heads)
    k_qkv, k_out = jax.random.split(key)
    return MultiHeadAttention(init_dense(k_qkv, d_model, 3 * d_model, "xavier", dtype),
                              init_dense(k_out, d_model, d_model, "xavier", dtype))


def _check_heads(d_model, n_heads) -> None:
    for name, n in (("d_model", d_model), ("n_heads", n_heads)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a positive int; got {n!r}.")
    if d_model % n_heads:
        raise ValueError(f"n_heads must divide d_model (each head gets d_model / n_heads "
                         f"features); got d_model = {d_model}, n_heads = {n_heads}.")


def split_heads(x, n_heads: int):
    """(..., T, D) → (..., n_heads, T, D / n_heads): the heads become a leading axis."""
    *lead, T, D = x.shape
    return jnp.swapaxes(x.reshape(*lead, T, n_heads, D // n_heads), -2, -3)


def merge_heads(x):
    """(..., n_heads, T, d_head) → (..., T, n_heads · d_head), the inverse of split_heads."""
    *lead, H, T, dh = x.shape
    return jnp.swapaxes(x, -2, -3).reshape(*lead, T, H * dh)


def multi_head_attention(params: MultiHeadAttention, x, *, n_heads: int, causal: bool = True,
                         flash: bool = True, block_size: int = 256):
    r"""Multi-head self-attention over the sequence axis of ``x`` (Vaswani et al. 2017).

    Forward:  [Q K V] = X W_qkvᵀ + b_qkv  (``dense``), each split into n_heads heads of width
              d_h = D / n_heads;  O_h = softmax(Q_h K_hᵀ / √d_h) V_h  per head (``attention``,
              or ``flash_attention`` when ``flash``);  Y = [O_1 … O_H] W_outᵀ + b_out (``dense``).
    VJP:      the chain rule (tutorial §3) through the ops' own rules, last first: dense's
              W̄ = δᵀ A and x̄ = δ W for the output projection, the attention rule per head,
              then dense's rule for the stacked projection; the head split and merge are moves
              whose VJP is the inverse move.
    Saves:    what each op saves: both denses their W and input, attention P per head
              (flash: only O and the row log-sum-exp).

    Args:
      params: ``MultiHeadAttention(qkv, out)`` from ``init_multi_head_attention``.
      x: floating array ``(..., T, d_model)``: a sequence of T vectors per example.
      n_heads: the number of heads, dividing d_model.
      causal: position t attends to positions ≤ t only (a language model's mask).
      flash: ``flash_attention`` (True) or the textbook ``attention`` (False).
      block_size: flash_attention's block size.
    Returns:
      y of shape ``(..., T, d_model)``.
    """
    if not (isinstance(params, tuple) and len(params) == 2):
        raise TypeError(f"params must be MultiHeadAttention(qkv, out); got "
                        f"{type(params).__name__}.")
    if not isinstance(flash, bool):
        raise TypeError(f"flash must be True or False; got {flash!r}.")
    x = float_array(x, "x", min_rank=2)
    _check_heads(x.shape[-1], n_heads)
    qkv = dense(params.qkv, x)                                   # (..., T, 3D)
    if qkv.shape[-1] != 3 * x.shape[-1]:
        raise ValueError(f"params.qkv must map d_model = {x.shape[-1]} features to "
                         f"3·d_model = {3 * x.shape[-1]}; its W is {params.qkv.W.shape}.")
    q, k, v = (split_heads(a, n_heads) for a in jnp.split(qkv, 3, axis=-1))
    if flash:
        o = flash_attention(q, k, v, causal=causal, block_size=block_size)
    else:
        o = attention(q, k, v, causal=causal)
    return dense(params.out, merge_heads(o))
