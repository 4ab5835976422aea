"""``python -m fbp.check``: every fbp op through ``check_vjp``, the table, exit 1 on a failure.

A package ``__main__`` (not ``if __name__ == "__main__"`` in a module that ``fbp`` already
imports) so that runpy does not execute the checker's module a second time.  Every program
of the run is compiled once and run once, eager primitives included: before JAX starts its
backend, ``fast_xla_flags`` asks XLA to compile them for speed of compiling.
"""

from fbp.check.compile_options import fast_xla_flags

fast_xla_flags()

from fbp.check.op_table import main  # noqa: E402

raise SystemExit(main())
