r"""How the checks compile: their programs run once, so they are compiled for speed of compiling.

XLA's optimisation passes cost more to run than the small programs of a check save, and on
the CPU the loop emitters compile a small program in about half the time of the newer fusion
emitters (``python -m fbp.check``: 70 s → 50 s on two cores).  Values are the same up to
rounding.

``fast_compile()``  the options for ``jax.jit(..., compiler_options=...)``: those of ``FAST``
                    this XLA knows (one tiny compile each, once).
``fast_xla_flags()`` the same as ``XLA_FLAGS`` for a whole process, so that JAX's eager
                    primitives compile fast too: only before JAX starts its backend, and only
                    flags a child process has accepted (an unknown flag in ``XLA_FLAGS``
                    aborts the process).  ``python -m fbp.check`` and the test suite call it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax

FAST = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
_known: dict | None = None


def fast_compile() -> dict:
    """The options of ``FAST`` that this XLA accepts per compilation."""
    global _known
    if _known is None:
        known = {}
        for k, v in FAST.items():
            try:
                jax.jit(lambda x: x + 1, compiler_options={k: v}).lower(0.0).compile()
                known[k] = v
            except Exception:  # noqa: BLE001, S112 — an XLA without this option
                continue
        _known = known
    return _known


def _flag(k, v) -> str:
    return f"--{k}={str(v).lower() if isinstance(v, bool) else v}"


def fast_xla_flags(environ=os.environ) -> list[str]:
    """Add ``FAST`` to ``environ["XLA_FLAGS"]`` (those a child process accepts); the flags
    added.  Does nothing once JAX's backend has started (it has read its flags); a flag
    already in ``XLA_FLAGS`` (a parent process added it, or the user chose its value) is
    left as it is."""
    from jax._src import xla_bridge
    if xla_bridge.backends_are_initialized():
        return []
    old = environ.get("XLA_FLAGS", "")
    given = {f.split("=")[0] for f in old.split()}        # a flag set already is left as it is
    flags = [_flag(k, v) for k, v in FAST.items() if f"--{k}" not in given]
    def accepted(fs):
        probe = subprocess.run(
            [sys.executable, "-c", "import jax.numpy as jnp; jnp.zeros(1).block_until_ready()"],
            env={**environ, "XLA_FLAGS": " ".join([old, *fs]).strip(), "JAX_PLATFORMS": "cpu"},
            capture_output=True, timeout=120, check=False)
        return probe.returncode == 0
    added = flags if flags and accepted(flags) else [f for f in flags if accepted([f])]
    if added:
        environ["XLA_FLAGS"] = " ".join([old, *added]).strip()
    return added
