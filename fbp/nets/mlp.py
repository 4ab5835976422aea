r"""Multilayer perceptrons: the composition of fbp's layers, and the textbook δ recursion.

``mlp`` composes ``dense`` and an activation, so ``jax.grad`` of a loss of it runs the
hand-written rules of every op.  ``backprop`` computes the same gradients a second,
independent way: the tutorial's §7.1 recursion written out layer by layer, no autodiff.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fbp._validate import float_array, positive_int, prng_key
from fbp.ops.activations import ACTIVATIONS, DERIVATIVES
from fbp.ops.linear import Dense, dense, init_dense, rows
from fbp.ops.losses import DELTAS, LOSSES
from fbp.ops.norms import (
    BatchNormParams,
    LayerNormParams,
    batch_norm,
    init_batch_norm,
    init_layer_norm,
    layer_norm,
)
from fbp.ops.norms import residual as residual_block


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


class NormDense(NamedTuple):
    """A hidden layer with normalisation: its ``Dense`` and its norm's params.

    ``norm`` is a ``BatchNormParams`` or a ``LayerNormParams``; the layer computes
    σ(norm(W a + b)) (normalisation before the activation).
    """

    dense: Dense
    norm: BatchNormParams | LayerNormParams


_NORMS = (None, "batch", "layer")


def init_mlp(key, sizes, scheme: str = "he", dtype=None, *, norm: str | None = None,
             residual: bool = False):
    r"""Parameters of an MLP with layer widths ``sizes = [n_0, n_1, …, n_L]``.

    The L ``Dense(W, b)`` have ``W_l: (n_l, n_{l−1})``, drawn by ``init_dense`` (``scheme``
    ``"he"`` or ``"xavier"``), biases zero; the same key gives the same weights whatever
    ``norm`` is, so networks that differ only in their normalisation can be compared.

    ``norm=None``:     returns the list of L ``Dense``.
    ``norm="layer"``:  returns a list: L − 1 hidden ``NormDense(Dense, LayerNormParams)``,
                       then the output ``Dense`` (γ = 1, β = 0).
    ``norm="batch"``:  returns ``(params, state)``: params as for "layer" with
                       ``BatchNormParams``, state a list of L − 1 ``BatchNormState``
                       (mean 0, var 1).  The state is kept apart from params so that an
                       optimiser never updates it; ``mlp`` returns the next one.
    The last layer is never normalised (it produces the logits).

    ``residual`` does not change the parameters (the skip has none); it is chosen when
    calling ``mlp(..., residual=True)``.  Passing it here checks that some hidden layer
    keeps its width (n_l = n_{l−1}), so that the skip connections exist at all.
    """
    key = prng_key(key)
    sizes = list(sizes) if isinstance(sizes, (list, tuple)) else sizes
    if not isinstance(sizes, list) or len(sizes) < 2:
        raise ValueError(
            f"sizes must list at least two layer widths [n_in, ..., n_out]; got {sizes!r}."
        )
    sizes = [positive_int(n, f"sizes[{i}]") for i, n in enumerate(sizes)]
    if norm not in _NORMS:
        raise ValueError(f"norm must be None, 'batch' or 'layer'; got {norm!r}.")
    if not isinstance(residual, bool):
        raise TypeError(f"residual must be True or False; got {residual!r}.")
    if residual and not any(a == b for a, b in zip(sizes[:-2], sizes[1:-1], strict=True)):
        raise ValueError(f"residual=True needs a hidden layer that keeps its width "
                         f"(sizes[l] == sizes[l-1] for some hidden l); sizes {sizes} has none, "
                         f"so there would be no skip connection.")
    keys = jax.random.split(key, len(sizes) - 1)
    layers = [init_dense(k, n_in, n_out, scheme, dtype)
              for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:], strict=True)]
    if norm is None:
        return layers
    if norm == "layer":
        hidden = [NormDense(d, init_layer_norm(n, dtype))
                  for d, n in zip(layers[:-1], sizes[1:-1], strict=True)]
        return hidden + [layers[-1]]
    pairs = [init_batch_norm(n, dtype) for n in sizes[1:-1]]
    params = [NormDense(d, p) for d, (p, _) in zip(layers[:-1], pairs, strict=True)] + [layers[-1]]
    return params, [s for _, s in pairs]


def _check_params(params) -> str | None:
    """Validate an MLP's params; return its normalisation: None, "batch" or "layer"."""
    def is_dense(p):
        return isinstance(p, tuple) and not isinstance(p, NormDense) and len(p) == 2

    if not isinstance(params, (list, tuple)) or not params:
        raise TypeError(
            "params must be a non-empty list of Dense(W, b) (or NormDense for the hidden "
            f"layers), as init_mlp returns; got {_describe(params)}."
        )
    for i, p in enumerate(params):
        if not (is_dense(p) or isinstance(p, NormDense)):
            got = (f"a tuple of length {len(p)}" if isinstance(p, tuple) else type(p).__name__)
            raise TypeError(
                f"params[{i}] must be a layer, Dense(W, b) (or a (W, b) pair, or NormDense for "
                f"a hidden layer), as init_mlp returns; got {got}."
                + (" Build it as fbp.Dense(W=..., b=...)." if isinstance(p, dict) else ""))
    if not is_dense(params[-1]):
        raise TypeError("the last layer of params must be a plain Dense(W, b) (the logits "
                        f"are not normalised); got {type(params[-1]).__name__}.")
    kinds = {_kind(p) for p in params[:-1]}
    if len(kinds) > 1 or "?" in kinds:
        raise TypeError("the hidden layers of params must all be Dense, all "
                        "NormDense(Dense, BatchNormParams) or all NormDense(Dense, "
                        "LayerNormParams), as init_mlp builds them; got a mixture.")
    return kinds.pop() if kinds else None


