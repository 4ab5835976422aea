"""What every experiment shares: where results go, saving JSON + PNG, the command line."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

RESULTS = Path("results")


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _jsonable(np.asarray(obj).tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)  # JSON has no inf/nan: keep them readable
    return obj


def save(name: str, result: dict, fig, out: Path = RESULTS) -> dict:
    """Write ``out/NAME.json`` and ``out/NAME.png``; return the JSON-able result."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = _jsonable(result)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return result


def table(headers, rows) -> str:
    """A markdown table (also readable when printed)."""
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def cli(run, report=None) -> None:
    """``python -m experiments.NAME [--quick] [--out DIR]``."""
    parser = argparse.ArgumentParser(description=(run.__module__ and __import__(
        run.__module__, fromlist=["_"]).__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small version the tests run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args()
    t0 = time.perf_counter()
    result = run(quick=args.quick, out=args.out)
    if report is not None:
        print(report(result))
    print(f"done in {time.perf_counter() - t0:.1f} s; wrote {args.out}/")
