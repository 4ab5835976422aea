"""fbp.autodiff where learners trip: complex values, kinks, integer casts, misuse.

Each case is held against ``jax.grad`` / ``jax.jvp`` (the engine is a reference for them) or
against the error a learner should see.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fbp import autodiff

F64 = jnp.float64
_ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
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


# ── kinks: the derivative jax.grad takes where there is none ──

_clamp3 = lambda lo, x, hi: jax.lax.clamp(lo, x, hi)
KINKS = [  # (name, f, arguments); each is differentiated in every argument
    ("abs-at-0", jnp.abs, (0.0,)),
    ("abs-at-minus-0", jnp.abs, (-0.0,)),
    ("clip-at-lower", lambda x: jnp.clip(x, 0.0, 1.0), (0.0,)),
    ("clip-at-upper", lambda x: jnp.clip(x, 0.0, 1.0), (1.0,)),
    ("maximum-tie", jnp.maximum, (1.0, 1.0)),
    ("minimum-tie", jnp.minimum, (1.0, 1.0)),
    ("max-reduction-tie", lambda x: jnp.max(x), (jnp.array([1.0, 1.0, 0.0]),)),
    ("clamp-at-lower", _clamp3, (0.0, 0.0, 1.0)),
    ("clamp-at-upper", _clamp3, (0.0, 1.0, 1.0)),
    ("clamp-inside", _clamp3, (0.0, 0.5, 1.0)),
    ("clamp-below", _clamp3, (0.0, -1.0, 1.0)),
    ("clamp-above", _clamp3, (0.0, 2.0, 1.0)),
    ("clamp-empty-range", _clamp3, (1.0, 0.5, 0.0)),
    ("clamp-vector-at-bounds", lambda x: jax.lax.clamp(0.0, x, 1.0).sum(),
     (jnp.array([-1.0, 0.0, 0.5, 1.0, 2.0]),)),
]


@pytest.mark.parametrize("f, args", [k[1:] for k in KINKS], ids=[k[0] for k in KINKS])
def test_kinks_take_jax_grads_convention(f, args):
    args = tuple(jnp.asarray(a, F64) for a in args)
    nums = tuple(range(len(args)))
    _close(autodiff.grad(f, nums)(*args), jax.grad(f, nums)(*args))
    ones = tuple(jnp.ones_like(a) for a in args)
    _close(autodiff.jvp(f, args, ones), jax.jvp(f, args, ones))


# ── forward mode through an integer cast: a float0 tangent, as jax.jvp gives ──

INT_CASTS = [
    ("to-int", lambda x: x.astype(jnp.int32)),
    ("cast-back-to-float", lambda x: (x.astype(jnp.int32) * 2).astype(F64) + x),
    ("int-and-float-outputs", lambda x: (jnp.round(x).astype(jnp.int64), jnp.sin(x))),
    ("constant-int-output", lambda x: (jnp.int32(3), x * x)),
]


@pytest.mark.parametrize("f", [c[1] for c in INT_CASTS], ids=[c[0] for c in INT_CASTS])
def test_jvp_through_an_integer_cast_gives_float0(f):
    x, v = (jnp.array([0.4, 1.6, -2.3]),), (jnp.array([1.0, -2.0, 0.5]),)
    out, t = autodiff.jvp(f, x, v)
    out_ref, t_ref = jax.jvp(f, x, v)
    _close(out, out_ref)
    assert jax.tree.structure(t) == jax.tree.structure(t_ref)
    for u, w in zip(jax.tree.leaves(t), jax.tree.leaves(t_ref), strict=True):
        assert (u.dtype, u.shape) == (w.dtype, w.shape)
        if w.dtype != jax.dtypes.float0:
            _close(u, w)


# ── misuse: clear errors before anything runs ──

def test_a_value_leaked_from_another_call_is_a_closure_error():
    kept = []
    x = jnp.arange(3.0)
    autodiff.grad(lambda x: (kept.append(x * 2), x.sum())[1])(x)    # keeps a traced value
    uses_it = lambda y: (kept[0] * y).sum()
    for call in (lambda: autodiff.grad(uses_it)(x), lambda: autodiff.vjp(uses_it, x),
                 lambda: autodiff.jvp(uses_it, (x,), (x,))):
        with pytest.raises(autodiff.ClosureError, match="kept it.*Return it from that function"):
            call()
    # a value of an enclosing trace that is still live is fine (nested grad = jax's)
    inner = lambda x: autodiff.grad(lambda y: x * y * y)(1.0)
    _close(autodiff.grad(inner)(2.0), jax.grad(lambda x: jax.grad(lambda y: x * y * y)(1.0))(2.0))


@pytest.mark.parametrize("args, where", [(("abc",), r"args\[0\] = 'abc' \(str\) is not an array"),
                                         (({"w": 1.0, "name": None, "f": print},),
                                          r"args\[0\]\['f'\] = <built-in .*is not an array")])
def test_a_non_array_argument_is_named(args, where):
    with pytest.raises(TypeError, match=where + ".*close over the value"):
        autodiff.grad(lambda *a: 1.0)(*args)
    with pytest.raises(TypeError, match=where.replace("args", "primals")):
        autodiff.jvp(lambda *a: 1.0, args, args)


X3 = jnp.arange(3.0)
GRAD_MISUSE = [  # (name, call, error, message)
    ("vector-output", lambda: autodiff.grad(lambda x: x * x)(X3), TypeError,
     r"float scalar; it returned ShapeDtypeStruct\(shape=\(3,\).*\.sum\(\)"),
    ("tuple-output", lambda: autodiff.grad(lambda x: (x.sum(), x.sum()))(X3), TypeError,
     "float scalar; it returned a tuple"),
    ("dict-output", lambda: autodiff.grad(lambda x: {"loss": x.sum()})(X3), TypeError,
     "float scalar; it returned a dict"),
    ("no-output", lambda: autodiff.grad(lambda x: None)(X3), TypeError,
     "float scalar; it returned a NoneType"),
    ("integer-argument", lambda: autodiff.grad(lambda n: (n * n).sum().astype(float))(
        jnp.arange(3)), TypeError, r"args\[0\] has only int64 leaves.*jnp.asarray\(x, float\)"),
    ("python-int-argument", lambda: autodiff.grad(lambda n: n * 1.5)(3), TypeError,
     r"args\[0\] has only int64 leaves"),
    ("argnums-past-the-end", lambda: autodiff.grad(lambda x: x.sum(), 1)(X3), ValueError,
     "argnums=1 must index f's arguments; f was called with 1"),
    ("argnums-in-tuple-past-the-end", lambda: autodiff.grad(lambda x: x.sum(), (0, 3))(X3),
     ValueError, r"argnums=\(0, 3\) must index"),
    ("no-arguments", lambda: autodiff.grad(lambda: 1.0)(), ValueError, "called with 0"),
    ("argnums-a-string", lambda: autodiff.grad(lambda x: x.sum(), "x"), TypeError,
     "argnums must be an int or a non-empty tuple of ints"),
    ("argnums-a-bool", lambda: autodiff.grad(lambda x: x.sum(), True), TypeError,
     "argnums must be an int"),
    ("f-not-callable", lambda: autodiff.grad(X3.sum()), TypeError,
     r"f must be a function; got ArrayImpl.*not fbp.autodiff.grad\(f\(x\)\)"),
]


@pytest.mark.parametrize("call, error, message", [c[1:] for c in GRAD_MISUSE],
                         ids=[c[0] for c in GRAD_MISUSE])
def test_grad_misuse_is_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_negative_argnums_and_integer_leaves_beside_floats_work_as_in_jax():
    f = lambda n, x: (x * n).sum()
    _close(autodiff.grad(f, -1)(jnp.arange(3), X3), jax.grad(f, -1)(jnp.arange(3), X3))
    g = lambda p: (p["w"] * p["n"]).sum()
    p = {"w": X3, "n": jnp.arange(3)}
    got = autodiff.grad(g)(p)
    _close(got["w"], jax.grad(g, allow_int=True)(p)["w"])
    assert got["n"].dtype == jax.dtypes.float0


def test_a_cotangent_or_tangent_of_the_wrong_shape_is_named():
    _, vjp_fn = autodiff.vjp(lambda x: {"y": x * 2}, X3)
    with pytest.raises(ValueError, match=r"cotangent\['y'\] is ShapeDtypeStruct\(shape=\(4,\)"
                       r".*shape of the value it pairs with.*shape=\(3,\)"):
        vjp_fn({"y": jnp.ones(4)})
    with pytest.raises(ValueError, match=r"tangents\[0\] is ShapeDtypeStruct\(shape=\(4,\)"):
        autodiff.jvp(lambda x: x * 2, (X3,), (jnp.ones(4),))
    with pytest.raises(ValueError, match=r"tangents\[0\] is str"):
        autodiff.jvp(lambda x: x * 2, (X3,), ("abc",))


def test_tangents_and_cotangents_take_their_values_dtype():
    """A float32 tangent for a float64 primal (or a Python number) is cast, as vjp_fn casts."""
    f = lambda x: jnp.sin(x) * x
    v = jnp.array([1.0, -2.0, 0.5])
    out, t = autodiff.jvp(f, (X3,), (v.astype(jnp.float32),))
    _close((out, t), jax.jvp(f, (X3,), (v,)))
    assert t.dtype == F64
    _close(autodiff.jvp(jnp.sin, (jnp.float64(0.3),), (1.0,)),
           jax.jvp(jnp.sin, (jnp.float64(0.3),), (jnp.float64(1.0),)))
    _close(autodiff.vjp(f, X3)[1](v.astype(jnp.float32)), jax.vjp(f, X3)[1](v))


@pytest.mark.parametrize("flag, value", [("--layers", "-1"), ("--layers", "0"),
                                         ("--width", "0"), ("--width", "2.5")])
def test_command_line_refuses_sizes_below_one(flag, value):
    done = subprocess.run([sys.executable, "-m", "fbp.autodiff", flag, value],
                          capture_output=True, text=True, timeout=120, env=_ENV)
    assert done.returncode == 2, done.stderr
    assert f"argument {flag}: must be a whole number of at least 1; got '{value}'" in done.stderr
