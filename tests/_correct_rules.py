"""A corpus of CORRECT hand-written rules in the style of real projects, for fbp.check_vjp.

Written for these tests (no third-party code): special functions, losses, solvers, fused
kernels, quantisation, gradient surgery, and every signature JAX allows — nondiff_argnums of
a callable, a dtype, an int and a float; symbolic_zeros; complex numbers; integer outputs;
typed PRNG keys; Python floats inside dicts; keyword arguments; kinks and points where the
reference is not finite.  Each entry: (name, f, args, check_vjp keyword arguments).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np
from jax.custom_derivatives import SymbolicZero

rng = np.random.default_rng(7)


def normal(*shape):
    return jnp.asarray(rng.standard_normal(shape))


def uniform(lo, hi, *shape):
    return jnp.asarray(rng.uniform(lo, hi, shape))


def vjp_rule(fun, fwd, bwd, symbolic_zeros=False, **kw):
    f = jax.custom_vjp(fun, **kw)
    f.defvjp(fwd, bwd, symbolic_zeros=symbolic_zeros)
    return f


def saving_inputs(fun, bwd, **kw):
    """A rule whose fwd saves its (differentiable) inputs and output: res = (inputs, out)."""
    nd = kw.get("nondiff_argnums", ())

    def fwd(*args):
        out = fun(*args)
        return out, (tuple(a for i, a in enumerate(args) if i not in nd), out)
    return vjp_rule(fun, fwd, bwd, **kw)


# ── losses and normalisations ──

def masked_log_softmax_fn(x, mask):
    return jnp.where(mask, jax.nn.log_softmax(jnp.where(mask, x, -jnp.inf), axis=-1), 0.0)


def masked_log_softmax_bwd(res, g):
    (x, mask), y = res
    p = jnp.where(mask, jnp.exp(y), 0.0)
    gm = jnp.where(mask, g, 0.0)
    return gm - p * jnp.sum(gm, axis=-1, keepdims=True), None


def vocab_loss_fn(h, E, labels):
    logits = h @ E.T
    lse = jax.nn.logsumexp(logits, axis=-1)
    return jnp.mean(lse - jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0])


def vocab_loss_fwd(h, E, labels):       # saves the row log-sum-exp, never the logits
    logits = h @ E.T
    lse = jax.nn.logsumexp(logits, axis=-1)
    loss = jnp.mean(lse - jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0])
    return loss, (h, E, labels, lse)


def vocab_loss_bwd(res, g):
    h, E, labels, lse = res
    delta = jnp.exp(h @ E.T - lse[:, None]) - jax.nn.one_hot(labels, E.shape[0], dtype=h.dtype)
    delta = g * delta / h.shape[0]
    return delta @ E, delta.T @ h, None


def logcosh_fn(pred, target):
    r = pred - target
    return jnp.mean(jnp.logaddexp(r, -r) - jnp.log(2.0))


def logcosh_bwd(res, g):
    (pred, target), _ = res
    d = g * jnp.tanh(pred - target) / pred.size
    return d, -d


def hinge_fn(score, y):
    return jnp.mean(jnp.maximum(0.0, 1.0 - y * score))


def hinge_bwd(res, g):
    (score, y), _ = res
    active = (1.0 - y * score > 0).astype(score.dtype) * g / score.size
    return -y * active, -score * active


def _huber(pred, target, delta):
    r = jnp.abs(pred - target)
    return jnp.mean(jnp.where(r <= delta, 0.5 * r ** 2, delta * (r - 0.5 * delta)))


def _huber_bwd(delta, res, g):
    (pred, target), _ = res
    r = pred - target
    d = g * jnp.clip(r, -delta, delta) / r.size
    return d, -d


_huber_rule = saving_inputs(_huber, _huber_bwd, nondiff_argnums=(2,))


def huber_loss(pred, target, *, delta=1.0):
    return _huber_rule(pred, target, delta)


def _wmse(pred, target, weights):
    return jnp.sum(weights * (pred - target) ** 2) / pred.shape[0]


def _wmse_bwd(res, g):
    (pred, target, weights), _ = res
    r = pred - target
    d = g * 2 * weights * r / pred.shape[0]
    return d, -d, g * r ** 2 / pred.shape[0]


_wmse_rule = saving_inputs(_wmse, _wmse_bwd)


def weighted_mse(pred, target, *, weights):
    return _wmse_rule(pred, target, weights)


def smoothed_ce_fn(logits, labels, smoothing):
    n = logits.shape[-1]
    q = (1 - smoothing) * jax.nn.one_hot(labels, n, dtype=logits.dtype) + smoothing / n
    return -jnp.mean(jnp.sum(q * jax.nn.log_softmax(logits, axis=-1), axis=-1))


def smoothed_ce_bwd(smoothing, res, g):
    (logits, labels), _ = res
    n = logits.shape[-1]
    q = (1 - smoothing) * jax.nn.one_hot(labels, n, dtype=logits.dtype) + smoothing / n
    return g * (jax.nn.softmax(logits, axis=-1) - q) / logits.shape[0], None


def cosine_fn(a, b):
    return jnp.sum(a * b, -1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1))


def cosine_bwd(res, g):
    (a, b), c = res
    na = jnp.linalg.norm(a, axis=-1, keepdims=True)
    nb = jnp.linalg.norm(b, axis=-1, keepdims=True)
    gc = g[..., None]
    c = c[..., None]
    return gc * (b / (na * nb) - c * a / na ** 2), gc * (a / (na * nb) - c * b / nb ** 2)


def rms_norm_fn(x, gamma):
    return x / jnp.sqrt(jnp.mean(x ** 2, -1, keepdims=True) + 1e-6) * jnp.broadcast_to(
        gamma, x.shape)


def rms_norm_bwd(res, g):
    (x, gamma), _ = res
    r = 1 / jnp.sqrt(jnp.mean(x ** 2, -1, keepdims=True) + 1e-6)
    gg = g * jnp.broadcast_to(gamma, g.shape)
    x_bar = r * gg - r ** 3 * x * jnp.mean(gg * x, -1, keepdims=True)
    return x_bar, jnp.sum((g * x * r).reshape(-1, x.shape[-1]), 0)


def safe_norm_fn(x):
    return jnp.sqrt(jnp.sum(x ** 2, axis=-1))


def safe_norm_bwd(res, g):
    (x,), n = res
    safe = jnp.where(n > 0, n, 1.0)[..., None]
    return (g[..., None] * jnp.where(n[..., None] > 0, x / safe, 0.0),)


def sinc_fn(x):
    return jnp.where(x == 0, 1.0, jnp.sin(x) / x)


def sinc_bwd(res, g):            # a Taylor branch near 0, so that the rule is smooth there too
    (x,), _ = res
    small = jnp.abs(x) < 1e-3
    xs = jnp.where(small, 1.0, x)
    return (g * jnp.where(small, -x / 3 + x ** 3 / 30,
                          (xs * jnp.cos(xs) - jnp.sin(xs)) / xs ** 2),)


# ── special functions, activations, kinks ──

def erf_bwd(res, g):
    (x,), _ = res
    return (g * 2 / jnp.sqrt(jnp.pi) * jnp.exp(-x ** 2),)


def gammaln_bwd(res, g):
    (x,), _ = res
    return (g * jsp.digamma(x),)


def lse_fn(x, axis):
    return jax.nn.logsumexp(x, axis=axis)


def lse_bwd(axis, res, g):
    (x,), y = res
    return (jnp.expand_dims(g, axis) * jnp.exp(x - jnp.expand_dims(y, axis)),)


def softplus_fn(x):
    return jnp.maximum(x, 0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


def softplus_bwd(res, g):
    (x,), _ = res
    return (g * jax.nn.sigmoid(x),)


def relu_fn(z):
    return jnp.maximum(z, 0.0)


def relu_bwd(res, g):
    (z,), _ = res
    return (jnp.where(z > 0, g, 0.0),)


def power_fn(x, n):
    return x ** n


def power_bwd(n, res, g):
    (x,), _ = res
    return (g * n * x ** (n - 1),)


def apply_fn(fn, x):
    return fn(x)


def apply_bwd(fn, res, g):
    (x,), _ = res
    return (jax.vjp(fn, x)[1](g)[0],)


def softplus_in_fn(x, dtype):
    return jax.nn.softplus(x.astype(dtype)).astype(x.dtype)


def softplus_in_bwd(dtype, res, g):
    (x,), _ = res
    return ((g.astype(dtype) * jax.nn.sigmoid(x.astype(dtype))).astype(x.dtype),)


def sym_mul_fwd(x, y):            # symbolic_zeros=True: CustomVJPPrimal(value, perturbed)
    return x.value * y.value, (x.value, y.value)


def sym_mul_bwd(res, g):
    x, y = res
    if isinstance(g, SymbolicZero):
        return jnp.zeros_like(x), jnp.zeros_like(y)
    return g * y, g * x


def scaled_tanh_fn(s, x):
    return jnp.tanh(s * x)


def scaled_tanh_bwd(res, g):
    (s, x), y = res
    d = g * (1 - y ** 2)
    return jnp.sum(d * x).astype(jnp.result_type(s)), d * s


_scaled_tanh = saving_inputs(scaled_tanh_fn, scaled_tanh_bwd)


def configured_tanh(cfg, x):
    """A dict with a float leaf and a string leaf: only the string is held."""
    assert cfg["act"] == "tanh"
    return _scaled_tanh(cfg["scale"], x)


from _correct_rules_more import (  # noqa: E402 — the second half of the corpus
    _fixed_point,
    _newton_sqrt,
    attention_bwd,
    attention_fn,
    attention_fwd,
    clip_norm_bwd,
    cmatmul_bwd,
    cmatmul_fn,
    cumsum_bwd,
    cumsum_fn,
    dense32_bwd,
    dense32_fn,
    dropout_bwd,
    dropout_fn,
    dropout_fwd,
    fixed_point_bwd,
    fixed_point_fwd,
    identity_fn,
    matmul_bwd,
    matmul_fn,
    newton_sqrt_bwd,
    qdq_fn,
    reverse_bwd,
    sort_bwd,
    sort_fn,
    sort_fwd,
    square_and_abs2_bwd,
    square_and_abs2_fn,
    ste_bwd,
)

# ── the points ──

X34 = normal(3, 4)
MASK = jnp.asarray(np.array([[1, 1, 0, 1], [0, 1, 1, 1], [1, 0, 0, 0]], bool))
LABELS3 = jnp.asarray(rng.integers(0, 5, 3))
X_ZERO_ROW = X34.at[1].set(0.0)
X_WITH_ZEROS = jnp.asarray([[-1.0, 0.0, 0.5, 0.0], [0.0, 2.0, -0.3, 0.7], [1.2, -0.4, 0.0, 0.9]])
Y_PM1 = jnp.asarray(rng.choice([-1.0, 1.0], (6,)))
W_FP = normal(3, 3) * 0.2
KEY = jax.random.key(3)
CZ = jnp.asarray(rng.standard_normal(3) + 1j * rng.standard_normal(3))
CA = jnp.asarray(rng.standard_normal((2, 3)) + 1j * rng.standard_normal((2, 3)))

CORRECT = [
    ("masked log-softmax", saving_inputs(masked_log_softmax_fn, masked_log_softmax_bwd),
     (X34, MASK), {}),
    ("fused vocabulary loss", vjp_rule(vocab_loss_fn, vocab_loss_fwd, vocab_loss_bwd),
     (normal(3, 3), normal(4, 3), LABELS3 % 4), {}),
    ("log-cosh loss", saving_inputs(logcosh_fn, logcosh_bwd), (normal(3, 2), normal(3, 2)), {}),
    ("hinge loss (float ±1 targets)", saving_inputs(hinge_fn, hinge_bwd),
     (normal(6), Y_PM1), {}),
    ("huber loss (delta: keyword, nondiff float)", huber_loss, (normal(3, 2), normal(3, 2)),
     {"f_kwargs": {"delta": 1.0}}),
    ("weighted mse (weights: keyword array)", weighted_mse, (normal(3, 2), normal(3, 2)),
     {"f_kwargs": {"weights": uniform(0.5, 2, 3, 2)}}),
    ("label-smoothed cross-entropy", saving_inputs(smoothed_ce_fn, smoothed_ce_bwd,
                                                   nondiff_argnums=(2,)),
     (normal(3, 5), LABELS3, 0.1), {}),
    ("cosine similarity", saving_inputs(cosine_fn, cosine_bwd), (normal(3, 4), normal(3, 4)),
     {}),
    ("rms norm", saving_inputs(rms_norm_fn, rms_norm_bwd), (X34, uniform(0.5, 2, 4)), {}),
    ("safe norm at 0", saving_inputs(safe_norm_fn, safe_norm_bwd), (X_ZERO_ROW,), {}),
    ("sinc at 0", saving_inputs(sinc_fn, sinc_bwd), (jnp.asarray([0.0, 0.7, -1.3, 2.0]),), {}),
    ("erf (jax.scipy)", saving_inputs(jsp.erf, erf_bwd), (X34,), {}),
    ("gammaln (jax.scipy)", saving_inputs(jsp.gammaln, gammaln_bwd), (uniform(0.5, 3, 5),), {}),
    ("logsumexp (nondiff int axis)", saving_inputs(lse_fn, lse_bwd, nondiff_argnums=(1,)),
     (X34, 1), {}),
    ("softplus", saving_inputs(softplus_fn, softplus_bwd), (X34,), {}),
    ("relu at exact zeros", saving_inputs(relu_fn, relu_bwd), (X_WITH_ZEROS,), {}),
    ("power (nondiff int)", saving_inputs(power_fn, power_bwd, nondiff_argnums=(1,)),
     (X34, 3), {}),
    ("apply (nondiff callable)", saving_inputs(apply_fn, apply_bwd, nondiff_argnums=(0,)),
     (jnp.sin, X34), {}),
    ("softplus in a dtype (nondiff dtype)",
     saving_inputs(softplus_in_fn, softplus_in_bwd, nondiff_argnums=(1,)),
     (X34, jnp.float64), {}),
    ("multiply (symbolic_zeros=True)",
     vjp_rule(lambda x, y: x * y, sym_mul_fwd, sym_mul_bwd, symbolic_zeros=True),
     (normal(3), normal(3)), {}),
    ("tanh with a dict of a float and a string", configured_tanh,
     ({"scale": 0.7, "act": "tanh"}, normal(4)), {}),
    ("matmul a @ b", saving_inputs(matmul_fn, matmul_bwd), (normal(3, 4), normal(4, 2)), {}),
    ("attention", vjp_rule(attention_fn, attention_fwd, attention_bwd),
     (normal(2, 3), normal(3, 3), normal(3, 2)), {}),
    ("cumsum", saving_inputs(cumsum_fn, cumsum_bwd), (X34,), {}),
    ("dense accumulating in float32", saving_inputs(dense32_fn, dense32_bwd),
     (normal(2, 3), normal(2, 3)), {}),
    ("complex matmul (holomorphic)", saving_inputs(cmatmul_fn, cmatmul_bwd), (CA, CZ), {}),
    ("complex square and |z|²", saving_inputs(square_and_abs2_fn, square_and_abs2_bwd),
     (CZ,), {}),
    ("sort with indices (float and int outputs)", vjp_rule(sort_fn, sort_fwd, sort_bwd),
     (normal(5),), {}),
    ("dropout with a typed PRNG key", vjp_rule(dropout_fn, dropout_fwd, dropout_bwd),
     (normal(3, 4), KEY), {}),
    ("implicit fixed-point solver (IFT rule)",
     vjp_rule(_fixed_point, fixed_point_fwd, fixed_point_bwd), (W_FP, normal(3)), {}),
    ("newton sqrt (while_loop reference)", saving_inputs(_newton_sqrt, newton_sqrt_bwd),
     (uniform(0.5, 4, 4),), {}),
    ("quantise-dequantise, straight-through", saving_inputs(qdq_fn, ste_bwd), (X34,),
     {"rule": "surrogate"}),
    ("gradient reversal (×−0.5)", saving_inputs(identity_fn, reverse_bwd), (X34,),
     {"rule": "surrogate"}),
    ("gradient clipping by norm", saving_inputs(identity_fn, clip_norm_bwd), (X34,),
     {"rule": "nonlinear-surrogate"}),
]

NAMES = [c[0] for c in CORRECT]
