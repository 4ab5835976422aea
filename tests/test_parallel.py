"""fbp.data_parallel on N = 2, 4, 8 simulated CPU devices equals the single-device result.

The device count is fixed when JAX starts, so each N runs in one fresh subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` set before JAX is imported; the
worker does every check for that N and prints one JSON line, which the tests read.
The reference is the same ``grad_fn`` jitted on the whole batch on one device.
"""

import fcntl
import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

import fbp
from fbp.parallel import data_parallel, data_parallel_step

WORKER = r'''
import json, sys, warnings
import jax, jax.numpy as jnp, numpy as np, optax
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
import fbp
from fbp.parallel import data_parallel, data_parallel_step, shard_batch

N = int(sys.argv[1])
out = {"device_count": jax.device_count()}


def err(a, b):
    """max |a − b| over every leaf, and the largest |b| (for a relative reading)."""
    a, b = (np.concatenate([np.ravel(np.asarray(t, np.float64)) for t in jax.tree.leaves(u)])
            for u in (a, b))
    return float(np.max(np.abs(a - b))), float(np.max(np.abs(b)))


def grad_fn(p, x, y):
    return fbp.backprop(p, x, y, "tanh", "bce_with_logits")[:2]   # (loss, grads)


opt = optax.sgd(0.5, momentum=0.9)
for dtype in (jnp.float32, jnp.float64):
    name = jnp.dtype(dtype).name
    k = jax.random.split(jax.random.key(0), 3)
    params = fbp.init_mlp(k[0], [3, 16, 16, 1], scheme="xavier", dtype=dtype)
    m = 64
    x = jax.random.normal(k[1], (m, 3), dtype)
    y = (jnp.sin(3 * x[:, :1]) * x[:, 1:2] > 0).astype(dtype)

    # 1. gradients: data-parallel == one device on the whole batch
    dp = data_parallel(grad_fn)
    want = jax.jit(grad_fn)(params, x, y)
    got = dp(params, x, y)
    out[f"grads_{name}"] = err(got, want)
    out[f"replicated_{name}"] = all(
        leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(got))

    # 2. ten SGD (momentum) steps: data_parallel_step == a single-device optax loop
    @jax.jit
    def single_step(p, s, x, y):
        loss, g = grad_fn(p, x, y)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    step = data_parallel_step(grad_fn, opt)
    p1, s1 = params, opt.init(params)
    p2, s2 = params, opt.init(params)
    for _ in range(10):
        p1, s1, l1 = single_step(p1, s1, x, y)
        p2, s2, l2 = step(p2, s2, x, y)
    out[f"sgd10_{name}"] = err(p2, p1)
    out[f"sgd10_state_{name}"] = err(s2, s1)
    out[f"sgd10_moved_{name}"] = err(p1, params)[0]   # the steps did change the params

# float64 only from here: the rest is about composition, not rounding
# 3. a batch placed by shard_batch (the multi-host input path), gradient accumulation with
#    micro-batches inside each device, and fbp.fit with the data-parallel grad_fn
out["sharded_input"] = err(dp(params, shard_batch(x), shard_batch(y)), want)
acc = data_parallel(lambda p, x, y: fbp.accumulate_grads(grad_fn, p, x, y, 2))
out["accumulate"] = err(acc(params, x, y), want)
fit_n = fbp.fit(None, params, (x, y), opt, 10, grad_fn=dp)
out["fit10"] = err(fit_n.params, p1)

# 4. the compiled program holds the gradient all-reduce
out["all_reduce_in_hlo"] = "all-reduce" in dp.lower(params, x, y).compile().as_text()

# 5. an uneven batch and per-example outputs are refused
for key, call in (("uneven_error", lambda: dp(params, x[: 2 * N + 1], y[: 2 * N + 1])),
                  ("per_example_error",
                   lambda: data_parallel(lambda p, x, y: fbp.backprop(p, x, y))(params, x, y))):
    try:
        call()
        out[key] = None
    except ValueError as e:
        out[key] = str(e)

# 6. a masked loss (a mean over the positions selected) over N devices warns; others do not
def masked(p, x, y):
    return fbp.softmax_cross_entropy(fbp.mlp(p, x, "tanh"), jnp.maximum(y, 0), where=y >= 0)


cp = fbp.init_mlp(k[0], [3, 4, 3], dtype=jnp.float64)
for key, loss in (("masked_warnings", masked), ("unmasked_warnings",
                  lambda p, x, y: fbp.softmax_cross_entropy(fbp.mlp(p, x, "tanh"), y))):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data_parallel(jax.value_and_grad(loss))(cp, x, jnp.arange(m) % 3)
    out[key] = [str(w.message) for w in caught]
print("RESULT " + json.dumps(out))
'''


