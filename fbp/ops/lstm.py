r"""The LSTM, with backpropagation through time written out by hand (Hochreiter & Schmidhuber 1997).

The cell state c_t is the LSTM's answer to §7.2 along time: its recursion c_t = f_t ⊙ c_{t−1}
+ i_t ⊙ g_t is additive, so δc travels back through a product of forget gates f_t alone
(no W and no squashing derivative), which stays near 1 while the net wants to remember.
Truncated BPTT has the semantics of ``fbp.ops.rnn`` (chunks of k steps; both h and c are
stopped between chunks).
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from fbp._validate import same_dtype
from fbp.ops.rnn import (
    batch_major,
    carry_mask,
    check_params,
    check_sequence,
    check_sizes,
    check_state,
    check_truncate,
    first_weight,
    time_major,
)


class LSTM(NamedTuple):
    """Params of ``lstm``, the four gates stacked in the order i, f, g, o (input, forget,
    candidate, output): ``W_x`` (4n, n_in), ``W_h`` (4n, n), ``b`` (4n,); rows
    [0, n) are gate i, [n, 2n) gate f, [2n, 3n) gate g, [3n, 4n) gate o."""

    W_x: jax.Array
    W_h: jax.Array
    b: jax.Array


def init_lstm(key, n_in: int, n_hidden: int, dtype=jnp.float32) -> LSTM:
    """``LSTM`` with ``W_x`` normal of std 1/√n_in, each gate's block of ``W_h`` orthogonal,
    and ``b = 0`` except the forget gate's bias, 1 (Jozefowicz et al. 2015): f ≈ σ(1) ≈ 0.73
    at the start, so the cell remembers (and δc survives) over a few dozen steps."""
    check_sizes(n_in=n_in, n_hidden=n_hidden, dtype=dtype)
    n = n_hidden
    k_x, k_h = jax.random.split(key)
    W_x = jax.random.normal(k_x, (4 * n, n_in), dtype) / math.sqrt(n_in)
    orth = jax.nn.initializers.orthogonal()
    W_h = jnp.concatenate([orth(k, (n, n), dtype) for k in jax.random.split(k_h, 4)])
    b = jnp.zeros((4 * n,), dtype).at[n:2 * n].set(1)
    return LSTM(W_x, W_h, b)


def _gates(z):
    """(…, 4n) pre-activations → (…, 4n) gates [σ(z_i), σ(z_f), tanh(z_g), σ(z_o)]."""
    n = z.shape[-1] // 4
    return jnp.concatenate([jax.nn.sigmoid(z[..., :2 * n]), jnp.tanh(z[..., 2 * n:3 * n]),
                            jax.nn.sigmoid(z[..., 3 * n:])], axis=-1)


def _lstm_forward(params, xs, h0, c0):
    """(gates (T, B, 4n), cell states c_t (T, B, n), hidden states h_t (T, B, n))."""
    W_x, W_h, b = params
    n = h0.shape[-1]
    zx = xs @ W_x.T + b[None, None]                      # (T, B, 4n): the input part, all t

    def step(state, zx_t):
        h, c = state
        a = _gates(zx_t + h @ W_h.T)
        i, f, g, o = (a[:, k * n:(k + 1) * n] for k in range(4))
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (h, c), (a, c, h)

    _, (gates, cs, hs) = lax.scan(step, (h0, c0), zx)
    return gates, cs, hs


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def _lstm(params, xs, h0, c0, truncate):
    _, cs, hs = _lstm_forward(params, xs, h0, c0)
    return hs, cs[-1]


def _lstm_fwd(params, xs, h0, c0, truncate):
    gates, cs, hs = _lstm_forward(params, xs, h0, c0)
    return (hs, cs[-1]), (params, xs, h0, c0, gates, cs, hs)


def _state_before(states, s0, t):
    """s_{t−1} (s0 at t = 0), read in place from the saved states: no shifted copy."""
    prev = lax.dynamic_index_in_dim(states, jnp.maximum(t - 1, 0), keepdims=False)
    return jnp.where(t == 0, s0, prev)


def _lstm_bwd(truncate, res, g):
    params, xs, h0, c0, gates, cs, hs = res
    W_x, W_h, _ = params
    g_hs, c_last_bar = g
    n = h0.shape[-1]
    T = xs.shape[0]
    keep = carry_mask(T, truncate, hs.dtype)

    def step(carry, inputs):    # carry: W_hᵀ δz_{t+1}, f_{t+1} ⊙ δc_{t+1}, and the Σ so far
        dh_next, dc_next, W_x_bar, W_h_bar, b_bar = carry
        t, g_t, a, c, x_t, keep_t = inputs
        i, f, gg, o = (a[:, k * n:(k + 1) * n] for k in range(4))
        c_prev, h_prev = _state_before(cs, c0, t), _state_before(hs, h0, t)
        tc = jnp.tanh(c)
        dh = g_t + dh_next                               # δh_t = ḡ_t + W_hᵀ δz_{t+1}
        dc = dc_next + dh * o * (1 - tc**2)              # δc_t = f_{t+1} δc_{t+1} + δh_t o_t tanh'
        dz = jnp.concatenate([dc * gg * i * (1 - i),     # δz_i = δc_t g_t σ'(z_i)
                              dc * c_prev * f * (1 - f),  # δz_f = δc_t c_{t−1} σ'(z_f)
                              dc * i * (1 - gg**2),      # δz_g = δc_t i_t tanh'(z_g)
                              dh * tc * o * (1 - o)],    # δz_o = δh_t tanh(c_t) σ'(z_o)
                             axis=-1)
        carry = (keep_t * (dz @ W_h), keep_t * (dc * f),
                 W_x_bar + dz.T @ x_t,                   # W̄_x = Σ_t δz_t x_tᵀ
                 W_h_bar + dz.T @ h_prev,                # W̄_h = Σ_t δz_t h_{t−1}ᵀ
                 b_bar + jnp.sum(dz, axis=0))            # b̄ = Σ_t δz_t
        return carry, dz @ W_x                           # x̄_t = W_xᵀ δz_t

    zeros = jnp.zeros_like
    init = (zeros(h0), c_last_bar, zeros(W_x), zeros(W_h), zeros(params.b))
    (h0_bar, c0_bar, W_x_bar, W_h_bar, b_bar), xs_bar = lax.scan(
        step, init, (jnp.arange(T), g_hs, gates, cs, xs, keep), reverse=True)
    # the carry out of step 0 is (W_hᵀ δz_0, f_0 ⊙ δc_0) = (h̄0, c̄0): chunk 0 is never cut
    return LSTM(W_x_bar, W_h_bar, b_bar), xs_bar, h0_bar, c0_bar


_lstm.defvjp(_lstm_fwd, _lstm_bwd)


def lstm(params: LSTM, xs, state0=None, *, truncate: int | None = None):
    r"""An LSTM over a sequence, backward by hand: BPTT as a reverse ``lax.scan`` over (δh, δc).

    Forward, for t = 0 … T−1 ((h₋₁, c₋₁) = state0, zeros when not given), gates in the order
    i, f, g, o of ``LSTM``'s rows::

        z_t = W_x x_t + W_h h_{t−1} + b                      (4n,)
        i_t = σ(z_i)  f_t = σ(z_f)  g_t = tanh(z_g)  o_t = σ(z_o)
        c_t = f_t ⊙ c_{t−1} + i_t ⊙ g_t,    h_t = o_t ⊙ tanh(c_t)

    VJP (chain rule §3, δ recursion §7.1 along time), ḡ_t the cotangent of h_t and
    (h̄_T, c̄_T) those of the final state, added at the last step::

        δh_t = ḡ_t + W_hᵀ δz_{t+1}
        δc_t = f_{t+1} ⊙ δc_{t+1} + δh_t ⊙ o_t ⊙ (1 − tanh²(c_t))
        δz_t = [δc_t ⊙ g_t ⊙ i_t(1 − i_t),  δc_t ⊙ c_{t−1} ⊙ f_t(1 − f_t),
                δc_t ⊙ i_t ⊙ (1 − g_t²),     δh_t ⊙ tanh(c_t) ⊙ o_t(1 − o_t)]
        W̄_x = Σ_t δz_t x_tᵀ   W̄_h = Σ_t δz_t h_{t−1}ᵀ   b̄ = Σ_t δz_t   x̄_t = W_xᵀ δz_t
        h̄0 = W_hᵀ δz_0        c̄0 = f_0 ⊙ δc_0

    §7.2 along time: δc_t reaches c_{t−j} through f_{t−j+1} ⊙ … ⊙ f_t alone — no W and no
    tanh' in that path — which is why the LSTM carries gradient further than the RNN.
    Dimension check (§9.2): δz_t (4n,), x_t (n_in,) → W̄_x (4n, n_in). ✓

    res (§11.2): params, xs, state0, the four gate activations (T, B, 4n), the cell states
    c_t (T, B, n) and the hidden states h_t (T, B, n).  Every derivative above is read off
    those (σ' = σ(1 − σ), tanh' = 1 − tanh², c_{t−1} and h_{t−1} are the states shifted by
    one); tanh(c_t) is recomputed, one elementwise op, rather than stored.  Autodiff of the
    plain scan keeps more per step (both tanh(c_t) and the products it needs).

    ``truncate=k``: as in ``fbp.rnn`` — chunks [0, k), [k, 2k), …, and the state (h, c)
    carried into each later chunk passes through ``lax.stop_gradient``: both carried terms of
    the recursion are dropped at t = k, 2k, …  state0 gets its gradient from chunk 0 only.

    Forward mode: ``fbp.transposed(fbp.lstm)`` (the JVP is the transpose of this VJP),
    tested against ``jax.jvp`` of a plain scan.

    Args:
      params: ``LSTM(W_x (4n, n_in), W_h (4n, n), b (4n,))``, gates i, f, g, o.
      xs: inputs (..., T, n_in): any leading batch dims (none for one sequence), T ≥ 1.
      state0: ``(h0, c0)``, each (..., n) with the batch dims of xs, or None for zeros.
      truncate: None for full BPTT, or the chunk length k ≥ 1 of truncated BPTT.
    Returns:
      ``(hs, (h, c))``: the hidden states (..., T, n) and the final state, each (..., n).
    """
    W_x = first_weight(params, LSTM, "lstm")
    if W_x.shape[0] % 4:
        raise ValueError(f"W_x must have shape (4 n_hidden, n_in), the gates i, f, g, o "
                         f"stacked; got {W_x.shape}, whose {W_x.shape[0]} rows are not a "
                         "multiple of 4.")
    n, n_in = W_x.shape[0] // 4, W_x.shape[1]
    params = check_params(params, LSTM, {"W_h": (4 * n, n), "b": (4 * n,)}, "lstm")
    xs = check_sequence(xs, n_in, "lstm")
    same_dtype(xs=xs, W_x=params.W_x)
    truncate = check_truncate(truncate)
    batch = xs.shape[:-2]
    if state0 is None:
        state0 = (jnp.zeros((*batch, n), xs.dtype),) * 2
    if not (isinstance(state0, tuple) and len(state0) == 2):
        raise TypeError(f"state0 must be a pair (h0, c0) or None; got {type(state0).__name__}.")
    h0, c0 = (check_state(s, name, batch, n, xs.dtype) for s, name in zip(state0, ("h0", "c0")))
    hs, c = _lstm(params, time_major(xs), h0.reshape(-1, n), c0.reshape(-1, n), truncate)
    hs = batch_major(hs, batch)
    return hs, (hs[..., -1, :], c.reshape(*batch, n))
