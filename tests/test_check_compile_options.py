"""The checks compile for speed of compiling, with only the options this XLA accepts."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp

from fbp.check import compile_options

PROBE = r"""
import json, os
import fbp.check.compile_options as co
fast = co.FAST
co.FAST = {**fast, "xla_no_such_option": 1}        # an option no XLA has
env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
added = co.fast_xla_flags(env)
again = co.fast_xla_flags(env)                       # the flags are there already
co.FAST = fast
mine = dict(env, XLA_FLAGS="--xla_backend_optimization_level=2")   # a value the user chose
kept = co.fast_xla_flags(mine)
import jax.numpy as jnp
jnp.zeros(1).block_until_ready()                     # this process's backend starts
late = co.fast_xla_flags({})                         # too late: nothing is added
print(json.dumps({"added": added, "flags": env["XLA_FLAGS"], "again": again, "late": late,
                  "kept": kept, "mine": mine["XLA_FLAGS"]}))
"""


def test_xla_flags_are_added_only_when_a_child_process_accepts_them():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    r = json.loads(out.splitlines()[-1])
    assert r["added"] == ["--xla_backend_optimization_level=0",
                          "--xla_cpu_use_fusion_emitters=false"]
    assert r["flags"].split() == r["added"]
    assert r["again"] == [] and r["late"] == []
    assert r["kept"] == ["--xla_cpu_use_fusion_emitters=false"]
    assert r["mine"].split() == ["--xla_backend_optimization_level=2", *r["kept"]]


def test_per_compile_options_are_those_xla_knows_and_values_are_unchanged(monkeypatch):
    monkeypatch.setattr(compile_options, "_known", None)
    monkeypatch.setattr(compile_options, "FAST",
                        {**compile_options.FAST, "xla_no_such_option": 1})
    known = compile_options.fast_compile()
    assert known == {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
    x = jnp.linspace(-3.0, 3.0, 101)
    f = lambda x: jnp.tanh(x) * jnp.exp(-x ** 2) + jnp.log1p(x ** 2)   # noqa: E731
    fast = jax.jit(f, compiler_options=known)(x)
    assert jnp.max(jnp.abs(fast - jax.jit(f)(x))) <= 1e-15
