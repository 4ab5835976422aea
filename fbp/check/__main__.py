"""``python -m fbp.check``: every fbp op through ``check_vjp``, the table, exit 1 on a failure.

A package ``__main__`` (not ``if __name__ == "__main__"`` in a module that ``fbp`` already
imports) so that runpy does not execute the checker's module a second time.  Every program
of the run is compiled once and run once, eager primitives included: before JAX starts its
backend, ``fast_xla_flags`` asks XLA to compile them for speed of compiling.  The flags are
read first, so ``--help`` and a mistyped flag answer at once, before JAX is imported.
"""

import argparse

parser = argparse.ArgumentParser(
    prog="python -m fbp.check",
    description="Check every fbp op's hand-written VJP with fbp.check_vjp (structure, "
                "autodiff, full Jacobian, finite differences, jit, vmap, rev-over-rev) and "
                "print one line per op.  Exit status: 0 if every op passes, 1 if any fails.")
parser.add_argument("--float32", action="store_true",
                    help="check in float32 (default: float64)")
parser.add_argument("--verbose", action="store_true",
                    help="print every op's full report, not only the failing ones")
flags = parser.parse_args()

from fbp.check.compile_options import fast_xla_flags  # noqa: E402

fast_xla_flags()

from fbp.check.op_table import main  # noqa: E402

raise SystemExit(main([f"--{k}" for k, v in vars(flags).items() if v]))