def _kind(p) -> str | None:
    if not isinstance(p, NormDense):
        return None
    if isinstance(p.norm, BatchNormParams):
        return "batch"
    return "layer" if isinstance(p.norm, LayerNormParams) else "?"


def _dense_of(p) -> Dense:
    return p.dense if isinstance(p, NormDense) else Dense(*p)


def _check_widths(params, x) -> None:
    """Each layer's input width is the width the layer before gives (x's for the first), so a
    mismatch is named by layer here instead of by dense's view of a hidden activation."""
    Ws = [np.shape(_dense_of(p).W) for p in params]
    for l, shape in enumerate(Ws):
        if len(shape) != 2:
            raise ValueError(f"params[{l}].W must have shape (n_out, n_in); got {shape}.")
    n_x = getattr(x, "shape", (None,))[-1] if getattr(x, "ndim", 0) else None
    if n_x is not None and Ws[0][1] != n_x:
        raise ValueError(f"x must have shape (..., {Ws[0][1]}): params[0].W has shape {Ws[0]}, "
                         f"so layer 0 expects inputs of width {Ws[0][1]}; got x of shape "
                         f"{x.shape}, which gives {n_x} features (features last).")
    for l in range(1, len(Ws)):
        if Ws[l][1] != Ws[l - 1][0]:
            raise ValueError(
                f"params[{l}].W has shape {Ws[l]}, so layer {l} expects inputs of width "
                f"{Ws[l][1]}; but params[{l - 1}].W has shape {Ws[l - 1]}, so layer {l - 1} gives "
                f"{Ws[l - 1][0]}. The widths must chain: params[{l}].W.shape[1] == "
                f"params[{l - 1}].W.shape[0].")


def _like(p, W_bar, b_bar):
    """(W̄, b̄) in the structure of the layer p: Dense for Dense, a plain pair for a pair."""
    if isinstance(p, Dense) or not isinstance(p, tuple):
        return Dense(W_bar, b_bar)
    return type(p)((W_bar, b_bar)) if type(p) is tuple else type(p)(W_bar, b_bar)


