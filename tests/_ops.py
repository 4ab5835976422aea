"""Every fbp op beside its independent reference (jax.nn / optax.losses / plain jnp)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

import fbp
from tests._proof import Op

F64 = jnp.float64


def _away_from_zero(key, shape, dtype=F64):
    """Normal values pushed at least 0.1 from 0: finite differences never straddle a kink."""
    z = jax.random.normal(key, shape, dtype)
    return z + 0.1 * jnp.sign(z)


def _z(key, batch, n, dtype=F64):
    return (_away_from_zero(key, (*batch, n), dtype),)


def _dense_args(key, batch, n, dtype=F64):
    k1, k2, k3 = jax.random.split(key, 3)
    n_out = max(1, (n * 7) % 13)
    params = fbp.Dense(jax.random.normal(k1, (n_out, n), dtype),
                       jax.random.normal(k2, (n_out,), dtype))
    return params, jax.random.normal(k3, (*batch, n), dtype)


def _logits_and_binary(key, batch, n, dtype=F64):
    k1, k2 = jax.random.split(key)
    return (3 * jax.random.normal(k1, (*batch, n), dtype),
            jax.random.uniform(k2, (*batch, n), dtype))


def _probs_and_binary(key, batch, n, dtype=F64):
    k1, k2 = jax.random.split(key)
    return (jax.random.uniform(k1, (*batch, n), dtype, 0.05, 0.95),
            jax.random.uniform(k2, (*batch, n), dtype))


def _logits_and_labels(key, batch, n, dtype=F64):
    k1, k2 = jax.random.split(key)
    return (3 * jax.random.normal(k1, (*batch, n), dtype),
            jax.random.randint(k2, batch, 0, n))


def _logits_and_soft(key, batch, n, dtype=F64):
    k1, k2 = jax.random.split(key)
    return (3 * jax.random.normal(k1, (*batch, n), dtype),
            jax.nn.softmax(jax.random.normal(k2, (*batch, n), dtype), axis=-1))


def _pred_and_target(key, batch, n, dtype=F64):
    k1, k2 = jax.random.split(key)
    return (jax.random.normal(k1, (*batch, n), dtype), jax.random.normal(k2, (*batch, n), dtype))


def _ref_gelu(z):
    return 0.5 * z * (1 + jax.scipy.special.erf(z / math.sqrt(2.0)))


ACTIVATION_OPS = [
    Op("sigmoid", fbp.sigmoid, jax.nn.sigmoid, _z),
    Op("tanh", fbp.tanh, jnp.tanh, _z),
    Op("relu", fbp.relu, jax.nn.relu, _z),
    Op("leaky_relu", fbp.leaky_relu, lambda z: jax.nn.leaky_relu(z, 0.01), _z),
    Op("leaky_relu(α=0.2)", lambda z: fbp.leaky_relu(z, alpha=0.2),
       lambda z: jax.nn.leaky_relu(z, 0.2), _z),
    Op("gelu", fbp.gelu, _ref_gelu, _z),
    Op("gelu(tanh)", lambda z: fbp.gelu(z, approximate=True),
       lambda z: jax.nn.gelu(z, approximate=True), _z),
    Op("softmax", fbp.softmax, lambda z: jax.nn.softmax(z, axis=-1), _z),
]

LINEAR_OPS = [
    Op("dense", fbp.dense,
       lambda p, x: x @ p.W.T + jnp.broadcast_to(p.b, (*x.shape[:-1], p.b.shape[0])),
       _dense_args, diff=(0, 1), batched=(1,)),
]

LOSS_OPS = [
    Op("bce_with_logits", fbp.bce_with_logits,
       lambda z, y: jnp.mean(optax.losses.sigmoid_binary_cross_entropy(z, y)),
       _logits_and_binary, diff=(0, 1), batched=(0, 1)),
    Op("bce", fbp.bce,
       lambda p, y: -jnp.mean(y * jnp.log(p) + (1 - y) * jnp.log(1 - p)),
       _probs_and_binary, diff=(0, 1), batched=(0, 1)),
    Op("softmax_cross_entropy(labels)", fbp.softmax_cross_entropy,
       lambda z, k: jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(z, k)),
       _logits_and_labels, diff=(0,), batched=(0, 1)),
    Op("softmax_cross_entropy(soft)", fbp.softmax_cross_entropy,
       lambda z, t: jnp.mean(optax.losses.softmax_cross_entropy(z, t)),
       _logits_and_soft, diff=(0, 1), batched=(0, 1)),
    Op("mse", fbp.mse, lambda p, y: jnp.mean(optax.losses.squared_error(p, y)),
       _pred_and_target, diff=(0, 1), batched=(0, 1)),
]

ALL_OPS = ACTIVATION_OPS + LINEAR_OPS + LOSS_OPS
