r"""Softmax cross-entropy of a linear head over a large vocabulary, without its logits.

The head of a language model is ``z = h Wᵀ`` with ``W`` the ``(V, D)`` output (or tied
embedding) table; the loss is the tutorial's softmax cross-entropy of ``z`` (§5), whose
gradient is (ŷ − y)/m.  Autodiff of that composition keeps the ``(N, V)`` logits (and its
softmax) for the backward: 512 MiB of float32 at N = 4,096 tokens and V = 32,768.  The
chunked rule here keeps only the per-token log-sum-exp ``(N,)`` and walks the vocabulary
in blocks of columns twice: once forward (an online log-sum-exp: a running max and a
rescaled running sum, as in FlashAttention and Cut Cross-Entropy), once backward, forming
``(softmax − onehot)/m`` for one block at a time and accumulating h̄ and W̄ from it.
The textbook rule (``method="dense"``) stays beside it: the readable version, and the one
the chunked rule is tested against.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from fbp._validate import float_array, indices_in_range, integer_array, same_dtype

# Columns of the vocabulary per block.  The backward holds a (N, block) slab of logits and one
# of δ at a time: 2 · 4,096 · 1,024 · 4 B = 32 MiB at N = 4,096 in float32 (XLA reuses one of
# them: 26 MiB measured), against autodiff's 1 GiB at V = 32,768.  Halving it halves that; a
# paired run of blocks of 512, 1,024 and 2,048 on the loaded 2-core machine gave loss + grad
# times within the noise of autodiff's (0.95, 1.13, 0.87), so 1,024 is the middle: under 1/20
# of autodiff's temp with room, and a (1,024 × D) operand still wide for each block's matmuls.
DEFAULT_BLOCK_SIZE = 1024
_METHODS = ("chunked", "dense")


def _weights(mask, dtype):
    """Per-token weight 1/m where ``mask`` is True (m = max(Σ mask, 1), counted in ≥ float32)."""
    count_dtype = jnp.promote_types(dtype, jnp.float32)
    m = jnp.maximum(jnp.sum(mask, dtype=count_dtype), 1)
    return (mask / m).astype(dtype)


def _block(W, k, block):
    """Block k of the vocabulary: rows [start, start + block) of W, start = min(k·block, V − block).

    The last block of a ragged V is shifted back to end at V (so every slice has one static
    shape); ``fresh`` marks its columns ≥ k·block, the ones no earlier block covered."""
    start = jnp.minimum(k * block, W.shape[0] - block)
    cols = start + jnp.arange(block)
    return start, lax.dynamic_slice_in_dim(W, start, block, axis=0), cols, cols >= k * block


def _n_blocks(V, block):
    return -(-V // block)


# ── the chunked rule: online log-sum-exp forward, blockwise (softmax − onehot)/m backward ──

def _lse_and_label_logit(block, h, W, labels):
    """lse_i = log Σ_j e^{z_ij}, one vocabulary block at a time, and z_{i, yᵢ} = h_i · W_{yᵢ}:
    the label's logit is one row of W per token (a gather, N·D), not a search of every block."""
    n = h.shape[0]

    def step(k, carry):
        run_max, run_sum = carry
        _, W_blk, _, fresh = _block(W, k, block)
        z = jnp.where(fresh[None, :], h @ W_blk.T, -jnp.inf)             # (N, block)
        new_max = jnp.maximum(run_max, jnp.max(z, axis=1))
        return new_max, (run_sum * jnp.exp(run_max - new_max)
                         + jnp.sum(jnp.exp(z - new_max[:, None]), axis=1))

    init = (jnp.full((n,), -jnp.inf, h.dtype), jnp.zeros((n,), h.dtype))
    run_max, run_sum = lax.fori_loop(0, _n_blocks(W.shape[0], block), step, init)
    z_label = jnp.sum(h * jnp.take(W, labels, axis=0, mode="clip"), axis=1)  # masked: unused
    return run_max + jnp.log(run_sum), z_label


def _loss(lse, z_label, mask):
    return jnp.sum(jnp.where(mask, lse - z_label, 0) * _weights(mask, lse.dtype))


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunked(block, h, W, labels, mask):
    lse, z_label = _lse_and_label_logit(block, h, W, labels)
    return _loss(lse, z_label, mask), lse


