r"""Op-table cases for the vocabulary ops: ``embedding`` and ``linear_cross_entropy``.

References are built from ``jax.nn`` and plain ``jnp`` only: the embedding as a one-hot
matmul, the loss as optax's cross-entropy of the materialised logits ``h Wᵀ``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fbp.check.op_table import N_IN, M, OpCase, _normal
from fbp.ops import embedding as embedding_ops
from fbp.ops import vocab_loss

VOCAB = 6


def _ref_embedding(table, ids):
    return jax.nn.one_hot(ids, table.shape[0], dtype=table.dtype) @ table


def _ref_linear_cross_entropy(h, W, labels):
    return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(h @ W.T, labels))


def _ref_masked(h, W, labels, where):
    ce = optax.losses.softmax_cross_entropy_with_integer_labels(h @ W.T, labels)
    return jnp.sum(jnp.where(where, ce, 0)) / jnp.sum(where)


def cases() -> list:
    def ids(r, shape):
        return jnp.asarray(r.integers(0, VOCAB, shape))

    return [
        OpCase("embedding", embedding_ops.embedding,
               lambda r, d: (_normal(r, (VOCAB, N_IN), d), ids(r, (M, 2))), _ref_embedding,
               {"batch_argnums": (1,)}),
        *(OpCase(f"linear_cross_entropy({method}, block=4)",
                 lambda h, W, y, method=method: vocab_loss.linear_cross_entropy(
                     h, W, y, block_size=4, method=method, tokens_per_block=2),
                 lambda r, d: (_normal(r, (M, N_IN), d), _normal(r, (VOCAB + 5, N_IN), d),
                               jnp.asarray(r.integers(0, VOCAB + 5, (M,)))),
                 _ref_linear_cross_entropy)
          for method in ("fused", "chunked")),
        OpCase("linear_cross_entropy(dense, where)",
               lambda h, W, y, w: vocab_loss.linear_cross_entropy(h, W, y, where=w,
                                                                  method="dense"),
               lambda r, d: (_normal(r, (M + 1, N_IN), d), _normal(r, (VOCAB, N_IN), d),
                             jnp.asarray(r.integers(0, VOCAB, (M + 1,))),
                             jnp.asarray([True, False] * ((M + 1) // 2))),
               _ref_masked, {"batch_argnums": ()}),   # a masked mean: no per-example split
    ]
