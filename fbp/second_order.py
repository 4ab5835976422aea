r"""Hessian-vector products by Pearlmutter's R-operator, written out by hand (tutorial §13).

For any quantity q(θ) of the network, R{q} = d/dε q(θ + ε v) at ε = 0, the directional
derivative along v.  R is linear and obeys the product and chain rules, so applying it to
every line of ``fbp.backprop`` (which computes ∇L(θ)) gives R{∇L} = H v, the Hessian of the
loss times v, at the cost of about two more backprops and without ever forming H.

The only new derivative is σ'' (the R of σ'(z) is σ''(z) R{z}); it is written here for the
smooth activations, next to nothing else: σ' comes from ``fbp.activations``, the loss deltas'
Jacobians from ``softmax_vjp`` and ``sigmoid_grad``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from fbp._validate import float_array
from fbp.nets.mlp import (
    _check_params,
    _check_widths,
    _like,
    _skips,
    resolve_activation,
    resolve_loss,
)
from fbp.ops.activations import (
    _INV_SQRT_2PI,
    ACTIVATIONS,
    DERIVATIVES,
    gelu,
    leaky_relu,
    relu,
    sigmoid,
    sigmoid_grad,
    softmax_vjp,
    tanh,
)
from fbp.ops.linear import Dense, dense, rows
from fbp.ops.losses import (
    DELTAS,
    LOSSES,
    _batch_count,
    _count,
    _per,
    bce_with_logits,
    mse,
    softmax_cross_entropy,
)

__all__ = ["hessian", "hvp"]



# ── σ'' for each activation, from what the forward keeps (z and h = σ(z)) ──

def sigmoid_grad2(h):
    """σ''(z) = σ'(z)(1 − 2σ(z)) = h (1 − h)(1 − 2h)."""
    return sigmoid_grad(h) * (1 - 2 * h)


def tanh_grad2(h):
    """tanh''(z) = −2 tanh(z) tanh'(z) = −2h (1 − h²)."""
    return -2 * h * (1 - h * h)


def gelu_grad2(z):
    """GELU''(z) = d/dz [Φ(z) + z φ(z)] = φ + φ − z² φ = (2 − z²) φ(z)   (φ' = −z φ)."""
    return (2 - z * z) * _INV_SQRT_2PI * jnp.exp(-0.5 * z * z)


def _zero(z):
    """ReLU'' = LeakyReLU'' = 0 everywhere except the kink, where it does not exist."""
    return jnp.zeros_like(z)


SECOND_DERIVATIVES = {
    sigmoid: lambda z, h: sigmoid_grad2(h),
    tanh: lambda z, h: tanh_grad2(h),
    gelu: lambda z, h: gelu_grad2(z),
    relu: lambda z, h: _zero(z),
    leaky_relu: lambda z, h: _zero(z),
}


# ── R{δ_L}: the loss Hessian with respect to the logits, applied to R{z_L} ──

def _r_output_delta(loss_fn, z, y, r_z):
    r"""R{δ_L} = (∂²L/∂z²) R{z} for δ_L from ``fbp.losses``' ``*_delta`` helpers."""
    if loss_fn is bce_with_logits:                     # δ = (σ(z) − y)/N
        return _per(sigmoid_grad(jax.nn.sigmoid(z)) * r_z, _count(z))
    if loss_fn is mse:                                 # δ = 2(z − y)/N
        return _per(2 * r_z, _count(z))
    # softmax CE: δ = (s Σ_k t_k − t)/m, so R{δ} = Σ_k t_k (diag(s) − s sᵀ) R{z} / m
    r_delta = _per(softmax_vjp(jax.nn.softmax(z, axis=-1), r_z), _batch_count(z))
    if jnp.issubdtype(y.dtype, jnp.integer):
        return r_delta
    return r_delta * jnp.sum(y, axis=-1, keepdims=True)


