"""fbp.numerical on awkward inputs: static arguments, bad steps, and rel_error's edge cases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import fbp

X = jnp.array([0.5, -1.0, 2.0])


def _mixed(x, n, mode, missing, flag, scale):
    """Python control flow on the static arguments: they must reach f as Python values."""
    out = jnp.sum(x ** 3) * n
    if mode == "double":
        out = out * 2
    if missing is None:
        out = out + 1
    if flag:
        out = out + jnp.sum(x)
    return out * scale


def test_static_arguments_are_held_as_they_are():
    statics = (2, "double", None, True, 1.5)
    want = jax.grad(lambda x: _mixed(x, *statics))(X)
    np.testing.assert_allclose(fbp.numerical_grad(_mixed, X, *statics), want, rtol=1e-10)
    np.testing.assert_allclose(want, (12 * X ** 2 + 1) * 1.5, rtol=1e-14)   # by hand
    # static leaves inside the differentiated argument: held, and given None
    g = fbp.numerical_grad(lambda p: jnp.sum(p["x"] ** 2) * p["n"] * (p["s"] == "a"),
                           {"x": X, "n": 3, "s": "a"})
    assert g["n"] is None and g["s"] is None
    np.testing.assert_allclose(g["x"], 6 * X, rtol=1e-10)
    (x_bar, s_bar) = fbp.numerical_vjp(lambda x, s: x * 2 if s == "a" else x, (X, "a"),
                                       jnp.ones(3))
    assert s_bar is None
    np.testing.assert_allclose(x_bar, 2 * jnp.ones(3), rtol=1e-10)
