"""Planted bugs: hand-derived VJP rules with the mistakes people make, and what check_vjp says.

Each rule is a ``jax.custom_vjp`` whose forward is right and whose backward carries one
deliberate mistake.  The checker must fail it, name exactly the arguments whose cotangent is
wrong, and, where the mistake has a recognisable shape, say which.  Every op also appears
with its correct rule, which must pass.  The hints are found by comparing arrays, with no
knowledge of these ops (see fbp/check/diagnose.py).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fbp
from fbp.ops.activations import sigmoid_grad, softmax_vjp, tanh_grad

M, N_IN, N_OUT = 4, 3, 5
rng = np.random.default_rng(0)
X = jnp.asarray(rng.standard_normal((M, N_IN)))
Z = jnp.asarray(rng.standard_normal((M, N_OUT)))
Z_OFF_KINK = jnp.asarray(rng.choice([-1.0, 1.0], (M, N_OUT)) * rng.uniform(0.5, 2, (M, N_OUT)))
P = fbp.Dense(jnp.asarray(rng.standard_normal((N_OUT, N_IN))),
              jnp.asarray(rng.standard_normal(N_OUT)))
P_SQ = fbp.Dense(jnp.asarray(rng.standard_normal((N_IN, N_IN))),
                 jnp.asarray(rng.standard_normal(N_IN)))
LOGITS = jnp.asarray(rng.standard_normal(6))
Y01 = jnp.asarray(rng.uniform(0, 1, 6))
LABELS = jnp.asarray(rng.integers(0, N_OUT, M))
Y_HAT, Y = jnp.asarray(rng.standard_normal((M, 2))), jnp.asarray(rng.standard_normal((M, 2)))


def rule(fwd_value, bwd, nondiff_argnums=()):
    """A custom_vjp whose forward saves its inputs and output: res = (args, out)."""
    f = jax.custom_vjp(fwd_value, nondiff_argnums=nondiff_argnums)

    def fwd(*args):
        out = fwd_value(*args)
        return out, (tuple(a for i, a in enumerate(args) if i not in nondiff_argnums), out)

    f.defvjp(fwd, bwd)
    return f


# ── the forward functions ──

def dense_fn(params, x):
    z = x @ params.W.T
    return z + jnp.broadcast_to(params.b, z.shape)


def sigmoid_fn(z):
    return jax.nn.sigmoid(z)


def tanh_fn(z):
    return jnp.tanh(z)


def softmax_fn(z):
    return jax.nn.softmax(z, axis=-1)


def leaky_fn(z, alpha):
    return jnp.where(z > 0, z, alpha * z)


def relu_fn(z):
    return jnp.maximum(z, 0)


def bce_fn(z, y):
    return jnp.mean(jnp.maximum(z, 0) + jnp.log1p(jnp.exp(-jnp.abs(z))) - y * z)


def mse_fn(y_hat, y):
    return jnp.mean((y_hat - y) ** 2)


def sce_fn(z, labels):
    logp = jax.nn.log_softmax(z, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1))


def scaled_standardise_fn(x, gamma):
    return standardise_fn(x) * jnp.broadcast_to(gamma, x.shape)


def standardise_fn(x):
    mu = jnp.mean(x, axis=0, keepdims=True)
    return (x - mu) / jnp.sqrt(jnp.mean((x - mu) ** 2, axis=0, keepdims=True) + 1e-5)


# ── correct rules ──

def rows(a):
    """All leading axes as one batch axis: (..., n) → (m, n)."""
    return a.reshape(-1, a.shape[-1])


def dense_bwd(res, g):
    (params, x), _ = res
    return fbp.Dense(rows(g).T @ rows(x), jnp.sum(rows(g), axis=0)), g @ params.W


def sigmoid_bwd(res, g):
    return (g * sigmoid_grad(res[1]),)


def tanh_bwd(res, g):
    return (g * tanh_grad(res[1]),)


def softmax_bwd(res, g):
    return (softmax_vjp(res[1], g),)


def leaky_bwd(alpha, res, g):
    (z,), _ = res
    return (jnp.where(z > 0, g, alpha * g),)


def relu_bwd(res, g):
    (z,), _ = res
    return (jnp.where(z > 0, g, 0.0),)


def bce_bwd(res, g):
    (z, y), _ = res
    return g * (jax.nn.sigmoid(z) - y) / z.size, -g * z / z.size


def mse_bwd(res, g):
    (y_hat, y), _ = res
    y_hat_bar = g * 2 * (y_hat - y) / y_hat.size
    return y_hat_bar, -y_hat_bar


def sce_bwd(res, g):
    (z, labels), _ = res
    onehot = jax.nn.one_hot(labels, z.shape[-1], dtype=z.dtype)
    return g * (jax.nn.softmax(z, axis=-1) - onehot) / z.shape[0], None


def standardise_bwd(res, g):
    (x,), y = res
    sigma = jnp.sqrt(jnp.var(x, axis=0, keepdims=True) + 1e-5)
    mean = partial(jnp.mean, axis=0, keepdims=True)
    return ((g - mean(g) - y * mean(g * y)) / sigma,)


def scaled_standardise_bwd(res, g, with_gamma=True):
    (x, gamma), y = res
    x_hat = standardise_fn(x)
    g_hat = g * jnp.broadcast_to(gamma, g.shape) if with_gamma else g
    x_bar = standardise_bwd(((x,), x_hat), g_hat)[0]
    return x_bar, jnp.sum(g * x_hat, axis=0)


GAMMA = jnp.asarray(rng.uniform(0.5, 2.0, N_IN))
X6 = jnp.asarray(rng.standard_normal((6, N_IN)))

CORRECT = [
    ("dense", rule(dense_fn, dense_bwd), (P, X)),
    ("dense (square W)", rule(dense_fn, dense_bwd), (P_SQ, X)),
    ("sigmoid", rule(sigmoid_fn, sigmoid_bwd), (Z,)),
    ("tanh", rule(tanh_fn, tanh_bwd), (Z,)),
    ("softmax", rule(softmax_fn, softmax_bwd), (Z,)),
    ("leaky_relu", rule(leaky_fn, leaky_bwd, (1,)), (Z_OFF_KINK, 0.2)),
    ("relu", rule(relu_fn, relu_bwd), (Z_OFF_KINK,)),
    ("bce_with_logits", rule(bce_fn, bce_bwd), (LOGITS, Y01)),
    ("mse", rule(mse_fn, mse_bwd), (Y_HAT, Y)),
    ("softmax_cross_entropy", rule(sce_fn, sce_bwd), (Z, LABELS)),
    ("standardise", rule(standardise_fn, standardise_bwd), (X,)),
    ("batch norm (γ)", rule(scaled_standardise_fn, scaled_standardise_bwd), (X6, GAMMA),
     {"batch_argnums": ()}),        # batch statistics: no per-example version
]


# ── planted bugs: (name, rule, args, arguments it gets wrong, hint or None) ──

def _bug(name, fwd_value, bwd, args, wrong, hint=None, nondiff=(), **kwargs):
    return pytest.param(rule(fwd_value, bwd, nondiff), args, wrong, hint, kwargs, id=name)


def _dense(W_bar=None, b_bar=None, x_bar=None):
    """dense_bwd with one of its three lines replaced."""
    def bwd(res, g):
        (params, x), _ = res
        g2, x2 = rows(g), rows(x)
        return (fbp.Dense(W_bar(g2, x2) if W_bar else g2.T @ x2,
                          b_bar(g2) if b_bar else jnp.sum(g2, axis=0)),
                x_bar(g, params.W) if x_bar else g @ params.W)
    return bwd


def _skip_last_row(g, W):
    """A per-example loop that stops one row short: range(m − 1)."""
    x_bar = g @ W
    return x_bar.at[..., -1, :].set(0) if x_bar.ndim > 1 else x_bar


BUGS = [
    _bug("W_bar transposed (x^T g)", dense_fn, _dense(W_bar=lambda g, x: x.T @ g), (P, X),
         {"params.W"}, "looks transposed"),
    _bug("W_bar transposed, square W", dense_fn, _dense(W_bar=lambda g, x: x.T @ g), (P_SQ, X),
         {"params.W"}, "looks transposed"),
    _bug("bias grad not summed over the batch", dense_fn, _dense(b_bar=lambda g: g), (P, X),
         {"params.b"}, "not summed over the batch"),
    _bug("bias grad averaged, not summed", dense_fn,
         _dense(b_bar=lambda g: jnp.mean(g, axis=0)), (P, X), {"params.b"},
         "off by a constant factor 0.25"),
    _bug("per-example loop one row short", dense_fn, _dense(x_bar=_skip_last_row), (P, X),
         {"x"}, "differs only on one batch row: row 3"),
    _bug("missing 1/m in the loss", bce_fn,
         lambda res, g: (g * (jax.nn.sigmoid(res[0][0]) - res[0][1]), -g * res[0][0] / 6),
         (LOGITS, Y01), {"z"}, "missing 1/6"),
    _bug("sign error", tanh_fn, lambda res, g: (-g * tanh_grad(res[1]),), (Z,), {"z"},
         "sign flipped"),
    _bug("sigma'(z) evaluated at sigma(z)", sigmoid_fn,
         lambda res, g: (g * sigmoid_grad(jax.nn.sigmoid(res[1])),), (Z,), {"z"}),
    _bug("missing sigma' factor", sigmoid_fn, lambda res, g: (g,), (Z,), {"z"}),
    _bug("softmax VJP: diagonal of the Jacobian only", softmax_fn,
         lambda res, g: (g * res[1] * (1 - res[1]),), (Z,), {"z"},
         "zero at 80 of 400 elements"),        # the off-diagonal Jacobian entries
    _bug("wrong leaky slope (0.01 for alpha = 0.2)", leaky_fn,
         lambda alpha, res, g: (jnp.where(res[0][0] > 0, g, 0.01 * g),),
         (Z_OFF_KINK, 0.2), {"z"}, "there off by a constant factor 0.05", nondiff=(1,)),
    _bug("MSE off by 2", mse_fn,
         lambda res, g: (g * (res[0][0] - res[0][1]) / res[0][0].size,
                         -g * (res[0][0] - res[0][1]) / res[0][0].size),
         (Y_HAT, Y), {"y_hat", "y"}, "off by a constant factor 0.5"),
    _bug("cotangents for the wrong arguments", bce_fn,
         lambda res, g: tuple(reversed(bce_bwd(res, g))), (LOGITS, Y01), {"z", "y"},
         "equals the expected cotangent of y"),
    _bug("broadcasting slip: <g, s> summed over the batch axis", softmax_fn,
         lambda res, g: (res[1] * (g - jnp.sum(g * res[1], axis=0, keepdims=True)),), (Z,),
         {"z"}),
    _bug("standardisation backward drops the mean terms", standardise_fn,
         lambda res, g: (g / jnp.sqrt(jnp.var(res[0][0], axis=0, keepdims=True) + 1e-5),), (X,),
         {"x"}),
    _bug("batch-norm backward without the factor gamma", scaled_standardise_fn,
         partial(scaled_standardise_bwd, with_gamma=False), (X6, GAMMA), {"x"},
         "varies along axis 1 only", batch_argnums=()),
    _bug("loss rule that ignores the incoming cotangent (assumes g = 1)", bce_fn,
         lambda res, g: bce_bwd(res, 1.0), (LOGITS, Y01), {"z", "y"},
         "not linear in the incoming cotangent"),
    _bug("correct only for batch size 1: <g, s> over every element", softmax_fn,
         lambda res, g: (res[1] * (g - jnp.sum(g * res[1])),), (Z,), {"z"},
         "correct for each example alone (batch size 1)"),
    _bug("relu mask from the output (h >= 0 lets every gradient through)", relu_fn,
         lambda res, g: (jnp.where(res[1] >= 0, g, 0.0),), (Z_OFF_KINK,), {"z"}),
    _bug("cotangent for integer labels", sce_fn,
         lambda res, g: (sce_bwd(res, g)[0], jnp.zeros(res[0][1].shape)), (Z, LABELS),
         {"labels"}, "return None for it"),
    _bug("float32 cotangent for a float64 input", dense_fn,
         _dense(W_bar=lambda g, x: (g.T @ x).astype(jnp.float32)), (P, X), {"params.W"},
         "cotangent dtype float32"),
    _bug("first order right, not differentiable (stop_gradient in the rule)", sigmoid_fn,
         lambda res, g: (g * jax.lax.stop_gradient(sigmoid_grad(res[1])),), (Z,), {"z"},
         "zero where finite differences are not"),
]


def failing_args(report) -> set:
    return {r.arg for r in report.failures}


@pytest.mark.parametrize("f, args, wrong, hint, kwargs", BUGS)
def test_planted_bug_is_caught_named_and_explained(f, args, wrong, hint, kwargs):
    report = fbp.check_vjp(f, *args, **kwargs)
    assert not report.ok, str(report)
    assert failing_args(report) == wrong, str(report)
    if hint is not None:
        hints = [h for r in report.failures for h in r.hints]
        assert any(hint in h for h in hints), str(report)


@pytest.mark.parametrize("name, f, args, kwargs", [(*c, {})[:4] for c in CORRECT],
                         ids=[c[0] for c in CORRECT])
def test_correct_rule_is_not_flagged(name, f, args, kwargs):
    report = fbp.check_vjp(f, *args, **kwargs)
    assert report.ok, str(report)