def _chunked_fwd(block, h, W, labels, mask):
    lse, z_label = _lse_and_label_logit(block, h, W, labels)
    return (_loss(lse, z_label, mask), lse), (h, W, labels, mask, lse)  # res: lse, not logits


def _chunked_bwd(block, res, g):
    h, W, labels, mask, lse = res
    g_loss, g_lse = g
    c = g_loss * _weights(mask, h.dtype)            # ḡ/m at counted tokens: the onehot's factor
    a = c + g_lse                                   # the softmax's factor (z-loss adds ḡ_lse)

    def step(k, carry):
        h_bar, W_bar = carry
        start, W_blk, cols, fresh = _block(W, k, block)
        p = jnp.exp(h @ W_blk.T - lse[:, None])                         # softmax, (N, block)
        onehot = cols[None, :] == labels[:, None]
        delta = jnp.where(fresh[None, :], a[:, None] * p - jnp.where(onehot, c[:, None], 0), 0)
        h_bar = h_bar + delta @ W_blk                                   # x̄ = δ W  (per block)
        W_rows = lax.dynamic_slice_in_dim(W_bar, start, block, axis=0)
        W_bar = lax.dynamic_update_slice_in_dim(W_bar, W_rows + delta.T @ h, start, axis=0)
        return h_bar, W_bar                                             # W̄ = δᵀ h (per block)

    init = (jnp.zeros_like(h), jnp.zeros_like(W))
    h_bar, W_bar = lax.fori_loop(0, _n_blocks(W.shape[0], block), step, init)
    return h_bar, W_bar, None, None


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


# ── the textbook rule: logits materialised, log-softmax saved ──

@jax.custom_vjp
def _dense(h, W, labels, mask):
    return _dense_fwd(h, W, labels, mask)[0]


def _dense_fwd(h, W, labels, mask):
    z = h @ W.T                                                         # (N, V)
    lse = jax.nn.logsumexp(z, axis=-1)
    onehot = jax.nn.one_hot(labels, W.shape[0], dtype=h.dtype)
    loss = _loss(lse, jnp.sum(onehot * z, axis=-1), mask)
    return (loss, lse), (h, W, labels, mask, z - lse[:, None])          # res: log softmax (N, V)


def _dense_bwd(res, g):
    h, W, labels, mask, logp = res
    g_loss, g_lse = g
    c = g_loss * _weights(mask, h.dtype)
    onehot = jax.nn.one_hot(labels, W.shape[0], dtype=h.dtype)
    delta = (c + g_lse)[:, None] * jnp.exp(logp) - c[:, None] * onehot  # ḡ (ŷ − y)/m + ḡ_lse ŷ
    return delta @ W, delta.T @ h, None, None


_dense.defvjp(_dense_fwd, _dense_bwd)


