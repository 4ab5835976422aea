"""fbp.autodiff where learners trip: complex values, kinks, integer casts, misuse.

Each case is held against ``jax.grad`` / ``jax.jvp`` (the engine is a reference for them) or
against the error a learner should see.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fbp import autodiff

F64 = jnp.float64
Z = jnp.array([3 + 4j, 1 - 2j, 0j, -0.5 + 0.25j])


def _close(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-12, atol=1e-12)


# ── complex values: JAX's convention (the cotangent is the transpose, not the adjoint) ──

def _abs_of_parts(re, im):
    return jnp.abs(re + 1j * im).sum()


@pytest.mark.filterwarnings("error:Casting from complex")   # x ↦ x + 0i transposes to Re
def test_complex_abs_gradient_equals_jax_grad():
    f = lambda z: jnp.abs(z).sum()
    _close(autodiff.grad(f)(Z), jax.grad(f)(Z))
    parts = (Z.real, Z.imag)
    _close(autodiff.grad(_abs_of_parts, (0, 1))(*parts), jax.grad(_abs_of_parts, (0, 1))(*parts))
    # and the analytic gradient of |x + iy|: (x, y) / |z|, 0 at z = 0
    r = jnp.where(jnp.abs(Z) == 0, 1.0, jnp.abs(Z))
    _close(autodiff.grad(_abs_of_parts, (0, 1))(*parts), (Z.real / r, Z.imag / r))


@pytest.mark.filterwarnings("error:Casting from complex")
def test_complex_abs_jvp_equals_jax_jvp():
    parts = (Z.real, Z.imag)
    v = (jnp.array([0.3, -1.0, 2.0, 0.5]), jnp.array([1.0, 0.25, -1.0, 2.0]))
    _close(autodiff.jvp(_abs_of_parts, parts, v), jax.jvp(_abs_of_parts, parts, v))
