r"""Multilayer perceptrons: the composition of fbp's layers, and the textbook δ recursion.

``mlp`` composes ``dense`` and an activation, so ``jax.grad`` of a loss of it runs the
hand-written rules of every op.  ``backprop`` computes the same gradients a second,
independent way: the tutorial's §7.1 recursion written out layer by layer, no autodiff.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fbp._checks import float_array
from fbp.activations import ACTIVATIONS, DERIVATIVES
from fbp.linear import Dense, dense, init_dense
from fbp.losses import DELTAS, LOSSES


def _resolve(value, name: str, table: dict):
    if isinstance(value, str):
        if value not in table:
            raise ValueError(f"unknown {name} {value!r}; known: {', '.join(sorted(table))}.")
        return table[value]
    if callable(value):
        return value
    raise TypeError(f"{name} must be a name ({', '.join(sorted(table))}) or a function; "
                    f"got {type(value).__name__}.")


def resolve_activation(activation):
    """An fbp activation given by name (``"relu"``) or as the function itself."""
    return _resolve(activation, "activation", ACTIVATIONS)


def resolve_loss(loss):
    """An fbp loss given by name (``"mse"``) or as the function itself."""
    return _resolve(loss, "loss", LOSSES)


def init_mlp(key, sizes, scheme: str = "he", dtype=jnp.float32) -> list[Dense]:
    r"""Parameters of an MLP with layer widths ``sizes = [n_0, n_1, …, n_L]``.

    Returns a list of L ``Dense(W, b)`` with ``W_l: (n_l, n_{l−1})``, drawn by
    ``init_dense`` (``scheme`` ``"he"`` or ``"xavier"``), biases zero.
    """
    sizes = list(sizes) if isinstance(sizes, (list, tuple)) else sizes
    if not isinstance(sizes, list) or len(sizes) < 2:
        raise ValueError(
            f"sizes must list at least two layer widths [n_in, ..., n_out]; got {sizes!r}."
        )
    for i, n in enumerate(sizes):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"sizes[{i}] must be a positive int; got {n!r}.")
    keys = jax.random.split(key, len(sizes) - 1)
    return [init_dense(k, n_in, n_out, scheme, dtype)
            for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:])]


def _check_params(params) -> None:
    if not isinstance(params, (list, tuple)) or not params or not all(
        isinstance(p, tuple) and len(p) == 2 for p in params
    ):
        raise TypeError(
            "params must be a non-empty list of Dense(W, b), as init_mlp returns; "
            f"got {type(params).__name__}."
        )


def _skips(params, residual: bool) -> list[bool]:
    """Which hidden layers carry an identity skip (only where the width is unchanged)."""
    return [residual and W.shape[0] == W.shape[1] for W, _ in params[:-1]]


def mlp(params, x, activation="sigmoid", *, residual: bool = False):
    r"""Forward pass: hidden layers a_l = σ(W_l a_{l−1} + b_l), last layer linear.

    With ``residual=True`` every hidden layer whose input and output widths match becomes
    a_l = a_{l−1} + σ(W_l a_{l−1} + b_l) (a ResNet-style identity skip).

    Args:
      params: list of ``Dense`` from ``init_mlp``.
      x: floating array ``(..., n_0)``.
      activation: a name (``"sigmoid"``, ``"tanh"``, ``"relu"``, ``"leaky_relu"``,
        ``"gelu"``) or any activation function.
    Returns:
      the logits, ``(..., n_L)``.
    """
    _check_params(params)
    act = resolve_activation(activation)
    a = x
    for (W, b), skip in zip(params[:-1], _skips(params, residual)):
        h = act(dense(Dense(W, b), a))
        a = a + h if skip else h
    return dense(params[-1], a)


def mlp_loss(params, x, y, activation="sigmoid", loss="bce_with_logits", *,
             residual: bool = False):
    """``loss(mlp(params, x, activation), y)``: a scalar whose ``jax.grad`` runs fbp's rules."""
    return resolve_loss(loss)(mlp(params, x, activation, residual=residual), y)


class Backprop(NamedTuple):
    """What ``backprop`` returns: the loss, gradients shaped like params, and each δ_l."""

    loss: jax.Array
    grads: list
    deltas: list


