"""``python -m fbp.check``: every fbp op through ``check_vjp``, the table, exit 1 on a failure.

A package ``__main__`` (not ``if __name__ == "__main__"`` in a module that ``fbp`` already
imports) so that runpy does not execute the checker's module a second time.
"""

from fbp.check.op_table import main

raise SystemExit(main())