def linear_cross_entropy(h, W, labels, *, block_size: int = DEFAULT_BLOCK_SIZE, where=None,
                         return_lse: bool = False, method: str = "chunked"):
    r"""Mean softmax cross-entropy of the logits z = h Wᵀ, never materialising them.

    Forward:  z_i = W h_i  (V logits per token),  lse_i = log Σ_j e^{z_ij},
              L = (1/m) Σ_{i counted} (lse_i − z_{i, y_i}),  m = the number of counted tokens
              (those where ``where`` is True; all of them by default; 0 tokens give L = 0).
              lse is accumulated block by block: M ← max(M, max_j z_ij),
              S ← S e^{M_old − M} + Σ_j e^{z_ij − M},  lse = M + log S.
    VJP:      δ_ij = ∂L/∂z_ij = ḡ (ŷ_ij − [j = y_i]) / m  with ŷ = softmax(z) = e^{z − lse}
              (tutorial §5: ŷ − y), plus ḡ_lse,i ŷ_ij when the lse is returned and used
              (a z-loss); then as for ``dense`` without bias (§7.1):
              h̄ = δ W  (N, D),  W̄ = δᵀ h  (V, D).  The chunked rule forms δ for one block of
              ``block_size`` columns at a time from the saved lse and accumulates both.
              Integer labels and the mask get no cotangent.
    Saves:    h, W, the labels, the mask and lse (N,): O(N + V)·D, not the (N, V) logits
              (tutorial §11.2: cache the small statistic, recompute the big one).
              ``method="dense"`` saves log softmax(z), (N, V), as autodiff would.
    Cost:     the chunked rule computes h Wᵀ twice (forward and backward): four matmuls of
              N·V·D to autodiff's three, traded for never writing N·V numbers to memory.
    Shapes:   h: (..., D),  W: (V, D) (fbp's (n_out, n_in); a tied embedding table as it is),
              labels: (...)  →  L: ()  (and lse: (...) with ``return_lse``).

    Args:
      h: floating hidden states ``(..., D)``.
      W: floating output table ``(V, D)`` of h's dtype.
      labels: integer targets ``(...)`` in [0, V) (checked when concrete, where counted).
      block_size: vocabulary columns per block (chunked only), a positive int; need not divide
        V (the last block is shifted back and its repeated columns masked); min(block_size, V)
        is used.
      where: optional boolean mask ``(...)``: the mean runs over the True positions only
        (padding tokens, whose labels may be anything, are False).
      return_lse: also return lse ``(...)``, differentiable (its cotangent is ḡ_lse ŷ).
      method: ``"chunked"`` (default) or ``"dense"`` (the textbook rule with logits).
    Returns:
      the loss, a scalar; or ``(loss, lse)`` with ``return_lse``.
    """
    h, W, labels, mask, block = _validate(h, W, labels, block_size, where, method)
    batch = labels.shape
    flat = (h.reshape(-1, h.shape[-1]), W, labels.reshape(-1), mask.reshape(-1))
    loss, lse = _chunked(block, *flat) if method == "chunked" else _dense(*flat)
    return (loss, lse.reshape(batch)) if return_lse else loss


def _validate(h, W, labels, block_size, where, method):
    if method not in _METHODS:
        raise ValueError(f"method must be one of {list(_METHODS)}; got {method!r}.")
    if isinstance(block_size, bool) or not isinstance(block_size, int):
        raise TypeError(f"block_size must be a positive int; got {type(block_size).__name__} "
                        f"{block_size!r}. Pass e.g. block_size={DEFAULT_BLOCK_SIZE}.")
    if block_size <= 0:
        raise ValueError(f"block_size must be a positive int; got {block_size}. "
                         f"Pass e.g. block_size={DEFAULT_BLOCK_SIZE}.")
    h = float_array(h, "h", min_rank=1)
    W = float_array(W, "W", min_rank=2)
    if W.ndim != 2 or W.shape[0] < 1:
        raise ValueError(f"W must have shape (V, D) with V ≥ 1; got shape {W.shape}.")
    if h.shape[-1] != W.shape[1]:
        hint = (" (W is (n_out, n_in) = (V, D) in fbp: pass the table itself, not W.T)"
                if W.shape[0] == h.shape[-1] else "")
        raise ValueError(f"h must have shape (..., D) with D = W.shape[1] = {W.shape[1]}; got h "
                         f"of shape {h.shape} and W of shape {W.shape}{hint}.")
    same_dtype(h=h, W=W)
    labels = integer_array(labels, "labels")
    if labels.shape != h.shape[:-1]:
        raise ValueError(f"labels must have shape h.shape[:-1] = {h.shape[:-1]}; got "
                         f"{labels.shape}.")
    if where is None:
        mask = jnp.ones(labels.shape, bool)
    else:
        mask = jnp.asarray(where)
        if mask.dtype != jnp.bool_:
            raise TypeError(f"where must be a boolean array; got dtype {mask.dtype}. "
                            "Pass e.g. where=(labels != pad_id) or where.astype(bool).")
        if mask.shape != labels.shape:
            raise ValueError(f"where must have the shape of labels {labels.shape}; got "
                             f"{mask.shape}.")
    indices_in_range(labels, "labels", W.shape[0], where=where, unit="classes")
    return h, W, labels, mask, min(block_size, W.shape[0])