def backprop(params, x, y, activation="sigmoid", loss="bce_with_logits", *,
             residual: bool = False) -> Backprop:
    r"""Loss and gradients by the tutorial's δ recursion (§7.1), written out, no autodiff.

    Forward (cached, tutorial §11.2):  z_l = a_{l−1} W_lᵀ + b_l,  a_l = σ(z_l)
    (or a_{l−1} + σ(z_l) on a residual layer), a_0 = x, logits z_L.

    Backward:
      δ_L  = ∂L/∂z_L  from the fused loss: (σ(z_L) − y)/N, (softmax(z_L) − onehot)/m,
             or 2(z_L − y)/N — the output delta ŷ − y.
      W̄_l = δ_lᵀ a_{l−1},   b̄_l = Σ_batch δ_l           (∂L/∂W = δ aᵀ per example)
      ā_{l−1} = δ_l W_l  (+ ā_l when layer l has a skip: the identity passes it on unchanged)
      δ_{l−1} = ā_{l−1} ⊙ σ'(z_{l−1})                    (the hidden delta Wᵀδ ⊙ σ'(z))

    Covers: plain and residual MLPs, any depth, every fbp activation by name or function
    (leaky_relu with its default α, gelu in its exact form) and the losses
    ``bce_with_logits``, ``softmax_cross_entropy`` and ``mse``.  Normalisation layers are
    not covered here; differentiate ``mlp`` with ``jax.grad`` for those.

    Args:
      params: list of ``Dense`` from ``init_mlp``.
      x: floating array ``(..., n_0)``.
      y: targets as the loss takes them.
    Returns:
      ``Backprop(loss, grads, deltas)``: grads is a list of ``Dense(W̄, b̄)`` like params,
      deltas[l] = ∂L/∂z_{l+1} with shape ``(..., n_{l+1})``.
    """
    _check_params(params)
    act = resolve_activation(activation)
    loss_fn = resolve_loss(loss)
    if act not in DERIVATIVES:
        raise ValueError(f"backprop knows σ' for {', '.join(ACTIVATIONS)}; got {activation!r}. "
                         "For another activation use jax.grad(fbp.mlp_loss).")
    if loss_fn not in DELTAS:
        raise ValueError(f"backprop starts from the losses {', '.join(LOSSES)}; got {loss!r}.")
    sigma_prime = DERIVATIVES[act]
    x = float_array(x, "x", min_rank=1)

    # forward, caching z, h and a for every layer (tutorial §11.2)
    skips = _skips(params, residual)
    zs, hs, acts = [], [], [x]
    for (W, b), skip in zip(params[:-1], skips):
        z = dense(Dense(W, b), acts[-1])
        h = act(z)
        zs.append(z)
        hs.append(h)
        acts.append(acts[-1] + h if skip else h)
    logits = dense(params[-1], acts[-1])
    value = loss_fn(logits, y)

    # backward: the δ recursion
    y = jnp.asarray(y)
    if loss_fn is not LOSSES["softmax_cross_entropy"] and not jnp.issubdtype(y.dtype, jnp.floating):
        y = y.astype(logits.dtype)
    delta = DELTAS[loss_fn](logits, y)
    n_layers = len(params)
    grads, deltas = [None] * n_layers, [None] * n_layers
    a_bar = None                      # ∂L/∂a_l, the gradient reaching layer l's output
    for l in range(n_layers - 1, -1, -1):
        W, _ = params[l]
        if l < n_layers - 1:
            delta = a_bar * sigma_prime(zs[l], hs[l])
        deltas[l] = delta
        d2 = delta.reshape(-1, delta.shape[-1])
        a_prev = acts[l].reshape(-1, acts[l].shape[-1])
        grads[l] = Dense(d2.T @ a_prev, jnp.sum(d2, axis=0))
        if l > 0:
            through_W = delta @ W
            # a skip a_l = a_{l−1} + h_l hands ā_l to a_{l−1} unchanged
            a_bar = through_W + a_bar if (l < n_layers - 1 and skips[l]) else through_W
    return Backprop(value, grads, deltas)
