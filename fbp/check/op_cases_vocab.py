r"""Op-table cases for the vocabulary ops: ``embedding`` and ``linear_cross_entropy``.

References are built from ``jax.nn`` and plain ``jnp`` only: the embedding as a one-hot
matmul, the loss as optax's cross-entropy of the materialised logits ``h Wᵀ``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fbp.check.op_table import N_IN, M, OpCase, _normal
from fbp.ops import embedding as embedding_ops

VOCAB = 6


def _ref_embedding(table, ids):
    return jax.nn.one_hot(ids, table.shape[0], dtype=table.dtype) @ table


def cases() -> list:
    def ids(r, shape):
        return jnp.asarray(r.integers(0, VOCAB, shape))

    return [
        OpCase("embedding", embedding_ops.embedding,
               lambda r, d: (_normal(r, (VOCAB, N_IN), d), ids(r, (M, 2))), _ref_embedding,
               {"batch_argnums": (1,)}),
    ]
