"""Input validation shared by every public fbp function.

Each helper raises a ``TypeError`` (wrong kind or dtype) or ``ValueError`` (wrong
shape, rank or value) that names the argument, what it got and what it needs, so the
user sees the mistake before XLA does.  Values are only inspected when they are
concrete: inside ``jit`` only shapes and dtypes are known, and those are still checked.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    """True when ``x`` holds real values (not a tracer inside jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def float_array(x, name: str, *, min_rank: int = 0):
    """``x`` as a floating-point JAX array, or a clear error."""
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{name} must be a floating-point array; got {type(x).__name__}.")
    try:
        x = jnp.asarray(x)
    except TypeError as err:
        raise TypeError(
            f"{name} must be a floating-point array; got {type(x).__name__} ({err})."
        ) from None
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{name} must have a floating-point dtype; got {x.dtype}. "
            f"Cast it first, e.g. {name}.astype(jnp.float32)."
        )
    if x.ndim < min_rank:
        raise ValueError(
            f"{name} must have at least {min_rank} dimension(s) (features last); "
            f"got shape {x.shape}."
        )
    return x


def same_dtype(**arrays) -> None:
    """All arrays share one dtype, or a TypeError that lists them."""
    dtypes = {name: a.dtype for name, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        got = ", ".join(f"{n}: {d}" for n, d in dtypes.items())
        first = next(iter(arrays))
        raise TypeError(
            f"{', '.join(arrays)} must share one dtype; got {got}. "
            f"Cast them to one, e.g. x.astype({first}.dtype)."
        )


def same_shape(a, b, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_b} must have the same shape as {name_a}; got {name_b}: {b.shape}, "
            f"{name_a}: {a.shape}."
        )


def finite_scalar(v, name: str, *, low: float | None = None, high: float | None = None,
                  low_open: bool = False, high_open: bool = False) -> float:
    """A concrete finite Python float within [low, high] (or open ends), or a clear error."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        if isinstance(v, (np.ndarray, jax.Array)) and np.ndim(v) == 0 and is_concrete(v):
            v = float(v)
        else:
            raise TypeError(f"{name} must be a real number; got {type(v).__name__} {v!r}.")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite; got {v}.")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}; got {v}.")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}; got {v}.")
    return v


def in_range(x, name: str, low: float, high: float) -> None:
    """When ``x`` is concrete, every value lies in [low, high] (NaN fails too)."""
    if is_concrete(x) and x.size:
        values = np.asarray(x)  # NumPy: no tracing even when called inside a jit trace
        lo, hi = float(values.min()), float(values.max())
        if not (low <= lo and hi <= high):
            raise ValueError(
                f"{name} must lie in [{low}, {high}]; got values in [{lo}, {hi}]."
            )


def one_of(value, name: str, known) -> None:
    if value not in known:
        raise ValueError(f"{name} must be one of {sorted(known)}; got {value!r}.")


def integer_array(x, name: str):
    """``x`` as an integer JAX array (indices, labels), or a TypeError with the cast to use."""
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{name} must be an integer array; got {type(x).__name__}.")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(
            f"{name} must have an integer dtype (indices); got {x.dtype}. "
            f"Cast it first, e.g. {name}.astype(jnp.int32)."
        )
    return x


def indices_in_range(ids, name: str, n: int, *, where=None) -> None:
    """When concrete, every index lies in [0, n) (only where ``where`` is True, if given)."""
    if not (is_concrete(ids) and ids.size) or (where is not None and not is_concrete(where)):
        return
    values = np.asarray(ids)  # NumPy: no tracing even inside a jit trace
    if where is not None:
        values = values[np.asarray(where)]
        if not values.size:
            return
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= n:
        raise ValueError(
            f"{name} must lie in [0, {n}) for {n} rows; got values in [{lo}, {hi}]."
        )