def _skips(params, residual: bool) -> list[bool]:
    """Which hidden layers carry an identity skip (only where the width is unchanged)."""
    if not isinstance(residual, bool):
        raise TypeError(f"residual must be True or False; got {residual!r}.")
    return [residual and W.shape[0] == W.shape[1] for W, _ in map(_dense_of, params[:-1])]


def _describe(state) -> str:
    if isinstance(state, (list, tuple)):
        return f"{type(state).__name__} of length {len(state)}"
    return type(state).__name__


# One hidden layer as a block f(params, a) -> h, so that residual() can wrap it.

def _plain_block(act, params, a):
    return act(dense(params, a))


def _layer_block(act, eps, params, a):
    d, ln = params
    return act(layer_norm(ln, dense(d, a), eps))


def _batch_block(act, options, params, a):
    (d, bn), state = params            # the state rides along with params; it gets no gradient
    z, new_state = batch_norm(bn, dense(d, a), state, **options)
    return act(z), new_state


def mlp(params, x, activation="sigmoid", *, residual: bool = False, state=None,
        training: bool = True, momentum: float = 0.9, eps: float = 1e-5,
        unbiased_var: bool = False):
    r"""Forward pass: hidden layers a_l = σ(norm(W_l a_{l−1} + b_l)), last layer linear.

    ``norm`` is whatever the params hold (see ``init_mlp``): nothing, ``layer_norm`` or
    ``batch_norm``, always before the activation.  With ``residual=True`` every hidden
    layer whose input and output widths match becomes a_l = a_{l−1} + σ(norm(…)), built
    with ``fbp.residual`` (a ResNet-style identity skip with its own hand-written rule).

    Batch normalisation needs state: pass ``state`` (the list ``init_mlp(norm="batch")``
    returned, or the one the previous call returned) and the call returns
    ``(logits, new_state)``.  ``training=True`` normalises with the batch statistics of x
    (so x needs at least 2 examples) and updates the running state; ``training=False``
    uses the running state and returns it unchanged.  Networks without batch norm return
    the logits alone and take no state.

    Args:
      params: from ``init_mlp``: a list of ``Dense``, or ``NormDense`` hidden layers and
        a ``Dense`` output layer.
      x: floating array ``(..., n_0)``.
      activation: a name (``"sigmoid"``, ``"tanh"``, ``"relu"``, ``"leaky_relu"``,
        ``"gelu"``) or any activation function.
      residual: add identity skips where widths match.
      state: list of ``BatchNormState``, one per hidden layer (batch norm only).
      training: batch statistics (True) or running statistics (False); batch norm only.
      momentum, unbiased_var: batch norm's (see ``fbp.batch_norm``: momentum weights the
        old running value, as in Flax; PyTorch's momentum p is 1 − p here, with
        ``unbiased_var=True``).
      eps: the ε added to the variance by every norm layer (batch or layer norm).
    Returns:
      the logits ``(..., n_L)``; with batch norm ``(logits, new_state)``.
    """
    kind = _check_params(params)
    _check_widths(params, x)
    act = resolve_activation(activation)
    skips = _skips(params, residual)
    if not isinstance(training, bool):
        raise TypeError(f"training must be True or False; got {training!r}.")
    if kind != "batch" and state is not None:
        raise ValueError("state is only for networks with batch norm (init_mlp(norm='batch')); "
                         "these params have none, so pass state=None.")
    if kind == "batch" and not (isinstance(state, (list, tuple))
                                and len(state) == len(params) - 1):
        raise ValueError(f"a batch-norm MLP needs state=[BatchNormState, ...], one per hidden "
                         f"layer ({len(params) - 1}), as init_mlp(norm='batch') returns it; "
                         f"got {_describe(state)}.")
    a, new_state = x, []
    for l, (p, skip) in enumerate(zip(params[:-1], skips, strict=True)):
        if kind == "batch":
            options = dict(training=training, momentum=momentum, eps=eps,
                           unbiased_var=unbiased_var)
            block, p, aux = partial(_batch_block, act, options), (p, state[l]), True
        elif kind == "layer":
            block, aux = partial(_layer_block, act, eps), False
        else:
            block, aux = partial(_plain_block, act), False
        out = residual_block(block, has_aux=aux)(p, a) if skip else block(p, a)
        if aux:
            a, s = out
            new_state.append(s)
        else:
            a = out
    logits = dense(_dense_of(params[-1]), a)
    return (logits, new_state) if kind == "batch" else logits


