r"""The recurrent ops in the op table, and their references: plain-jnp ``lax.scan`` loops.

The references are the textbook cell inside a ``lax.scan``, differentiated by JAX itself:
no hoisted matmuls, no fbp code.  Truncated BPTT is the same scan with ``lax.stop_gradient``
applied to the state carried into steps k, 2k, … — where ``fbp.rnn``'s docstring says it is.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from fbp.check.op_table import N_IN, M, OpCase, _normal
from fbp.ops import lstm as lstm_ops
from fbp.ops import rnn as rnn_ops

T, N_HIDDEN = 4, 3                 # tiny: the checker's full Jacobian has M·T·N_HIDDEN rows


def _cut(t, truncate, state):
    """The carried state, through stop_gradient where truncated BPTT cuts it (t = k, 2k, …)."""
    if truncate is None:
        return state
    cut = (t % truncate == 0) & (t > 0)
    return jax.tree.map(lambda s: jnp.where(cut, lax.stop_gradient(s), s), state)


def reference_rnn(params, xs, h0=None, truncate=None):
    """h_t = tanh(W_xh x_t + W_hh h_{t−1} + b) in a plain scan over axis −2 of xs."""
    W_xh, W_hh, b = params
    if h0 is None:
        h0 = jnp.zeros((*xs.shape[:-2], W_hh.shape[0]), xs.dtype)

    def step(h, inputs):
        t, x = inputs
        h = _cut(t, truncate, h)
        z = x @ W_xh.T + h @ W_hh.T
        h = jnp.tanh(z + jnp.broadcast_to(b, z.shape))
        return h, h

    _, hs = lax.scan(step, h0, (jnp.arange(xs.shape[-2]), jnp.moveaxis(xs, -2, 0)))
    return jnp.moveaxis(hs, 0, -2)


def reference_lstm(params, xs, state0=None, truncate=None):
    """The LSTM cell (gates i, f, g, o) in a plain scan: ``(hs, (h, c))``."""
    W_x, W_h, b = params
    if state0 is None:
        state0 = (jnp.zeros((*xs.shape[:-2], W_h.shape[1]), xs.dtype),) * 2

    def step(state, inputs):
        t, x = inputs
        h, c = _cut(t, truncate, state)
        z = x @ W_x.T + h @ W_h.T
        i, f, g, o = jnp.split(z + jnp.broadcast_to(b, z.shape), 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    final, hs = lax.scan(step, state0, (jnp.arange(xs.shape[-2]), jnp.moveaxis(xs, -2, 0)))
    return jnp.moveaxis(hs, 0, -2), final


def _rnn_params(r, d, n_in=N_IN, n=N_HIDDEN):
    return rnn_ops.RNN(_normal(r, (n, n_in), d) / n_in**0.5, _normal(r, (n, n), d) / n**0.5,
                       0.3 * _normal(r, (n,), d))


def _lstm_params(r, d, n_in=N_IN, n=N_HIDDEN):
    return lstm_ops.LSTM(_normal(r, (4 * n, n_in), d) / n_in**0.5,
                         _normal(r, (4 * n, n), d) / n**0.5, 0.3 * _normal(r, (4 * n,), d))


def _flat(out):
    """``(hs, (h, c))`` as one array (…, T + 2, n): every output's cotangent enters the rule,
    and the table's tools that expect one output array (``fbp.transposed``'s test) apply."""
    hs, (h, c) = out
    return jnp.concatenate([hs, h[..., None, :], c[..., None, :]], axis=-2)


def cases() -> list:
    """``rnn`` (h0 = 0) and ``lstm`` with a given state0.  Truncated BPTT is not here: its
    gradient is on purpose not the function's derivative, so finite differences cannot agree;
    tests/test_ops_recurrent.py holds it against the stop_gradient reference instead."""
    xs = (M, T, N_IN)
    return [
        OpCase("rnn", rnn_ops.rnn, lambda r, d: (_rnn_params(r, d), _normal(r, xs, d)),
               reference_rnn),
        OpCase("lstm(state0)", lambda p, x, h0, c0: _flat(lstm_ops.lstm(p, x, (h0, c0))),
               lambda r, d: (_lstm_params(r, d), _normal(r, xs, d),
                             _normal(r, (M, N_HIDDEN), d), _normal(r, (M, N_HIDDEN), d)),
               lambda p, x, h0, c0: _flat(reference_lstm(p, x, (h0, c0)))),
    ]
