r"""Softmax cross-entropy of a linear head over a large vocabulary, without its logits.

The head of a language model is ``z = h Wᵀ`` with ``W`` the ``(V, D)`` output (or tied
embedding) table; the loss is the tutorial's softmax cross-entropy of ``z`` (§5), whose
gradient is (ŷ − y)/m.  Autodiff of that composition keeps the ``(N, V)`` logits (and its
softmax) for the backward: 512 MiB of float32 at N = 4,096 tokens and V = 32,768.  The rules
here never hold them:

* fused (the default, as Liger-Kernel's fused linear cross-entropy): the loss is linear in
  its cotangent ḡ, so the forward pass of a gradient forms h̄ and W̄ at ḡ = 1, one block of
  tokens at a time against the whole vocabulary (the block's log-sum-exp is final at once),
  and the backward scales them by ḡ.  Three N·V·D matmuls, as autodiff has.
* chunked (Cut Cross-Entropy's order): the forward keeps only the per-token log-sum-exp,
  accumulated over blocks of vocabulary columns online (a running max and a rescaled running
  sum, as in FlashAttention); the backward walks the blocks again, forming
  ``(softmax − onehot)/m`` for one block at a time.  Four matmuls: h Wᵀ twice.

The textbook rule (``method="dense"``) stays beside them: the readable version, and the one
the others are tested against.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from fbp._validate import (
    class_labels,
    float_array,
    integer_array,
    positive_int,
    same_dtype,
)

# Columns of the vocabulary per block (chunked rule).  The backward holds a (block, N) slab of
# logits and one of δ at a time: 2 · 1,024 · 4,096 · 4 B = 32 MiB at N = 4,096 in float32 (with
# hᵀ and XLA's reuse: 34 MiB measured), against autodiff's 1 GiB at V = 32,768.  Halving it
# halves the slabs; a paired run of blocks of 512, 1,024 and 2,048 (in the earlier (N, block)
# layout, on the loaded 2-core machine) gave loss + grad times within the noise of autodiff's
# (0.95, 1.13, 0.87), so 1,024 is the middle: under 1/20 of autodiff's temp with room, and a
# (1,024 × D) operand still wide for each block's matmuls.
DEFAULT_BLOCK_SIZE = 1024
# The fused rule takes whole rows of the vocabulary for a block of tokens: as many tokens as
# keep that (tokens, V) slab of logits near 2²³ numbers (32 MiB in float32) — 256 tokens at
# V = 32,768, 64 at V = 131,072 — so its memory does not grow with N or V; its W̄ is
# accumulated 2,048 vocabulary rows at a time (a 4 MiB partial at D = 512).  Paired runs at
# N = 4,096, D = 512, V = 32,768 (loss + grads against autodiff, 7 rounds, 2 cores): 256 tokens
# × 2,048 rows 0.94 at 38.5 MiB, 256 × 4,096 0.99 at 44.5 MiB, 128 × 8,192 1.06 at 36.3 MiB,
# 128 × 1,024 1.13 at 18.8 MiB: more tokens per block is fewer passes over W̄.
FUSED_SLAB = 2 ** 23
FUSED_BLOCK_SIZE = 2048
_METHODS = ("fused", "chunked", "dense")


def _weights(mask, labels, V, dtype):
    """Per-token weight 1/m where ``mask`` is True (m = max(Σ mask, 1), counted in ≥ float32),
    0 elsewhere; NaN at a counted token whose label is outside [0, V).

    Concrete labels are checked up front; a traced one (inside ``jit``) cannot be, so there the
    weight carries it: that token's loss term and its gradient row are NaN in every rule (as
    in ``softmax_cross_entropy``), where a clipped index would train on another class."""
    count_dtype = jnp.promote_types(dtype, jnp.float32)
    m = jnp.maximum(jnp.sum(mask, dtype=count_dtype), 1)
    outside = mask & ((labels < 0) | (labels >= V))
    return jnp.where(outside, jnp.nan, mask / m).astype(dtype)


def _span(size, k, block):
    """Block k of ``size`` rows: [start, start + block), start = min(k·block, size − block).

    The last block of a ragged size is shifted back to end at ``size`` (so every slice has one
    static shape); ``fresh`` marks its rows ≥ k·block, the ones no earlier block covered."""
    start = jnp.minimum(k * block, size - block)
    rows = start + jnp.arange(block)
    return start, rows, rows >= k * block


def _block(W, k, block):
    """Block k of the vocabulary: (start, its rows of W, their indices, fresh), as ``_span``."""
    start, cols, fresh = _span(W.shape[0], k, block)
    return start, lax.dynamic_slice_in_dim(W, start, block, axis=0), cols, fresh


def _n_blocks(size, block):
    return -(-size // block) if size else 0


# ── the chunked rule: online log-sum-exp forward, blockwise (softmax − onehot)/m backward ──

def _lse_and_label_logit(block, h, W, labels):
    """lse_i = log Σ_j e^{z_ij}, one vocabulary block at a time, and z_{i, yᵢ} = h_i · W_{yᵢ}:
    the label's logit is one row of W per token (a gather, N·D), not a search of every block."""
    n, h_T = h.shape[0], h.T

    def step(k, carry):
        run_max, run_sum = carry
        _, W_blk, _, fresh = _block(W, k, block)
        z_T = jnp.where(fresh[:, None], W_blk @ h_T, -jnp.inf)           # (block, N): zᵀ
        new_max = jnp.maximum(run_max, jnp.max(z_T, axis=0))
        return new_max, (run_sum * jnp.exp(run_max - new_max)
                         + jnp.sum(jnp.exp(z_T - new_max[None, :]), axis=0))

    init = (jnp.full((n,), -jnp.inf, h.dtype), jnp.zeros((n,), h.dtype))
    run_max, run_sum = lax.fori_loop(0, _n_blocks(W.shape[0], block), step, init)
    z_label = jnp.sum(h * jnp.take(W, labels, axis=0, mode="clip"), axis=1)  # masked: unused
    return run_max + jnp.log(run_sum), z_label


