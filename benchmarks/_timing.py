"""Paired timing: A and B interleaved in one process, medians, per-round ratios, spread.

Every comparison in ``benchmarks`` goes through ``paired``: after warm-up, each round runs
every candidate once, in an order that alternates from round to round, and waits for the
result with ``block_until_ready``.  Noise from other processes on the machine then hits
both sides of a pair alike, and the per-round ratio A/B is what the table reports
(median, with the interquartile range of the per-round ratios as the spread).
Compile time is measured apart, by ``compile_seconds``, and never enters a timing.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable

import jax
import numpy as np


def block(out):
    """Wait until every array in ``out`` is computed (JAX dispatches asynchronously)."""
    return jax.block_until_ready(out)


def compile_seconds(jitted, *args, **kwargs) -> float:
    """Seconds to lower and compile ``jitted`` for these arguments (trace + XLA compile)."""
    return compile_stats(jitted, *args, **kwargs)[0]


_NOT_KERNELS = ("parameter", "tuple", "get-tuple-element", "constant", "bitcast")


def compile_stats(jitted, *args, **kwargs) -> tuple[float, int]:
    """(compile seconds, kernels): the kernels are the instructions of the compiled entry
    computation that do work (fusions, dots, copies, …; not parameters, tuples, bitcasts)."""
    t0 = time.perf_counter()
    compiled = jitted.lower(*args, **kwargs).compile()
    seconds = time.perf_counter() - t0
    text = compiled.as_text()
    entry = text[text.index("\nENTRY"):]
    entry = entry[:entry.index("\n}")]
    ops = [m.group(1) for line in entry.splitlines()[1:]
           if (m := re.search(r" = .*?\s([a-z][\w-]*)\(", line))]
    return seconds, sum(op not in _NOT_KERNELS for op in ops)


_DOT = re.compile(r"= (\S+) dot\([^)]*\)((?:, (?:lhs|rhs)_(?:batch|contracting)_dims=\{[^}]*\})+)")


def dot_signatures(jitted, *args, **kwargs) -> list[str]:
    """Every dot of the optimised program (inside fusions too) as ``result-shape{layout}
    dimension-numbers``, sorted: two programs with equal lists run the same matmuls on
    operands of the same orientation (no transposed copy hidden in one of them)."""
    text = jitted.lower(*args, **kwargs).compile().as_text()
    return sorted(m.group(1) + m.group(2) for m in _DOT.finditer(text))


def quartiles(values) -> tuple[float, float, float]:
    """(25th percentile, median, 75th percentile)."""
    q1, q2, q3 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return float(q1), float(q2), float(q3)


def paired(fns: dict[str, Callable[[], object]], *, rounds: int = 7, warmup: int = 2,
           repeat: int | dict[str, int] = 1) -> dict[str, list[float]]:
    """Per-round seconds of each zero-argument function, interleaved.

    Args:
      fns: name → function; each call must do the work and return what to block on
        (a function may carry its own state, e.g. params updated by a donated step).
      rounds: timed rounds; every function runs once per round.
      warmup: untimed rounds first (compilation, caches, page faults).
      repeat: calls per timing, for work too short to time one call alone (one number
        for all, or name → number); the time reported is per call.
    Returns:
      name → list of ``rounds`` per-call times in seconds.
    """
    names = list(fns)
    reps = repeat if isinstance(repeat, dict) else dict.fromkeys(names, repeat)
    for _ in range(warmup):
        for name in names:
            block(fns[name]())
    times = {name: [] for name in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            fn = fns[name]
            t0 = time.perf_counter()
            for _ in range(reps[name]):
                out = fn()
            block(out)
            times[name].append((time.perf_counter() - t0) / reps[name])
    return times


def ratio_stats(a: list[float], b: list[float]) -> dict:
    """Median times of A and B, the median per-round ratio A/B and its IQR; also the ratio
    of the fastest rounds (the least disturbed by other processes)."""
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    q1, med, q3 = quartiles(ratios)
    return {"a_median_s": statistics.median(a), "b_median_s": statistics.median(b),
            "ratio_median": med, "ratio_q1": q1, "ratio_q3": q3,
            "ratio_min": min(ratios), "ratio_max": max(ratios), "rounds": len(ratios),
            "a_min_s": min(a), "b_min_s": min(b), "ratio_of_fastest": min(a) / min(b)}


def auto_repeat(fn: Callable[[], object], target_s: float = 0.02, cap: int = 2000) -> int:
    """How many calls of ``fn`` make one timing of about ``target_s`` (fn already warm)."""
    block(fn())
    t0 = time.perf_counter()
    block(fn())
    one = max(time.perf_counter() - t0, 1e-7)
    return int(min(cap, max(1, round(target_s / one))))


def fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.3f} s"


def table(headers, rows) -> str:
    """A markdown table, readable when printed."""
    cell = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
