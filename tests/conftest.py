"""Strict numerics for every test: float64 available, rank promotion an error.

Rank promotion raising means a broadcasting slip in a hand-written rule (a (n,) bias
gradient added to an (m, n) array by accident) fails loudly instead of silently.
"""

import os

# The suite compiles hundreds of small programs that each run once: compile them at XLA's
# lowest backend optimisation level (set before JAX starts its backend; subprocess tests set
# their own flags).  Values are unchanged up to rounding; every comparison has a tolerance.
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()

import jax  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

settings.register_profile(
    "fbp",
    max_examples=int(os.environ.get("FBP_HYPOTHESIS_EXAMPLES", "10")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("fbp")
