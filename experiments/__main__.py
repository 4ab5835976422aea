"""``python -m experiments [NAME ...] [--quick]``: run experiments, write results/REPORT.md."""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

from experiments import EXPERIMENTS
from experiments._common import RESULTS

INTRO = """# fbp experiments — report

Each section answers one question from the backpropagation tutorial, with the table and
figure that `make experiments` produced on this machine. Run one alone with
`python -m experiments.NAME` (add `--quick` for the small version the tests run).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help=f"subset of {EXPERIMENTS}")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    names = args.names or EXPERIMENTS
    sections, t_all = [INTRO], time.perf_counter()
    for i, name in enumerate(names, 1):
        module = importlib.import_module(f"experiments.{name}")
        print(f"[{i}/{len(names)}] {name}: {module.__doc__.strip().splitlines()[0]}", flush=True)
        t0 = time.perf_counter()
        result = module.run(quick=args.quick, out=args.out)
        seconds = time.perf_counter() - t0
        print(f"[{i}/{len(names)}] {name} done in {seconds:.1f} s", flush=True)
        sections.append(module.report(result) + f"\n\n_({name}: {seconds:.1f} s)_\n")
    total = time.perf_counter() - t_all
    sections.append(f"\n---\nAll experiments: {total:.0f} s wall time.\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "REPORT.md").write_text("\n\n".join(sections))
    print(f"wrote {args.out}/REPORT.md ({total:.0f} s)")


if __name__ == "__main__":
    main()