def _env(n: int) -> dict:
    """The suite's own XLA flags (conftest: compiled for speed of compiling), and n devices."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags.strip())


@pytest.fixture(scope="session")
def workers(tmp_path_factory):
    """The three device-count workers' results, computed once for the whole session: the
    first pytest-xdist worker to need them runs the subprocesses under a file lock and
    leaves the results beside the session's temporary directories for the others."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return _run_workers()
    shared = tmp_path_factory.getbasetemp().parent / "data_parallel_workers.json"
    with open(f"{shared}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)      # released when the file closes
        if not shared.exists():
            shared.write_text(json.dumps(_run_workers()))
        results = json.loads(shared.read_text())
    return {int(n): r for n, r in results.items()}


def _run_workers() -> dict:
    """Start the three workers at once (they share the cores), then collect their results."""
    procs = {}
    for n in (2, 4, 8):
        # both sides of every comparison are compiled with the same flags
        procs[n] = subprocess.Popen([sys.executable, "-c", WORKER, str(n)], env=_env(n),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {}
    for n, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stderr[-3000:]
        line = next(s for s in stdout.splitlines() if s.startswith("RESULT "))
        results[n] = json.loads(line[len("RESULT "):])
    return results


TOL = {"float32": 1e-6, "float64": 1e-12}


@pytest.mark.parametrize("n", [2, 4, 8])
def test_data_parallel_equals_single_device(workers, n):
    r = workers[n]
    assert r["device_count"] == n
    for dtype, tol in TOL.items():
        for check in ("grads", "sgd10", "sgd10_state"):
            max_err, scale = r[f"{check}_{dtype}"]
            assert max_err <= tol * max(1.0, scale), (check, dtype, max_err, scale)
        assert r[f"replicated_{dtype}"]
        assert r[f"sgd10_moved_{dtype}"] > 1e-2      # the ten steps were not a no-op


@pytest.mark.parametrize("n", [2, 4, 8])
def test_composes_with_shard_batch_accumulation_and_fit(workers, n):
    r = workers[n]
    for check in ("sharded_input", "accumulate", "fit10"):
        max_err, scale = r[check]
        assert max_err <= 1e-12 * max(1.0, scale), (check, max_err, scale)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_all_reduce_in_hlo_and_input_errors(workers, n):
    r = workers[n]
    assert r["all_reduce_in_hlo"]
    assert r["uneven_error"] is not None
    assert f"batch size {2 * n + 1}" in r["uneven_error"]
    assert f"{n} devices" in r["uneven_error"]
    assert r["per_example_error"] is not None
    assert "deltas[0]" in r["per_example_error"]


@pytest.mark.parametrize("n", [2, 4, 8])
def test_a_masked_loss_over_devices_warns_that_unequal_counts_are_not_the_batch_mean(workers,
                                                                                      n):
    r = workers[n]
    assert r["unmasked_warnings"] == []
    assert len(r["masked_warnings"]) == 1
    message = r["masked_warnings"][0]
    assert f"over the {n} devices of the mesh the result is the mean of {n} such means" in message
    assert "same number of positions" in message


MULTIHOST_WORKER = r"""
import json, sys
import jax
pid, address = int(sys.argv[1]), sys.argv[2]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=address, num_processes=2, process_id=pid)
import jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
import fbp

params = fbp.init_mlp(jax.random.key(0), [3, 8, 1], dtype=jnp.float64)
x = jax.random.normal(jax.random.key(1), (16, 3), jnp.float64)
y = (x[:, :1] > 0).astype(jnp.float64)
grad_fn = lambda p, x, y: fbp.backprop(p, x, y, "tanh")[:2]
half = slice(8 * pid, 8 * (pid + 1))           # this process's half of the global batch
got = fbp.data_parallel(grad_fn)(params, fbp.shard_batch(np.asarray(x[half])),
                                 fbp.shard_batch(np.asarray(y[half])))
want = grad_fn(params, x, y)                    # the whole batch, on this process alone
err = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
          for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
print("RESULT " + json.dumps({"devices": jax.device_count(), "processes": jax.process_count(),
                              "err": err}))
"""


def test_same_code_runs_across_processes_with_jax_distributed():
    """Two processes × 2 CPU devices joined by jax.distributed.initialize (collectives over
    gloo): each feeds half the batch through shard_batch; the all-reduced gradient equals
    the whole-batch gradient in both processes."""
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        address = f"localhost:{sock.getsockname()[1]}"
    procs = [subprocess.Popen([sys.executable, "-c", MULTIHOST_WORKER, str(pid), address],
                              env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for pid in (0, 1)]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
        r = json.loads(next(s for s in stdout.splitlines() if s.startswith("RESULT "))[7:])
        assert (r["devices"], r["processes"]) == (4, 2)
        assert r["err"] <= 1e-12


# ── in this process (one device): the API's own errors ──

def _grad_fn(p, x, y):
    return fbp.backprop(p, x, y, "tanh")[:2]


def _problem():
    params = fbp.init_mlp(jax.random.key(0), [3, 4, 1], dtype=jnp.float64)
    x = jax.random.normal(jax.random.key(1), (8, 3), jnp.float64)
    return params, x, (x[:, :1] > 0).astype(jnp.float64)


def test_one_device_is_the_plain_gradient():
    params, x, y = _problem()
    got = data_parallel(_grad_fn)(params, x, y)
    want = _grad_fn(params, x, y)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("make, error, match", [
    (lambda: data_parallel("grad"), TypeError, "grad_fn must be callable"),
    (lambda: data_parallel(_grad_fn, mesh="cpu"), TypeError, "mesh must be"),
    (lambda: data_parallel(_grad_fn, mesh=Mesh(np.asarray(jax.devices()), ("batch",))),
     ValueError, "axis 'data' is not an axis of the mesh"),
    (lambda: data_parallel_step(_grad_fn, "sgd"), TypeError, "optimizer must be"),
    (lambda: data_parallel(_grad_fn)(*_problem()[:2], jnp.zeros((7, 1))), ValueError,
     "x and y must share the leading"),
    (lambda: data_parallel(_grad_fn)(_problem()[0], jnp.ones((8, 3), jnp.int32),
                                     _problem()[2]), TypeError, "x must have a floating"),
])
def test_bad_input_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_step_one_device_matches_optax():
    params, x, y = _problem()
    opt = optax.adam(0.1)
    p, s, loss = data_parallel_step(_grad_fn, opt)(params, opt.init(params), x, y)
    want_loss, g = _grad_fn(params, x, y)
    u, _ = opt.update(g, opt.init(params), params)
    want = optax.apply_updates(params, u)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-13)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
