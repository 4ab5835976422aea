r"""A GPT (decoder-only transformer) built from fbp's ops, every backward a hand-written rule.

    x⁰ = tok[ids] + pos[0..T)                                  ``embedding`` twice
    for each block:  x ← x + MHA(layer_norm₁(x))                ``residual``, ``layer_norm``,
                     x ← x + W₂ gelu(W₁ layer_norm₂(x))          ``multi_head_attention``,
                                                                ``dense``, ``gelu``
    h = layer_norm_f(x)                                         the hidden states (``gpt``)
    loss = mean CE(h tokᵀ, targets)                             ``linear_cross_entropy``, the
                                                                head tied to the token table

The backward of the whole network is JAX chaining those rules (tutorial §3); no op in it is
differentiated by autodiff.  The tied head means the token table gets two gradients, one
from the embedding's scatter-add and one from the loss's W̄ — JAX adds them.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fbp._validate import integer_array
from fbp.ops.activations import gelu, softmax
from fbp.ops.embedding import embedding
from fbp.ops.linear import Dense, dense, init_dense
from fbp.ops.multi_head_attention import (
    MultiHeadAttention,
    _check_heads,
    init_multi_head_attention,
    multi_head_attention,
    split_heads,
)
from fbp.ops.norms import LayerNormParams, init_layer_norm, layer_norm, residual
from fbp.ops.vocab_loss import linear_cross_entropy


class Block(NamedTuple):
    """One pre-norm transformer block: attention and a 4× MLP, each behind a layer norm."""

    ln1: LayerNormParams
    attn: MultiHeadAttention
    ln2: LayerNormParams
    fc: Dense        # (4·d_model, d_model)
    proj: Dense      # (d_model, 4·d_model)


class GPT(NamedTuple):
    """``tok``: (vocab, d_model), also the output head; ``pos``: (max_len, d_model);
    ``blocks``: a tuple of ``Block``; ``ln_f``: the final layer norm."""

    tok: jax.Array
    pos: jax.Array
    blocks: tuple
    ln_f: LayerNormParams


def init_gpt(key, vocab: int, d_model: int, n_heads: int, n_layers: int, max_len: int,
             dtype=None) -> GPT:
    """GPT-2-style initialisation: tables N(0, 0.02²), Xavier projections, norms γ = 1, β = 0."""
    _check_heads(d_model, n_heads)
    for name, n in (("vocab", vocab), ("n_layers", n_layers), ("max_len", max_len)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a positive int; got {n!r}.")
    dtype = jnp.result_type(float) if dtype is None else dtype
    k_tok, k_pos, *k_blocks = jax.random.split(key, 2 + n_layers)
    blocks = []
    for k in k_blocks:
        k_attn, k_fc, k_proj = jax.random.split(k, 3)
        blocks.append(Block(init_layer_norm(d_model, dtype),
                            init_multi_head_attention(k_attn, d_model, n_heads, dtype),
                            init_layer_norm(d_model, dtype),
                            init_dense(k_fc, d_model, 4 * d_model, "xavier", dtype),
                            init_dense(k_proj, 4 * d_model, d_model, "xavier", dtype)))
    return GPT(0.02 * jax.random.normal(k_tok, (vocab, d_model), dtype),
               0.02 * jax.random.normal(k_pos, (max_len, d_model), dtype),
               tuple(blocks), init_layer_norm(d_model, dtype))


def _embed(tok, pos, ids):
    """x⁰ = tok[ids] + pos[0..T): token and position embeddings, (..., T, D)."""
    x = embedding(tok, ids)
    return x + jnp.broadcast_to(embedding(pos, jnp.arange(ids.shape[-1])), x.shape)


def gpt(params: GPT, ids, *, n_heads: int, flash: bool = True, block_size: int = 256):
    r"""The final hidden states of the GPT for integer token ``ids`` of shape ``(..., T)``.

    Forward:  see the module docstring; causal attention, so h_t depends on ids_{≤t} only.
    VJP:      every op's own rule, chained by JAX: x̄ enters each block through the residual
              rule x̄ = ḡ + J_fᵀ ḡ (so the gradient reaches early blocks undiminished, §7.2).
    Args:
      params: ``GPT`` from ``init_gpt``.
      ids: integer array ``(..., T)`` with T ≤ max_len and values in [0, vocab).
      n_heads: the head count ``init_gpt`` was given (static, so it is not in params).
      flash: attention by ``flash_attention`` (True) or the textbook rule.
      block_size: flash_attention's block size.
    Returns:
      h of shape ``(..., T, d_model)``.
    """
    if not (isinstance(params, tuple) and len(params) == 4):
        raise TypeError(f"params must be GPT(tok, pos, blocks, ln_f) from init_gpt; got "
                        f"{type(params).__name__}.")
    tok, pos, blocks, ln_f = params
    ids = integer_array(ids, "ids")
    if ids.ndim < 1 or ids.shape[-1] > pos.shape[0]:
        raise ValueError(f"ids must have shape (..., T) with 1 ≤ T ≤ max_len = {pos.shape[0]} "
                         f"(the rows of the position table); got ids of shape {ids.shape}.")
    x = _embed(tok, pos, ids)

    def attend(p, x):
        return multi_head_attention(p.attn, layer_norm(p.ln1, x), n_heads=n_heads,
                                    causal=True, flash=flash, block_size=block_size)

    def mlp(p, x):
        return dense(p.proj, gelu(dense(p.fc, layer_norm(p.ln2, x))))

    attend_block, mlp_block = residual(attend), residual(mlp)
    for block in blocks:
        x = mlp_block(block, attend_block(block, x))
    return layer_norm(ln_f, x)


def gpt_attention_maps(params: GPT, ids, *, n_heads: int):
    """The attention probabilities P of every head of every block, ``(n_layers, ..., n_heads,
    T, T)``: for looking at what a trained model attends to (no gradient is meant to flow)."""
    tok, pos, blocks, _ = params
    T = ids.shape[-1]
    x = _embed(tok, pos, ids)
    maps = []
    for block in blocks:
        a = layer_norm(block.ln1, x)
        q, k, _ = (split_heads(z, n_heads) for z in jnp.split(dense(block.attn.qkv, a), 3, -1))
        s = jnp.einsum("...td,...sd->...ts", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
        maps.append(softmax(jnp.where(jnp.tril(jnp.ones((T, T), bool)), s, -jnp.inf)))
        x = x + multi_head_attention(block.attn, a, n_heads=n_heads, causal=True, flash=False)
        x = x + dense(block.proj, gelu(dense(block.fc, layer_norm(block.ln2, x))))
    return jnp.stack(maps)


def gpt_loss(params: GPT, ids, targets, *, n_heads: int, flash: bool = True,
             block_size: int = 256):
    r"""Mean next-token cross-entropy of the GPT, the head tied to the token table.

    Forward:  h = gpt(params, ids);  loss = (1/m) Σ_t −log softmax(h_t tokᵀ)[targets_t] over
              the m = ids.size positions, by ``linear_cross_entropy`` (the (m, vocab) logits
              are never held).
    VJP:      linear_cross_entropy's h̄ and W̄ = tok̄ (blockwise (softmax − onehot)/m), then
              ``gpt``'s rules; tok̄ also collects the embedding's scatter-add.
    Args:
      params, ids, n_heads, flash, block_size: as for ``gpt``.
      targets: integer array shaped like ``ids``, values in [0, vocab).
    Returns:
      the scalar loss.
    """
    h = gpt(params, ids, n_heads=n_heads, flash=flash, block_size=block_size)
    return linear_cross_entropy(h, params.tok, targets)
