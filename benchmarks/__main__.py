"""``python -m benchmarks [--quick] [--only NAME ...] [--out DIR]``: run, print, save results."""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from benchmarks import GROUPS


def machine() -> dict:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                      if line.startswith("Model name")), platform.processor())
    except (OSError, subprocess.SubprocessError):
        model = platform.processor()
    return {"cpu": model, "nproc": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "jax": jax.__version__,
            "devices": [str(d) for d in jax.devices()],
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.generic, np.ndarray, jax.Array)):
        return _jsonable(np.asarray(obj).tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip())
    parser.add_argument("--quick", action="store_true", help="fewer rounds, smaller cases")
    parser.add_argument("--only", nargs="+", choices=GROUPS, default=GROUPS)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args(argv)

    started = datetime.datetime.now(datetime.timezone.utc)
    info = machine()
    print(f"fbp benchmarks — {started:%Y-%m-%d %H:%M} UTC, {info['cpu']}, {info['nproc']} CPUs, "
          f"jax {info['jax']}, load average {info['load_average']}", flush=True)
    results, sections, checks = {}, [], []
    t_all = time.perf_counter()
    for name in args.only:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"[{name}] {module.__doc__.strip().splitlines()[0]}", flush=True)
        t0 = time.perf_counter()
        result = module.run(quick=args.quick)
        result["seconds"] = time.perf_counter() - t0
        results[name] = result
        text = module.report(result)
        sections.append(f"## {name}\n\n{text}")
        checks += module.targets(result)
        print(text + f"\n({name}: {result['seconds']:.0f} s)\n", flush=True)

    lines = ["## targets", "", "| target | value | met |", "|---|---|---|"]
    lines += [f"| {c['target']} | {c['value']} | {'yes' if c['met'] else 'NO'} |" for c in checks]
    print("\n".join(lines))
    total = time.perf_counter() - t_all
    command = " ".join(["python -m benchmarks", *(sys.argv[1:] if argv is None else argv)])
    print(f"\nall benchmarks: {total:.0f} s ({command})")

    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"date": started.isoformat(timespec="seconds"), "command": command, "quick": args.quick,
           "machine": info, "seconds": total, "targets": checks, "results": results}
    (args.out / "bench.json").write_text(json.dumps(_jsonable(doc), indent=1) + "\n")
    (args.out / "bench.md").write_text(
        f"# fbp benchmarks\n\n{started:%Y-%m-%d %H:%M} UTC · {info['cpu']} · {info['nproc']} CPUs "
        f"· jax {info['jax']} · `{command}`\n\n" + "\n\n".join(sections) + "\n\n"
        + "\n".join(lines) + "\n")
    print(f"wrote {args.out}/bench.json and {args.out}/bench.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
