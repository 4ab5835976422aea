"""Op-table cases for the masked loss: ``softmax_cross_entropy(..., where=)`` and its
forward-mode twin ``fbp.forward.softmax_cross_entropy(..., where=)``.

The reference is independent of fbp's rule: optax's per-example losses, masked and averaged
by plain ``jnp`` over the selected positions (at least one position is selected here, so the
reference needs no guard against 0/0; the all-False case is tested on its own).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from fbp.check.op_table import N_IN, M, OpCase, _normal
from fbp.ops import losses

T = 2   # a (M, T) batch of sequences of T positions, N_IN classes


def _mask(rng):
    w = rng.uniform(size=(M, T)) < 0.6
    w[0, 0] = True                     # at least one position counts
    return jnp.asarray(w)


def _masked_mean(per_position, w):
    return jnp.sum(jnp.where(w, per_position, 0.0)) / jnp.sum(w)


def cases() -> list:
    import fbp.forward as forward  # a sibling tool, not below the checker: imported on use
    return _cases(losses, "") + _cases(forward, "forward.")


def _cases(ops, prefix: str) -> list:
    return [
        OpCase(prefix + "softmax_cross_entropy(labels, where)",
               lambda z, t, w: ops.softmax_cross_entropy(z, t, where=w),
               lambda r, d: (_normal(r, (M, T, N_IN), d),
                             jnp.asarray(r.integers(0, N_IN, (M, T))), _mask(r)),
               lambda z, t, w: _masked_mean(
                   optax.losses.softmax_cross_entropy_with_integer_labels(z, t), w)),
        OpCase(prefix + "softmax_cross_entropy(soft, where)",
               lambda z, t, w: ops.softmax_cross_entropy(z, t, where=w),
               lambda r, d: (_normal(r, (M, T, N_IN), d),
                             jnp.asarray(r.dirichlet(np.ones(N_IN), (M, T)), d), _mask(r)),
               lambda z, t, w: _masked_mean(optax.losses.softmax_cross_entropy(z, t), w)),
    ]
