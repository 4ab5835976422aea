"""benchmarks/vocab.py: both candidates compute the same loss and gradients, and the quick
run produces a report and one target row per claim (no timing is asserted)."""

import jax.numpy as jnp

from benchmarks import vocab
from tests._proof import rel_err


def test_fbp_and_autodiff_candidates_agree():
    args = vocab.problem(24, 8, 300, dtype=jnp.float64)
    fns = vocab.steps()
    assert set(fns) == {"fbp", "chunked", "autodiff"}
    assert rel_err(fns["fbp"](*args), fns["autodiff"](*args)) <= 1e-12
    assert rel_err(fns["chunked"](*args), fns["autodiff"](*args)) <= 1e-12


def test_quick_run_reports_every_target(monkeypatch):
    monkeypatch.setattr(vocab, "QUICK_SIZES", {"timed": (16, 4, 96), "compiled": (32, 4, 200)})
    result = vocab.run(quick=True)
    text = vocab.report(result)
    assert "compiled only" in text and "temp ratio" in text
    rows = vocab.targets(result)
    assert [r["met"] in (True, False) for r in rows] == [True] * 3
    assert result["compiled"]["temp_bytes"]["autodiff"] > 0
    assert jnp.isfinite(result["timed"]["time"]["ratio_median"])
    parts = result["timed"]["parts_s"]
    assert set(parts) == {"fbp", "chunked", "autodiff", "chunked loss", "autodiff loss",
                          "h @ W.T"}
    assert jnp.isfinite(result["timed"]["chunked_time"]["ratio_median"])
    assert text.count("| timed |") == 2 and "| fused |" in text and "| chunked |" in text
    estimate = 4 * parts["chunked loss"] / parts["autodiff"]
    assert result["timed"]["four_matmul_estimate"] == estimate and f"{estimate:.2f}" in text