def mlp_loss(params, x, y, activation="sigmoid", loss="bce_with_logits", *,
             residual: bool = False, state=None, training: bool = True,
             momentum: float = 0.9, eps: float = 1e-5, unbiased_var: bool = False):
    """``loss(mlp(params, x, activation), y)``: a scalar whose ``jax.grad`` runs fbp's rules.

    With batch norm it returns ``(loss, new_state)``: differentiate it with
    ``jax.value_and_grad(mlp_loss, has_aux=True)``, or train it with
    ``fbp.fit(..., state=state)``, which threads the state through the loop.
    ``momentum``, ``eps`` and ``unbiased_var`` are passed to the norm layers (see ``mlp``).
    """
    loss_fn = resolve_loss(loss)
    out = mlp(params, x, activation, residual=residual, state=state, training=training,
              momentum=momentum, eps=eps, unbiased_var=unbiased_var)
    if state is not None:
        logits, new_state = out
        return loss_fn(logits, y), new_state
    return loss_fn(out, y)


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

    Covers: plain and residual MLPs (params a list of ``Dense``), any depth, every fbp
    activation by name or function (leaky_relu with its default α, gelu in its exact form)
    and the losses ``bce_with_logits``, ``softmax_cross_entropy`` and ``mse``.  Not covered:
    networks with batch or layer norm (``NormDense`` layers), which raise a ValueError;
    differentiate ``mlp_loss`` with ``jax.grad`` for those (their rules are hand-written in
    ``fbp.norms``).

    Args:
      params: list of ``Dense`` from ``init_mlp``.
      x: floating array ``(..., n_0)``.
      y: targets as the loss takes them.
    Returns:
      ``Backprop(loss, grads, deltas)``: grads in the structure of params (a list of
      ``Dense(W̄, b̄)`` for init_mlp's, plain ``(W̄, b̄)`` pairs for pairs, so optax sees them
      as it sees params),
      deltas[l] = ∂L/∂z_{l+1} with shape ``(..., n_{l+1})``.
    """
    kind = _check_params(params)
    if kind is not None:
        raise ValueError(f"backprop covers plain and residual MLPs; these params hold {kind} "
                         f"norm layers. Use jax.grad(fbp.mlp_loss) for them instead.")
    act = resolve_activation(activation)
    loss_fn = resolve_loss(loss)
    if act not in DERIVATIVES:
        raise ValueError(f"backprop knows σ' for {', '.join(ACTIVATIONS)}; got {activation!r}. "
                         "For another activation use jax.grad(fbp.mlp_loss).")
    if loss_fn not in DELTAS:
        raise ValueError(f"backprop starts from the losses {', '.join(LOSSES)}; got {loss!r}.")
    sigma_prime = DERIVATIVES[act]
    x = float_array(x, "x", min_rank=1)
    _check_widths(params, x)

    # forward, caching z, h and a for every layer (tutorial §11.2)
    skips = _skips(params, residual)
    zs, hs, acts = [], [], [x]
    for (W, b), skip in zip(params[:-1], skips, strict=True):
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
        d2, a_prev = rows(delta), rows(acts[l])
        grads[l] = _like(params[l], d2.T @ a_prev, jnp.sum(d2, axis=0))
        if l > 0:
            through_W = delta @ W
            # a skip a_l = a_{l−1} + h_l hands ā_l to a_{l−1} unchanged
            a_bar = through_W + a_bar if (l < n_layers - 1 and skips[l]) else through_W
    return Backprop(value, grads if isinstance(params, list) else type(params)(grads), deltas)
