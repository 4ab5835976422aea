"""Input validation shared by every public fbp function.

Each helper raises a ``TypeError`` (wrong kind or dtype) or ``ValueError`` (wrong
shape, rank or value) that names the argument, what it got and what it needs, so the
user sees the mistake before XLA does.  Values are only inspected when they are
concrete: inside ``jit`` only shapes and dtypes are known, and those are still checked.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.xla_metadata import set_xla_metadata


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


def same_dtype(fix: str | None = None, **arrays) -> None:
    """All arrays share one dtype, or a TypeError that lists them.

    The hint casts the first array whose dtype differs to the first array's dtype, unless
    ``fix`` (a sentence that works at the caller's level, e.g. which init to call) is given.
    """
    dtypes = {name: a.dtype for name, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        got = ", ".join(f"{n}: {d}" for n, d in dtypes.items())
        first = next(iter(arrays))
        odd = next(n for n, d in dtypes.items() if d != dtypes[first])
        raise TypeError(
            f"{', '.join(arrays)} must share one dtype; got {got}. "
            + (fix or f"Cast them to one, e.g. {odd}.astype({first}.dtype).")
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


def positive_int(v, name: str, what: str = "") -> int:
    """A positive integer of any integer type (Python, NumPy, a 0-d integer array) as an int."""
    if isinstance(v, (jax.Array, np.ndarray)) and v.ndim == 0 and is_concrete(v) \
            and jnp.issubdtype(v.dtype, jnp.integer):
        v = int(v)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int{what}; got {type(v).__name__} {v!r}.")
    if v < 1:
        raise ValueError(f"{name} must be a positive int{what}; got {int(v)}.")
    return int(v)


def prng_key(key, name: str = "key"):
    """One ``jax.random`` key: a typed key (``jax.random.key(0)``, shape ()) or a raw uint32
    key (``jax.random.PRNGKey(0)``, shape (2,)); anything else is a TypeError naming it."""
    how = "e.g. jax.random.key(0) or jax.random.PRNGKey(0)"
    if not hasattr(key, "dtype") or not hasattr(key, "shape"):
        raise TypeError(f"{name} must be a jax.random key, {how}; got {type(key).__name__} "
                        f"{key!r}.")
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"{name} must be one key; got a stack of keys of shape "
                             f"{key.shape}. Pass one of them, e.g. {name}[0].")
        return key
    if key.dtype == jnp.uint32 and key.ndim == 1:
        return key
    if key.dtype == jnp.uint32 and key.ndim > 1:
        raise ValueError(f"{name} must be one key; got a stack of keys of shape {key.shape}. "
                         f"Pass one of them, e.g. {name}[0].")
    raise TypeError(f"{name} must be a jax.random key, {how}; got an array of dtype "
                    f"{key.dtype} and shape {key.shape}.")


# ── integer class labels: checked when concrete; their class count noted when traced ──

_CLASS_COUNTS: list[list[tuple[int, bool]]] = []


@contextlib.contextmanager
def noting_class_counts():
    """Collect the class count of every softmax_cross_entropy traced inside (``fbp.fit`` and
    ``fbp.data_parallel`` trace the loss abstractly once, then check concrete labels)."""
    seen: list[tuple[int, bool]] = []   # (n_classes, masked by where)
    _CLASS_COUNTS.append(seen)
    try:
        yield seen
    finally:
        _CLASS_COUNTS.pop()


def class_labels(labels, name: str, n_classes: int, *, where=None) -> None:
    """Integer labels lie in [0, n_classes) where ``where`` is True (everywhere without it),
    checked when concrete; when traced, n_classes is noted for ``noting_class_counts``."""
    if not is_concrete(labels) or (where is not None and not is_concrete(where)):
        for seen in _CLASS_COUNTS:
            seen.append((n_classes, where is not None))
        return
    values = np.asarray(labels)  # NumPy: no tracing even when called inside a jit trace
    if where is not None:
        values = values[np.asarray(where)]
    if values.size:
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi >= n_classes:
            raise ValueError(
                f"{name} must lie in [0, {n_classes}) for {n_classes} classes; got values in "
                f"[{lo}, {hi}]." + (" (Only positions where `where` is True are read.)"
                                    if where is not None else "")
            )


_TRACE_IDS = itertools.count()


def traced_class_counts(trace) -> tuple[set[int], bool]:
    """Run ``trace()`` (an abstract ``jax.eval_shape`` of a loss) and return the class counts
    of the unmasked softmax_cross_entropy calls it traced, and whether it traced a masked one.
    (A masked loss reads only the labels its ``where`` selects, and padding may hold −1:
    those are not checked; and it is a mean over the positions selected, not the examples.)

    The counts are noted by the losses' Python bodies, which JAX skips when it finds the
    trace in its caches (a ``jax.jit``-ed loss already called with these shapes), and then
    no label would be checked.  So ``trace()`` runs under an XLA-metadata tag no trace had
    before: the tag is part of the caches' key, every cache misses, every body runs."""
    with noting_class_counts() as seen, set_xla_metadata(fbp_label_check=next(_TRACE_IDS)):
        trace()
    return {n for n, masked in seen if not masked}, any(masked for _, masked in seen)


def warn_masked_mean(parts: str, n: int) -> None:
    """A masked loss averaged over n parts (micro-batches, devices): say when that is exact."""
    warnings.warn(
        f"the loss calls softmax_cross_entropy with where=, a mean over the positions the mask "
        f"selects; over {parts} the result is the mean of {n} such means, which equals the "
        f"full-batch loss and gradient only when each part selects the same number of "
        f"positions (a position in a part selecting M_j of the batch's M weighs 1/({n}·M_j), "
        f"not 1/M). Balance the masks across the parts, or use one part.", stacklevel=4)


def labels_within(y, name: str, class_counts) -> None:
    """Concrete integer ``y`` lies in [0, C) for every C in ``class_counts``: inside a compiled
    loop no label value is seen, so this is the only place a label outside it is refused."""
    if not (class_counts and jnp.issubdtype(y.dtype, jnp.integer) and is_concrete(y) and y.size):
        return
    values = np.asarray(y)
    lo, hi = int(values.min()), int(values.max())
    for n_classes in sorted(class_counts):
        if lo < 0 or hi >= n_classes:
            raise ValueError(
                f"{name} holds integer class labels in [{lo}, {hi}], but a cross-entropy in "
                f"the loss has {n_classes} classes: labels must lie in "
                f"[0, {n_classes}). (Inside the compiled program the loss sees no label "
                f"values; a label outside the range would make its loss and gradient NaN.)"
            )


def one_of(value, name: str, known) -> None:
    if value not in known:
        raise ValueError(f"{name} must be one of {sorted(known)}; got {value!r}.")


def integer_array(x, name: str):
    """``x`` as an integer JAX array (indices, labels) at least as wide as int32, or a
    TypeError with the cast to use."""
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{name} must be an integer array; got {type(x).__name__}.")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(
            f"{name} must have an integer dtype (indices); got {x.dtype}. "
            f"Cast it first, e.g. {name}.astype(jnp.int32)."
        )
    return wide_indices(x)


def wide_indices(x):
    """Integer ``x`` widened to int32 when narrower (int8, uint8, int16, uint16): the rules
    compare, clip and one-hot indices against counts such as 300 classes, which an int8 or
    uint8 cannot hold (300 wraps to 44), so narrow labels would pick the wrong class."""
    return x.astype(jnp.int32) if x.dtype.itemsize < 4 else x


def indices_in_range(ids, name: str, n: int, *, where=None, unit: str = "rows") -> None:
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
            f"{name} must lie in [0, {n}) for {n} {unit}; got values in [{lo}, {hi}]."
        )
