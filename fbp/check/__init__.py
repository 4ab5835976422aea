r"""``fbp.check``: the gradient checker.  This face only hands names on.

    report = fbp.check_vjp(my_op, x, W, reference=my_op_in_plain_jnp)
    print(report)
    assert report.ok

One module per concern:

checker.py     ``check_vjp``: the checks, the intents, the re-readings after they ran
args.py        which leaves are differentiated, their labels, dtypes and random draws
reference.py   the default reference: ``f``'s jaxpr with every custom rule but JAX's own replaced
structure.py   each rule's own fwd/bwd called directly: structure, shapes, dtypes by argument
jacobian.py    every row of the Jacobian, or random projections ⟨u, J v⟩
transforms.py  jit, vmap (new axis of draws; per example), rev-over-rev
tasks.py       how checks run (one jit, then alone, then eagerly) and become rows
compile_options.py  the checks compile for speed of compiling; ``fast_xla_flags`` for a
               whole test process
fd.py          finite differences of complex functions; one-sided differences
kinks.py       a disagreement confined to kinks: information, not failure
report.py      ``VJPReport`` and its rows; ``VJPCheckError``
diagnose.py    hints for a failing row (a factor, a transpose, a missing term, ...)
op_table.py    every fbp op with arguments and an independent reference
__main__.py    ``python -m fbp.check``
"""

from fbp.check.checker import ALL_CHECKS, INTENTS, TOLERANCES, check_vjp
from fbp.check.compile_options import fast_xla_flags
from fbp.check.report import VJPCheckError, VJPReport

__all__ = ["ALL_CHECKS", "INTENTS", "TOLERANCES", "VJPCheckError", "VJPReport", "check_vjp",
           "fast_xla_flags"]
