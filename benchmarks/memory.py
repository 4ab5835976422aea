"""Residual memory: bytes each fbp rule saves for the backward against autodiff of a reference.

``jax.vjp`` returns the backward as a ``Partial`` whose pytree leaves are exactly the arrays
kept alive for the backward pass (the residuals).  For each op, the fbp function and its
reference (``jax.nn`` / ``optax.losses`` / plain jnp) are linearised at the same point and
their residual bytes compared; leaves that are the inputs themselves (kept alive, not new
memory) are also reported apart.  (In eager ``jax.vjp`` a custom_vjp's ``fwd`` runs as its
own computation, so an input it saves comes back as a copy and counts as new.)  For a whole
training step, the same count is taken for the loss of a 784-1024-1024-10 MLP, and XLA's
compiled ``memory_analysis`` of each jitted step gives the temporary buffer bytes it needs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.scipy.special import xlogy

import fbp
from benchmarks._timing import table
from benchmarks.steps import KINDS, MLP, make_step, problem, reference_affine, reference_loss


def _buffer(a):
    """Where an array's data lives (two views of one buffer compare equal)."""
    try:
        return a.unsafe_buffer_pointer()
    except Exception:  # noqa: BLE001  (constants folded into the closure, e.g. numpy scalars)
        return id(a)


def residuals(f, *args) -> dict:
    """Bytes of the residuals of ``jax.vjp(f, *args)``: all, and those not among ``args``."""
    _, vjp_fn = jax.vjp(f, *args)
    leaves = jax.tree_util.tree_leaves(vjp_fn)
    inputs = {_buffer(a) for a in jax.tree_util.tree_leaves(args)}
    total = sum(leaf.nbytes for leaf in leaves)
    new = sum(leaf.nbytes for leaf in leaves if _buffer(leaf) not in inputs)
    return {"bytes": int(total), "new_bytes": int(new), "leaves": len(leaves),
            "arrays": [f"{leaf.dtype}{list(leaf.shape)}" for leaf in leaves]}


def op_cases(m: int = 256, n: int = 1024, n_in: int = 784, k: int = 10):
    """(name, fbp function, reference, args, saves the output instead of the input)."""
    key = jax.random.split(jax.random.PRNGKey(0), 6)
    z = jax.random.normal(key[0], (m, n))
    logits = jax.random.normal(key[1], (m, k))
    targets = (jax.random.uniform(key[2], (m, k)) > 0.5).astype(jnp.float32)
    probs = jax.nn.sigmoid(logits)
    labels = jax.random.randint(key[3], (m,), 0, k)
    layer = fbp.init_dense(key[4], n_in, n)
    x = jax.random.normal(key[5], (m, n_in))
    ref_bce = lambda p: -jnp.mean(xlogy(targets, p) + xlogy(1 - targets, 1 - p))
    return [
        ("sigmoid", fbp.sigmoid, jax.nn.sigmoid, (z,), True),
        ("tanh", fbp.tanh, jnp.tanh, (z,), True),
        ("relu", fbp.relu, jax.nn.relu, (z,), False),
        ("leaky_relu", fbp.leaky_relu, lambda z: jax.nn.leaky_relu(z, 0.01), (z,), False),
        ("gelu (erf)", fbp.gelu, lambda z: jax.nn.gelu(z, approximate=False), (z,), False),
        ("gelu (tanh)", lambda z: fbp.gelu(z, approximate=True),
         lambda z: jax.nn.gelu(z, approximate=True), (z,), False),
        ("softmax", fbp.softmax, jax.nn.softmax, (z,), True),
        ("dense", fbp.dense, lambda p, x: reference_affine(p.W, p.b, x), (layer, x), False),
        ("bce_with_logits", lambda z: fbp.bce_with_logits(z, targets),
         lambda z: optax.losses.sigmoid_binary_cross_entropy(z, targets).mean(), (logits,), False),
        ("bce", lambda p: fbp.bce(p, targets), ref_bce, (probs,), False),
        ("softmax_cross_entropy", lambda z: fbp.softmax_cross_entropy(z, labels),
         lambda z: optax.losses.softmax_cross_entropy_with_integer_labels(z, labels).mean(),
         (logits,), False),
        ("mse", lambda p: fbp.mse(p, targets), lambda p: jnp.mean((p - targets) ** 2),
         (probs,), False),
    ]


def step_memory(sizes=(784, 1024, 1024, 10), m: int = 256) -> dict:
    params, x, y = problem(sizes, m, **MLP)
    out = {"net": "-".join(map(str, sizes)), "batch": m}
    out["residuals"] = {
        "fbp": residuals(lambda p: fbp.mlp_loss(p, x, y, MLP["activation"], MLP["loss"]), params),
        "jax.grad": residuals(lambda p: reference_loss(p, x, y, **MLP), params),
    }
    optimizer = optax.sgd(0.01)
    compiled = {}
    for kind in KINDS:
        step = make_step(kind, optimizer=optimizer, **MLP)
        ma = step.lower(params, optimizer.init(params), x, y).compile().memory_analysis()
        compiled[kind] = {"temp_bytes": int(ma.temp_size_in_bytes),
                          "argument_bytes": int(ma.argument_size_in_bytes),
                          "output_bytes": int(ma.output_size_in_bytes),
                          "alias_bytes": int(ma.alias_size_in_bytes)}
    out["compiled"] = compiled
    return out


def run(quick: bool = False) -> dict:
    ops = []
    for name, f, ref, args, saves_output in op_cases(m=64 if quick else 256):
        ops.append({"op": name, "saves_output": saves_output,
                    "fbp": residuals(f, *args), "autodiff": residuals(ref, *args)})
    return {"ops": ops, "step": step_memory(m=64 if quick else 256)}


def _mb(b: int) -> str:
    return f"{b / 2**20:.3f}"


def report(r: dict) -> str:
    rows = []
    for o in r["ops"]:
        f, a = o["fbp"], o["autodiff"]
        rows.append([o["op"], _mb(f["bytes"]), _mb(a["bytes"]),
                     f"{f['bytes'] / a['bytes']:.2f}", _mb(f["new_bytes"]), _mb(a["new_bytes"]),
                     " ".join(f["arrays"]), " ".join(a["arrays"])])
    s = r["step"]
    res, comp = s["residuals"], s["compiled"]
    step_rows = [[k, _mb(res[k]["bytes"]) if k in res else "—",
                  _mb(res[k]["new_bytes"]) if k in res else "—", _mb(comp[k]["temp_bytes"])]
                 for k in KINDS]
    return "\n".join([
        "Residuals per op (MiB; activations on 256×1024, dense 784→1024 at batch 256, "
        "losses on 256×10). 'new' leaves out residuals that are the inputs themselves.",
        "",
        table(["op", "fbp", "autodiff", "fbp/autodiff", "fbp new", "autodiff new",
               "fbp saves", "autodiff saves"], rows),
        "",
        f"Per training step, {s['net']} batch {s['batch']} (MiB): residuals of the loss's "
        "vjp w.r.t. params, and XLA temp buffers of the jitted donated step "
        "(backprop has no vjp: it is not autodiff).",
        "",
        table(["step", "vjp residuals", "new", "XLA temp"], step_rows),
    ])


def targets(r: dict) -> list[dict]:
    out = []
    for o in r["ops"]:
        f, a = o["fbp"]["bytes"], o["autodiff"]["bytes"]
        strict = o["saves_output"]
        met = f < a if strict else f <= a
        out.append({"target": f"residual bytes {o['op']}: fbp {'<' if strict else '≤'} autodiff",
                    "value": f"{f} vs {a}", "met": met})
    return out