def _loss(lse, z_label, labels, mask, V):
    return jnp.sum(jnp.where(mask, lse - z_label, 0) * _weights(mask, labels, V, lse.dtype))


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunked(block, h, W, labels, mask):
    lse, z_label = _lse_and_label_logit(block, h, W, labels)
    return _loss(lse, z_label, labels, mask, W.shape[0]), lse


def _chunked_fwd(block, h, W, labels, mask):
    lse, z_label = _lse_and_label_logit(block, h, W, labels)
    loss = _loss(lse, z_label, labels, mask, W.shape[0])
    return (loss, lse), (h, W, labels, mask, lse)                       # res: lse, not logits


def _chunked_bwd(block, res, g):
    h, W, labels, mask, lse = res
    g_loss, g_lse = g
    c = g_loss * _weights(mask, labels, W.shape[0], h.dtype)  # ḡ/m at counted tokens (onehot)
    a = c + g_lse                                   # the softmax's factor (z-loss adds ḡ_lse)

    h_T = h.T

    def step(k, carry):                  # the block's δ as δᵀ (block, N): each matmul then
        h_bar, W_bar = carry             # reads its operands in their stored order
        start, W_blk, cols, fresh = _block(W, k, block)
        p_T = jnp.exp(W_blk @ h_T - lse[None, :])                       # softmaxᵀ (block, N)
        onehot_T = cols[:, None] == labels[None, :]
        delta_T = jnp.where(fresh[:, None],
                            a[None, :] * p_T - jnp.where(onehot_T, c[None, :], 0), 0)
        h_bar = h_bar + delta_T.T @ W_blk                               # x̄ = δ W  (per block)
        W_rows = lax.dynamic_slice_in_dim(W_bar, start, block, axis=0)
        W_bar = lax.dynamic_update_slice_in_dim(W_bar, W_rows + delta_T @ h, start, axis=0)
        return h_bar, W_bar                                             # W̄ = δᵀ h (per block)

    init = (jnp.zeros_like(h), jnp.zeros_like(W))
    h_bar, W_bar = lax.fori_loop(0, _n_blocks(W.shape[0], block), step, init)
    return h_bar, W_bar, None, None


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


# ── the fused rule: one pass over blocks of tokens forms the loss and both gradients ──