def _check_plain(params) -> None:
    """params of a plain MLP: a list of Dense(W, b), no normalisation layers."""
    if _check_params(params) is not None:
        raise ValueError("params must be a list of plain Dense(W, b): hvp covers MLPs without "
                         "normalisation layers (build them with init_mlp(..., norm=None)).")


def _check_direction(params, v):
    """v must be a pytree of exactly params' structure, shapes and dtypes."""
    p_leaves, p_tree = jax.tree.flatten(params)
    try:
        v_leaves = p_tree.flatten_up_to(v)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"v must have the pytree structure of params ({p_tree}); got "
            f"{jax.tree.structure(v)}. Build it with e.g. jax.tree.map(jnp.ones_like, params). "
            f"({err})"
        ) from None
    out = []
    for i, (p, w) in enumerate(zip(p_leaves, v_leaves, strict=True)):
        w = float_array(w, f"v leaf {i}")
        if w.shape != p.shape:
            raise ValueError(f"v leaf {i} must have the shape of the matching params leaf "
                             f"{p.shape}; got {w.shape}.")
        if w.dtype != p.dtype:
            raise TypeError(f"v leaf {i} must have the dtype of params ({p.dtype}); "
                            f"got {w.dtype}. Cast v, e.g. v.astype({p.dtype}).")
        out.append(w)
    return jax.tree.unflatten(p_tree, out)


