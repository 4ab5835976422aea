r"""Embedding lookup (a dense layer on one-hot inputs, without the one-hots) and its rule."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from fbp._validate import float_array, indices_in_range, integer_array, wide_indices


def _past_the_end(ids, vocab):
    """ids with every one outside [0, vocab) moved to vocab, past the end: −1 is outside the
    table as the check of concrete ids says, not the last row (NumPy's wrap-around, which
    jnp.take follows), and an int64 id ≥ 2³¹ is not wrapped round to a real row when the
    gather narrows its indices to int32 (2³² + 1 would read row 1)."""
    ids = wide_indices(ids)                                          # room for vocab itself
    return jnp.where((ids < 0) | (ids >= vocab), vocab, ids)


def _lookup(vocab, table, ids):
    return jnp.take(table, _past_the_end(ids, vocab), axis=0, mode="fill", fill_value=jnp.nan)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _embedding(vocab, table, ids):
    return _lookup(vocab, table, ids)


def _embedding_fwd(vocab, table, ids):
    return _lookup(vocab, table, ids), ids            # res: the ids alone, not the table


def _embedding_bwd(vocab, ids, g):
    delta = g.reshape(-1, g.shape[-1])                 # (m, d), one row per looked-up id
    rows = _past_the_end(ids, vocab).reshape(-1)       # an id outside [0, vocab) adds nothing
    table_bar = jnp.zeros((vocab, g.shape[-1]), g.dtype).at[rows].add(delta, mode="drop")
    return table_bar, None                             # integer ids get no cotangent


_embedding.defvjp(_embedding_fwd, _embedding_bwd)


def embedding(table, ids):
    r"""Rows of ``table`` picked by integer ``ids``:  y[…] = table[ids[…]].

    It is ``dense`` without bias on one-hot inputs, y = onehot(id) · table, computed as a
    gather instead of a matmul with a (…, vocab) one-hot matrix.
    VJP:      tablē = onehotᵀ δ, i.e. tablē[v] = Σ_{positions p with ids[p] = v} δ[p]
              (a scatter-add: a repeated id accumulates the δ of every position it sits at;
              the rows no id picked get 0).  ids are integers and get no cotangent.
    Saves:    the ids only (integers, one per position); autodiff of ``jnp.take`` keeps the
              same indices, and the rule needs nothing of the table but its row count, which
              is static (tutorial §11.2: cache what the backward needs, no more).
    Shapes:   table: (vocab, d),  ids: any shape (...)  →  (..., d).

    Args:
      table: floating array ``(vocab, d)``.
      ids: integer array of any shape, values in [0, vocab).  Checked when concrete; inside
        ``jit`` an id outside [0, vocab) — a negative one too, which ``jnp.take`` would wrap
        round to a real row, and an int64 one beyond int32 — gives a NaN row and adds no
        gradient.
    Returns:
      the embeddings, ``(*ids.shape, d)``, in the table's dtype.
    """
    table = float_array(table, "table", min_rank=2)
    if table.ndim != 2:
        raise ValueError(f"table must have shape (vocab, d); got shape {table.shape}.")
    ids = integer_array(ids, "ids")
    indices_in_range(ids, "ids", table.shape[0])
    return _embedding(table.shape[0], table, ids)