def _tokens_per_block(n, V, tokens):
    """Tokens per block of the fused rule: ``tokens``, or as many as keep its (tokens, V) slab
    of logits near FUSED_SLAB elements; never more than n (0 for no tokens: no blocks)."""
    return min(n, tokens if tokens is not None else max(1, FUSED_SLAB // V))


def _fused_pass(tokens, block, h, W, labels, mask, *, grads):
    """lse (N,) and z_{i, yᵢ} (N,); with ``grads`` also h̄ (N, D) and W̄ (V, D) of L at ḡ = 1.

    Each block of tokens sees the whole vocabulary at once — z = h_t Wᵀ, (tokens, V) — so its
    lse is final within the block and δ = w (softmax − onehot) can be formed at once:
    h̄_t = δ W is written, W̄ += δᵀ h_t is accumulated ``block`` vocabulary rows at a time (a
    (block, D) partial, never a second (V, D) one).  Three N·V·D matmuls in all.  The label's
    logit is read from the slab (a gather of (N, D) rows of W would be one more h-sized temp)."""
    n, V = h.shape[0], W.shape[0]
    w = _weights(mask, labels, V, h.dtype)

    def step(t, carry):
        lse, z_label, h_bar, W_bar = carry
        start, rows, fresh = _span(n, t, tokens)
        h_t = lax.dynamic_slice_in_dim(h, start, tokens, axis=0)
        y_t = labels[rows]
        z = h_t @ W.T                                                   # (tokens, V)
        z_max = jnp.max(z, axis=1)
        e = jnp.exp(z - z_max[:, None])                 # one exp per logit, for lse and for ŷ
        e_sum = jnp.sum(e, axis=1)
        lse_t = z_max + jnp.log(e_sum)
        label_t = jnp.take_along_axis(z, jnp.clip(y_t, 0, V - 1)[:, None], axis=1)[:, 0]
        put = lambda a, a_t: lax.dynamic_update_slice_in_dim(                # fresh rows only
            a, jnp.where(fresh, a_t, lax.dynamic_slice_in_dim(a, start, tokens)), start, 0)
        lse, z_label = put(lse, lse_t), put(z_label, label_t)
        if not grads:
            return lse, z_label, h_bar, W_bar
        w_t = jnp.where(fresh, w[rows], 0)       # rows an earlier block covered: δ = 0, adds 0
        onehot = jnp.arange(V)[None, :] == y_t[:, None]
        delta = w_t[:, None] * (e / e_sum[:, None] - onehot)            # (tokens, V)
        h_rows = lax.dynamic_slice_in_dim(h_bar, start, tokens, axis=0)
        h_bar = lax.dynamic_update_slice_in_dim(h_bar, h_rows + delta @ W, start, 0)  # h̄_t = δ W

        def vocab_step(k, W_bar):                                       # W̄ += δᵀ h_t
            v_start, _, v_fresh = _span(V, k, block)
            d_k = jnp.where(v_fresh[None, :],
                            lax.dynamic_slice_in_dim(delta, v_start, block, axis=1), 0)
            W_rows = lax.dynamic_slice_in_dim(W_bar, v_start, block, axis=0)
            partial_sum = jnp.matmul(d_k.T, h_t, preferred_element_type=W_bar.dtype)
            return lax.dynamic_update_slice_in_dim(W_bar, W_rows + partial_sum, v_start, 0)

        return lse, z_label, h_bar, lax.fori_loop(0, _n_blocks(V, block), vocab_step, W_bar)

    zeros = jnp.zeros((n,), h.dtype)
    # W̄ sums one partial per block of tokens: in float16/bfloat16 that sum is kept in float32
    # (rounding N/tokens times in bfloat16 cost 8× autodiff's error at N = 2,048)
    acc = jnp.promote_types(W.dtype, jnp.float32)
    init = (zeros, zeros) + ((jnp.zeros_like(h), jnp.zeros(W.shape, acc)) if grads
                             else (None, None))
    lse, z_label, h_bar, W_bar = lax.fori_loop(0, _n_blocks(n, tokens), step, init)
    return lse, z_label, h_bar, None if W_bar is None else W_bar.astype(W.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _fused(tokens, block, with_lse, h, W, labels, mask):
    lse, z_label, _, _ = _fused_pass(tokens, block, h, W, labels, mask, grads=False)
    return _loss(lse, z_label, labels, mask, W.shape[0]), lse


def _fused_fwd(tokens, block, with_lse, h, W, labels, mask):
    lse, z_label, h_bar, W_bar = _fused_pass(tokens, block, h, W, labels, mask, grads=True)
    out = (_loss(lse, z_label, labels, mask, W.shape[0]), lse)
    return out, (h_bar, W_bar, (h, W, labels, mask, lse) if with_lse else None)


def _fused_bwd(tokens, block, with_lse, res, g):
    h_bar, W_bar, saved = res
    g_loss, g_lse = g
    h_bar, W_bar = g_loss * h_bar, g_loss * W_bar      # the loss is linear in ḡ: scale, no pass
    if with_lse:                                       # ḡ_lse ŷ needs ḡ_lse: one chunked pass
        lse_h, lse_W, _, _ = _chunked_bwd(block, saved, (jnp.zeros_like(g_loss), g_lse))
        h_bar, W_bar = h_bar + lse_h, W_bar + lse_W
    return h_bar, W_bar, None, None


_fused.defvjp(_fused_fwd, _fused_bwd)


# ── the textbook rule: logits materialised, log-softmax saved ──

@jax.custom_vjp
def _dense(h, W, labels, mask):
    return _dense_fwd(h, W, labels, mask)[0]


def _dense_fwd(h, W, labels, mask):
    z = h @ W.T                                                         # (N, V)
    lse = jax.nn.logsumexp(z, axis=-1)
    onehot = jax.nn.one_hot(labels, W.shape[0], dtype=h.dtype)
    loss = _loss(lse, jnp.sum(onehot * z, axis=-1), labels, mask, W.shape[0])
    return (loss, lse), (h, W, labels, mask, z - lse[:, None])          # res: log softmax (N, V)


def _dense_bwd(res, g):
    h, W, labels, mask, logp = res
    g_loss, g_lse = g
    c = g_loss * _weights(mask, labels, W.shape[0], h.dtype)
    onehot = jax.nn.one_hot(labels, W.shape[0], dtype=h.dtype)
    delta = (c + g_lse)[:, None] * jnp.exp(logp) - c[:, None] * onehot  # ḡ (ŷ − y)/m + ḡ_lse ŷ
    return delta @ W, delta.T @ h, None, None


_dense.defvjp(_dense_fwd, _dense_bwd)


def linear_cross_entropy(h, W, labels, *, block_size: int | None = None, where=None,
                         return_lse: bool = False, method: str | None = None,
                         tokens_per_block: int | None = None):
    r"""Mean softmax cross-entropy of the logits z = h Wᵀ, never materialising them.

    Forward:  z_i = W h_i  (V logits per token),  lse_i = log Σ_j e^{z_ij},
              L = (1/m) Σ_{i counted} (lse_i − z_{i, y_i}),  m = the number of counted tokens
              (those where ``where`` is True; all of them by default; 0 tokens give L = 0).
              lse is accumulated block by block: M ← max(M, max_j z_ij),
              S ← S e^{M_old − M} + Σ_j e^{z_ij − M},  lse = M + log S.
    VJP:      δ_ij = ∂L/∂z_ij = ḡ (ŷ_ij − [j = y_i]) / m  with ŷ = softmax(z) = e^{z − lse}
              (tutorial §5: ŷ − y), plus ḡ_lse,i ŷ_ij when the lse is returned and used
              (a z-loss); then as for ``dense`` without bias (§7.1):
              h̄ = δ W  (N, D),  W̄ = δᵀ h  (V, D).  Integer labels and the mask get no
              cotangent.  Three ways to form them (by default the cheapest: fused, or
              chunked when the lse is returned):
              ``"fused"``: L is linear in ḡ, so the forward pass of a gradient
              forms h̄ and W̄ at ḡ = 1 and the backward only scales them by ḡ.  It walks
              blocks of ``tokens_per_block`` tokens, each against the whole vocabulary: the
              block's lse is final at once, δ is formed from it, h̄_t = δ W is written and
              W̄ += δᵀ h_t accumulated ``block_size`` vocabulary rows at a time.  Three
              N·V·D matmuls, as autodiff has.  Not differentiated, it computes lse only.
              ``"chunked"``: the forward keeps only lse (an online log-sum-exp over blocks of
              ``block_size`` columns); the backward walks the columns again, forming δ for
              one block at a time from the saved lse: four matmuls, h Wᵀ computed twice.
              ``"dense"``: the textbook rule; it materialises z.
    Saves:    fused: h̄ and W̄ themselves (the size of h and W; XLA scales them in place).
              chunked: h, W, the labels, the mask and lse (N,).  Neither keeps the (N, V)
              logits (tutorial §11.2: cache the small statistic, recompute the big one).
              With ``return_lse`` the fused rule also keeps the chunked rule's residuals and
              adds its backward for the ḡ_lse ŷ term (ḡ_lse is known only then): six
              matmuls, so the default is then the chunked rule's four.
              ``"dense"`` saves log softmax(z), (N, V), as autodiff would.
    Memory:   fused: one (tokens_per_block, V) slab of logits (2²³ numbers by default,
              whatever N and V are) and one (block_size, D) partial of W̄.
              chunked: (N, block_size) slabs.
    Shapes:   h: (..., D),  W: (V, D) (fbp's (n_out, n_in); a tied embedding table as it is),
              labels: (...)  →  L: ()  (and lse: (...) with ``return_lse``).

    Args:
      h: floating hidden states ``(..., D)``.
      W: floating output table ``(V, D)`` of h's dtype.
      labels: integer targets ``(...)`` in [0, V) (checked when concrete, where counted;
        inside ``jit`` a counted label outside [0, V) makes the loss NaN and that token's
        gradient row NaN, as in ``softmax_cross_entropy``).
      block_size: vocabulary rows per block, a positive int: the columns of each slab of the
        chunked rule (default 1,024), the rows of each W̄ partial of the fused one (default
        2,048).  It need not divide V (the last block is shifted back and its repeated rows
        masked); min(block_size, V) is used.
      where: optional boolean mask ``(...)``: the mean runs over the True positions only
        (padding tokens, whose labels may be anything, are False).
      return_lse: also return lse ``(...)``, differentiable (its cotangent is ḡ_lse ŷ).
      method: ``"fused"``, ``"chunked"`` or ``"dense"`` (the textbook rule); None (default)
        takes ``"fused"``, or ``"chunked"`` with ``return_lse``.
      tokens_per_block: tokens per block of the fused rule (the others ignore it), a
        positive int; None (default) takes max(1, 2²³ // V).  It need not divide N.
    Returns:
      the loss, a scalar; or ``(loss, lse)`` with ``return_lse``.
    """
    tokens_per_block = _count(tokens_per_block, "tokens_per_block", 128, optional=True)
    if method is None:
        method = "chunked" if return_lse else "fused"
    h, W, labels, mask, block = _validate(h, W, labels, block_size, where, method)
    batch = labels.shape
    flat = (h.reshape(-1, h.shape[-1]), W, labels.reshape(-1), mask.reshape(-1))
    if method == "fused":
        tokens = _tokens_per_block(flat[0].shape[0], W.shape[0], tokens_per_block)
        loss, lse = _fused(tokens, block, return_lse, *flat)
    else:
        loss, lse = _chunked(block, *flat) if method == "chunked" else _dense(*flat)
    return (loss, lse.reshape(batch)) if return_lse else loss


def _count(value, name, example, *, optional=False):
    """A positive int (Python or NumPy) as an int, or None where ``optional``; else an error
    that names the argument and a value that works."""
    if optional and value is None:
        return None
    try:
        return positive_int(value, name)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{err} Pass e.g. {name}={example}"
                        f"{' (or None for the default)' if optional else ''}.") from None


def _validate(h, W, labels, block_size, where, method):
    if method not in _METHODS:
        raise ValueError(f"method must be one of {list(_METHODS)}; got {method!r}.")
    if block_size is None:
        block_size = FUSED_BLOCK_SIZE if method == "fused" else DEFAULT_BLOCK_SIZE
    block_size = _count(block_size, "block_size", DEFAULT_BLOCK_SIZE)
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
    class_labels(labels, "labels", W.shape[0], where=where)   # fit checks traced labels too
    return h, W, labels, mask, min(block_size, W.shape[0])