def hvp(params, x, y, v, activation="sigmoid", loss="bce_with_logits", *,
        residual: bool = False) -> list[Dense]:
    r"""H v, the Hessian of the MLP loss times v, by the R-operator (no autodiff inside).

    R{q} = ∂q/∂θ · v.  With V_l, c_l the parts of v for W_l, b_l:

    Forward R-pass (alongside the forward of ``fbp.backprop``), a_0 = x, R{a_0} = 0:
      R{z_l} = R{a_{l−1}} W_lᵀ + a_{l−1} V_lᵀ + c_l          (product rule on z = a Wᵀ + b)
      R{a_l} = σ'(z_l) ⊙ R{z_l}            (+ R{a_{l−1}} on a residual layer)

    Backward R-pass (R of each line of the δ recursion):
      R{δ_L}   = ∂²L/∂z_L² R{z_L}:  bce_with_logits σ'(z_L) ⊙ R{z_L} / N,
                 softmax CE (diag(s) − s sᵀ) R{z_L} / m (× Σ_k t_k for soft targets),
                 mse 2 R{z_L} / N
      R{W̄_l}  = R{δ_l}ᵀ a_{l−1} + δ_lᵀ R{a_{l−1}}             (W̄ = δᵀ A)
      R{b̄_l}  = Σ_batch R{δ_l}                                (b̄ = Σ δ)
      R{ā_{l−1}} = R{δ_l} W_l + δ_l V_l   (+ R{ā_l} on a residual layer)   (ā = δ W)
      R{δ_{l−1}} = R{ā_{l−1}} ⊙ σ'(z_{l−1}) + ā_{l−1} ⊙ σ''(z_{l−1}) ⊙ R{z_{l−1}}

    The returned (R{W̄_l}, R{b̄_l}) are the blocks of H v.  Cost: one forward, one backward
    and their two R-twins, O(params · batch) like a gradient; H (P × P) is never formed.

    Covers what ``fbp.backprop`` covers: plain and residual MLPs, any depth, the activations
    sigmoid, tanh, gelu (exact) and relu / leaky_relu (σ'' = 0 away from the kink, so H v is
    the Gauss-Newton-like part plus the output-layer term), and the losses bce_with_logits,
    softmax_cross_entropy (integer labels or soft targets) and mse.

    Args:
      params: list of ``Dense`` from ``init_mlp``.
      x: floating array ``(..., n_0)``.
      y: targets as the loss takes them.
      v: the direction, a pytree like params (list of ``Dense(V_l, c_l)``), same dtypes.
      activation, loss, residual: as in ``fbp.backprop``.
    Returns:
      H v in the structure of params (a list of ``Dense`` for init_mlp's).
    """
    _check_plain(params)
    act = resolve_activation(activation)
    loss_fn = resolve_loss(loss)
    if act not in SECOND_DERIVATIVES:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)} (hvp knows their "
                         f"σ''); got {activation!r}.")
    if loss_fn not in DELTAS:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)} for hvp; got {loss!r}.")
    v = _check_direction(params, v)
    sigma_prime, sigma_second = DERIVATIVES[act], SECOND_DERIVATIVES[act]
    x = float_array(x, "x", min_rank=1)
    _check_widths(params, x)

    # forward and forward R-pass
    skips = _skips(params, residual)
    zs, hs, r_zs, acts, r_acts = [], [], [], [x], [jnp.zeros_like(x)]
    for (W, b), (V, c), skip in zip(params[:-1], v[:-1], skips, strict=True):
        z = dense(Dense(W, b), acts[-1])
        r_z = r_acts[-1] @ W.T + dense(Dense(V, c), acts[-1])
        h = act(z)
        r_h = sigma_prime(z, h) * r_z
        zs.append(z)
        hs.append(h)
        r_zs.append(r_z)
        acts.append(acts[-1] + h if skip else h)
        r_acts.append(r_acts[-1] + r_h if skip else r_h)
    (W, b), (V, c) = params[-1], v[-1]
    logits = dense(Dense(W, b), acts[-1])
    r_logits = r_acts[-1] @ W.T + dense(Dense(V, c), acts[-1])
    loss_fn(logits, y)  # validates y exactly as the loss does

    # backward and backward R-pass: R of each line of the δ recursion
    y = jnp.asarray(y)
    if loss_fn is not softmax_cross_entropy and not jnp.issubdtype(y.dtype, jnp.floating):
        y = y.astype(logits.dtype)
    delta = DELTAS[loss_fn](logits, y)
    r_delta = _r_output_delta(loss_fn, logits, y, r_logits)
    n_layers = len(params)
    out = [None] * n_layers
    a_bar = r_a_bar = None
    for l in range(n_layers - 1, -1, -1):
        W, _ = params[l]
        V, _ = v[l]
        if l < n_layers - 1:
            s1 = sigma_prime(zs[l], hs[l])
            r_delta = r_a_bar * s1 + a_bar * sigma_second(zs[l], hs[l]) * r_zs[l]
            delta = a_bar * s1
        d2, rd2, a_prev, r_a_prev = rows(delta), rows(r_delta), rows(acts[l]), rows(r_acts[l])
        out[l] = _like(params[l], rd2.T @ a_prev + d2.T @ r_a_prev, jnp.sum(rd2, axis=0))
        if l > 0:
            through_W, r_through_W = delta @ W, r_delta @ W + delta @ V
            if l < n_layers - 1 and skips[l]:
                a_bar, r_a_bar = through_W + a_bar, r_through_W + r_a_bar
            else:
                a_bar, r_a_bar = through_W, r_through_W
    return out if isinstance(params, list) else type(params)(out)


def hessian(params, x, y, activation="sigmoid", loss="bce_with_logits", *,
            residual: bool = False):
    r"""The full Hessian of the MLP loss, column by column: H e_j = ``hvp(…, e_j)``.

    P Hessian-vector products (``vmap`` over the P unit vectors of the flattened params), so
    O(P² · batch) work and P² memory: for small networks (the XOR net has P = 17).

    Returns:
      H, a ``(P, P)`` array in the order of ``jax.flatten_util.ravel_pytree(params)``.
    """
    _check_plain(params)
    flat, unravel = ravel_pytree(params)

    def column(e):
        hv = hvp(params, x, y, unravel(e), activation, loss, residual=residual)
        return ravel_pytree(hv)[0]

    return jax.vmap(column, out_axes=1)(jnp.eye(flat.size, dtype=flat.dtype))
