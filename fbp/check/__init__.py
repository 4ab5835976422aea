r"""``fbp.check``: the gradient checker.  This face only hands names on.

    report = fbp.check_vjp(my_op, x, W, reference=my_op_in_plain_jnp)
    print(report)
    assert report.ok

One module per concern:

checker.py     ``check_vjp``: the checks, run as traced tasks, and their comparisons
args.py        which arguments are differentiated, their labels, dtypes and random draws
reference.py   the default reference: ``f`` with every custom rule switched off
structure.py   each rule's own fwd/bwd called directly: structure, shapes, dtypes by argument
report.py      ``VJPReport`` and its rows; ``VJPCheckError``
diagnose.py    hints for a failing row (a factor, a transpose, a missing term, ...)
op_table.py    every fbp op with arguments and an independent reference
__main__.py    ``python -m fbp.check``
"""

from fbp.check.checker import ALL_CHECKS, TOLERANCES, check_vjp
from fbp.check.report import VJPCheckError, VJPReport

__all__ = ["ALL_CHECKS", "TOLERANCES", "VJPCheckError", "VJPReport", "check_vjp"]
