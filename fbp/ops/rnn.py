r"""The tanh recurrent net, with backpropagation through time written out by hand.

An RNN is the tutorial's MLP turned sideways (§7.1, §7.2): the same weights ``W_hh`` are
applied once per time step, so the δ recursion of §7.1 runs backwards along time instead of
down through layers, and the product of one factor ``W_hhᵀ diag(1 − h_t²)`` per step is the
vanishing (or exploding) gradient of §7.2.  The rule below is that recursion as a reverse
``lax.scan``.  The LSTM (``fbp.ops.lstm``) shares this file's validation and truncation helpers.

Truncated BPTT, for both ops (``truncate=k``): the sequence is cut into chunks of ``k`` steps,
[0, k), [k, 2k), …, and the state carried into each chunk after the first passes through
``lax.stop_gradient``.  So the gradient of any output in chunk c reaches the hidden states,
inputs and weights of chunk c only, and the initial state only from chunk 0; the weights still
get the whole Σ over every step.  ``truncate ≥ T`` is full BPTT.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from fbp._validate import float_array, same_dtype


class RNN(NamedTuple):
    """Params of ``rnn``: ``W_xh`` (n_hidden, n_in), ``W_hh`` (n_hidden, n_hidden), ``b``
    (n_hidden,) — fbp's (n_out, n_in) orientation: ``z_t = W_xh x_t + W_hh h_{t−1} + b``."""

    W_xh: jax.Array
    W_hh: jax.Array
    b: jax.Array


def init_rnn(key, n_in: int, n_hidden: int, dtype=jnp.float32) -> RNN:
    """``RNN`` with ``W_xh`` normal of std 1/√n_in, an orthogonal ``W_hh`` (all singular
    values 1, so at initialisation the recursion neither shrinks nor grows δ except through
    tanh'), and ``b = 0``."""
    check_sizes(n_in=n_in, n_hidden=n_hidden, dtype=dtype)
    k_x, k_h = jax.random.split(key)
    W_xh = jax.random.normal(k_x, (n_hidden, n_in), dtype) / math.sqrt(n_in)
    W_hh = jax.nn.initializers.orthogonal()(k_h, (n_hidden, n_hidden), dtype)
    return RNN(W_xh, W_hh, jnp.zeros((n_hidden,), dtype))


# ── helpers shared with the LSTM ──

def check_sizes(dtype, **sizes) -> None:
    for name, n in sizes.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a positive int; got {n!r}.")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype; got {dtype}.")


def check_truncate(truncate):
    """``None`` (full BPTT) or a positive int chunk length."""
    if truncate is None:
        return None
    if isinstance(truncate, bool) or not isinstance(truncate, int) or truncate < 1:
        raise ValueError(f"truncate must be None (full BPTT) or a positive int, the chunk length "
                         f"of truncated BPTT; got {truncate!r}. Use e.g. truncate=16.")
    return truncate


def check_sequence(xs, n_in: int, op: str):
    """``xs`` (..., T, n_in) as a float array with T ≥ 1."""
    xs = float_array(xs, "xs")
    if xs.ndim < 2:
        raise ValueError(f"xs must have shape (..., T, n_in) = (..., T, {n_in}) for {op} (time "
                         f"second to last, features last); got shape {xs.shape}. One sequence "
                         f"of length T is xs.reshape(T, {n_in}).")
    if xs.shape[-1] != n_in:
        raise ValueError(f"xs must have n_in = {n_in} features last (the weights take {n_in}); "
                         f"got xs of shape {xs.shape}, {xs.shape[-1]} features.")
    if xs.shape[-2] == 0:
        raise ValueError(f"xs has T = 0 time steps (shape {xs.shape}); {op} needs T ≥ 1. "
                         "Skip the call for empty sequences.")
    return xs


def check_state(s, name: str, batch: tuple, n_hidden: int, dtype):
    """An initial state of shape (*batch, n_hidden) and the dtype of xs."""
    s = float_array(s, name)
    if s.shape != (*batch, n_hidden):
        raise ValueError(f"{name} must have shape (*batch, n_hidden) = {(*batch, n_hidden)}: "
                         f"the leading dims of xs ({batch}) and n_hidden = {n_hidden}; got "
                         f"{s.shape}. Broadcast it first, e.g. "
                         f"jnp.broadcast_to({name}, {(*batch, n_hidden)}).")
    if s.dtype != dtype:
        raise TypeError(f"{name} must have the dtype of xs, {dtype}; got {s.dtype}. "
                        f"Cast it, e.g. {name}.astype(xs.dtype).")
    return s


