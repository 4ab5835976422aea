"""Strict numerics for every test: float64 available, rank promotion an error.

Rank promotion raising means a broadcasting slip in a hand-written rule (a (n,) bias
gradient added to an (m, n) array by accident) fails loudly instead of silently.
"""

import os

import jax
from hypothesis import HealthCheck, settings

from fbp.check import fast_xla_flags

# The suite compiles thousands of small programs that each run once: XLA compiles them for
# speed of compiling (its lowest backend optimisation level, the CPU's loop emitters), set
# before JAX starts its backend.  The pytest-xdist workers inherit the flags from the main
# process, which tries them once; subprocess tests set their own.  Values are unchanged up
# to rounding; every comparison has a tolerance.
fast_xla_flags()

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

settings.register_profile(
    "fbp",
    max_examples=int(os.environ.get("FBP_HYPOTHESIS_EXAMPLES", "10")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("fbp")