def time_major(xs):
    """(..., T, n) → (T, B, n) with B = ∏ batch (1 when there is none)."""
    T, n = xs.shape[-2:]
    return jnp.swapaxes(xs.reshape(-1, T, n), 0, 1)


def batch_major(ys, batch: tuple):
    """(T, B, n) → (*batch, T, n): the inverse of ``time_major``."""
    T, _, n = ys.shape
    return jnp.swapaxes(ys, 0, 1).reshape(*batch, T, n)


def carry_mask(T: int, truncate, dtype):
    """keep[t] = 0 where the gradient into the state before step t is cut (t = k, 2k, …),
    1 elsewhere: multiplies the δ carried from step t to step t − 1 (§ truncated BPTT)."""
    t = jnp.arange(T)
    if truncate is None:
        return jnp.ones((T,), dtype)
    return jnp.where((t % truncate == 0) & (t > 0), 0, 1).astype(dtype)


def sum_outer(delta, a):
    """Σ_{t,b} δ_{t,b} a_{t,b}ᵀ: (T, B, n_out) × (T, B, n_in) → (n_out, n_in), one matmul."""
    return jnp.einsum("tbo,tbi->oi", delta, a)


def previous(states, s0):
    """(s_{t−1})_t = (s0, s_0, …, s_{T−2}): the state each step reads."""
    return jnp.concatenate([s0[None], states[:-1]], axis=0)


def first_weight(params, cls, op: str):
    """The input weight (first field) of ``params``: a float matrix (n_out, n_in)."""
    if not (isinstance(params, tuple) and len(params) == len(cls._fields)):
        raise TypeError(f"params must be {cls.__name__}({', '.join(cls._fields)}) for {op}; "
                        f"got {type(params).__name__}. Build it with init_{op}(key, n_in, "
                        "n_hidden).")
    W = float_array(params[0], cls._fields[0])
    if W.ndim != 2:
        raise ValueError(f"{cls._fields[0]} must be a matrix (n_out, n_in); got shape "
                         f"{W.shape}.")
    return W


def check_params(params, cls, shapes: dict, op: str):
    """``params`` as ``cls`` of float arrays with the given shapes, one dtype."""
    arrays = {name: float_array(v, name) for name, v in zip(cls._fields, params)}
    for name, shape in shapes.items():
        if arrays[name].shape != shape:
            raise ValueError(f"{name} must have shape {shape} (from {cls._fields[0]} "
                             f"{arrays[cls._fields[0]].shape}); got {arrays[name].shape}.")
    same_dtype(**arrays)
    return cls(**arrays)


# ── rnn: h_t = tanh(W_xh x_t + W_hh h_{t−1} + b) ──

def _rnn_forward(params, xs, h0):
    W_xh, W_hh, b = params
    zx = xs @ W_xh.T + b[None, None]                     # (T, B, n): the input part, all t

    def step(h, zx_t):
        h = jnp.tanh(zx_t + h @ W_hh.T)
        return h, h

    _, hs = lax.scan(step, h0, zx)
    return hs


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _rnn(params, xs, h0, truncate):
    return _rnn_forward(params, xs, h0)


def _rnn_fwd(params, xs, h0, truncate):
    hs = _rnn_forward(params, xs, h0)
    return hs, (params, xs, h0, hs)                      # res: h_t only; tanh' = 1 − h_t²


def _rnn_bwd(truncate, res, g):
    params, xs, h0, hs = res
    W_xh, W_hh, _ = params
    keep = carry_mask(xs.shape[0], truncate, hs.dtype)

    def step(carry, inputs):                             # carry = W_hhᵀ δ_{t+1} (0 at t = T−1)
        g_t, h_t, keep_t = inputs
        delta = (g_t + carry) * (1 - h_t**2)            # δ_t = (ḡ_t + W_hhᵀ δ_{t+1}) ⊙ (1 − h_t²)
        return keep_t * (delta @ W_hh), delta            # keep_t = 0: cut into h_{t−1}

    h0_bar, delta = lax.scan(step, jnp.zeros_like(h0), (g, hs, keep), reverse=True)
    W_xh_bar = sum_outer(delta, xs)                      # Σ_t δ_t x_tᵀ
    W_hh_bar = sum_outer(delta, previous(hs, h0))        # Σ_t δ_t h_{t−1}ᵀ
    b_bar = jnp.sum(delta, axis=(0, 1))                  # Σ_t δ_t
    xs_bar = delta @ W_xh                                # x̄_t = W_xhᵀ δ_t
    # the carry out of step 0 is W_hhᵀ δ_0 = h̄0 (keep_0 = 1: chunk 0 is never cut)
    return RNN(W_xh_bar, W_hh_bar, b_bar), xs_bar, h0_bar


_rnn.defvjp(_rnn_fwd, _rnn_bwd)


def rnn(params: RNN, xs, h0=None, *, truncate: int | None = None):
    r"""A tanh RNN over a sequence, backward by hand: BPTT as a reverse ``lax.scan`` (§7.1).

    Forward, for t = 0 … T−1 (h₋₁ = h0, zeros when not given)::

        z_t = W_xh x_t + W_hh h_{t−1} + b,      h_t = tanh(z_t)

    VJP, with ḡ_t the cotangent of h_t.  h_t reaches the loss directly (ḡ_t) and through
    h_{t+1} (chain rule §3: ∂z_{t+1}/∂h_t = W_hh), so the δ recursion of §7.1 runs along time::

        δ_t  = (ḡ_t + W_hhᵀ δ_{t+1}) ⊙ (1 − h_t²),     δ_T = 0
        W̄_xh = Σ_t δ_t x_tᵀ    W̄_hh = Σ_t δ_t h_{t−1}ᵀ    b̄ = Σ_t δ_t
        x̄_t  = W_xhᵀ δ_t       h̄0 = W_hhᵀ δ_0

    Each step back multiplies by W_hhᵀ diag(1 − h_t²): a product of T such factors is the
    vanishing (or exploding) gradient of §7.2 along time (``experiments/bptt.py`` measures it).
    Dimension check (§9.2): δ_t (n_hidden,), x_t (n_in,) → W̄_xh (n_hidden, n_in). ✓

    Only the recursion is sequential: the input projection W_xh x_t + b of every step is one
    matmul before the scan, and W̄_xh, W̄_hh, b̄, x̄ are one matmul each after it.

    res (§11.2): the params, xs, h0 and the hidden states h_t — not the pre-activations,
    since tanh'(z_t) = 1 − h_t² is read off the output; h_{t−1} is the same array shifted.

    ``truncate=k`` (truncated BPTT): the sequence is cut into chunks [0, k), [k, 2k), … and
    the state carried into each later chunk is ``lax.stop_gradient(h_{ck−1})``; in the
    recursion the term W_hhᵀ δ_t is dropped at t = k, 2k, …  Gradients equal those of the plain
    scan with exactly that stop_gradient (tested); h0 gets its gradient from chunk 0 only.

    Forward mode: ``fbp.transposed(fbp.rnn)`` (the JVP is the transpose of this VJP; the
    reverse scan transposes into a forward one), tested against ``jax.jvp`` of a plain scan.

    Args:
      params: ``RNN(W_xh (n_hidden, n_in), W_hh (n_hidden, n_hidden), b (n_hidden,))``.
      xs: inputs (..., T, n_in): any leading batch dims (none for one sequence), T ≥ 1.
      h0: initial state (..., n_hidden) with the batch dims of xs, or None for zeros.
      truncate: None for full BPTT, or the chunk length k ≥ 1 of truncated BPTT.
    Returns:
      The hidden states (..., T, n_hidden); the last one, ``hs[..., -1, :]``, is h_{T−1}.
    """
    n_hidden, n_in = first_weight(params, RNN, "rnn").shape
    params = check_params(params, RNN, {"W_hh": (n_hidden, n_hidden), "b": (n_hidden,)}, "rnn")
    xs = check_sequence(xs, n_in, "rnn")
    same_dtype(xs=xs, W_xh=params.W_xh)
    truncate = check_truncate(truncate)
    batch = xs.shape[:-2]
    if h0 is None:
        h0 = jnp.zeros((*batch, n_hidden), xs.dtype)
    h0 = check_state(h0, "h0", batch, n_hidden, xs.dtype)
    hs = _rnn(params, time_major(xs), h0.reshape(-1, n_hidden), truncate)
    return batch_major(hs, batch)
