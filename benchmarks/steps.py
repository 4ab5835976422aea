"""Training step: fbp's hand-written rules against ``jax.grad`` of a reference network.

Three candidates run the same step — forward, backward, ``optax.sgd`` update — jitted, with
params and optimizer state donated:

* ``fbp``       ``jax.value_and_grad(fbp.mlp_loss)``: JAX chains fbp's custom_vjp rules;
* ``backprop``  ``fbp.backprop``: the tutorial's δ recursion written out, no autodiff;
* ``jax.grad``  ``jax.value_and_grad`` of the same network built from ``jax.nn`` and
                ``optax.losses`` (JAX derives every rule itself).

Achieved GFLOP/s counts the real matmul FLOPs (``step_flops``) and is held against the peak of
``jnp.dot`` on 2048² float32 matrices, timed in the same rounds.  If PyTorch is importable the
same MLP step runs in PyTorch eager as well.
"""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import optax

import fbp
from benchmarks._timing import (
    auto_repeat,
    compile_seconds,
    compile_stats,
    dot_signatures,
    fmt_time,
    paired,
    ratio_stats,
    table,
)

# ── the reference network: only jax.nn, optax.losses and plain jnp ──

REF_ACTIVATIONS = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh}
REF_LOSSES = {
    "softmax_cross_entropy":
        lambda z, y: optax.losses.softmax_cross_entropy_with_integer_labels(z, y).mean(),
    "bce_with_logits": lambda z, y: optax.losses.sigmoid_binary_cross_entropy(z, y).mean(),
    "mse": lambda z, y: jnp.mean((z - y) ** 2),
}


def reference_affine(W, b, a):
    """``a Wᵀ + b`` in plain jnp (the bias broadcast explicitly over the batch dims)."""
    z = a @ W.T
    return z + b.reshape((1,) * (z.ndim - 1) + b.shape)


def reference_mlp(params, x, activation: str):
    """The MLP of ``fbp.mlp`` written with plain jnp: ``a = σ(a Wᵀ + b)``, last layer linear."""
    act = REF_ACTIVATIONS[activation]
    a = x
    for W, b in params[:-1]:
        a = act(reference_affine(W, b, a))
    W, b = params[-1]
    return reference_affine(W, b, a)


def reference_loss(params, x, y, activation: str, loss: str):
    return REF_LOSSES[loss](reference_mlp(params, x, activation), y)


def value_and_grad_fn(kind: str, activation: str, loss: str):
    """``(params, x, y) -> (loss, grads)`` for one of ``KINDS``."""
    if kind == "fbp":
        return lambda p, x, y: jax.value_and_grad(fbp.mlp_loss)(p, x, y, activation, loss)
    if kind == "backprop":
        def vg(p, x, y):
            out = fbp.backprop(p, x, y, activation, loss)
            return out.loss, out.grads
        return vg
    if kind == "jax.grad":
        return lambda p, x, y: jax.value_and_grad(reference_loss)(p, x, y, activation, loss)
    if kind == BODY:  # a diagnostic: fbp's layer rules under autodiff of the reference's loss
        return lambda p, x, y: jax.value_and_grad(
            lambda p, x, y: REF_LOSSES[loss](fbp.mlp(p, x, activation), y))(p, x, y)
    raise ValueError(f"kind must be one of {KINDS + (BODY,)}; got {kind!r}.")


KINDS = ("fbp", "backprop", "jax.grad")
BODY = "fbp layers, autodiff loss"


def step_fn(kind: str, activation: str, loss: str, optimizer):
    """The un-jitted training step ``(params, opt_state, x, y) -> (params, opt_state, loss)``."""
    vg = value_and_grad_fn(kind, activation, loss)

    def step(params, opt_state, x, y):
        value, grads = vg(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step


def make_step(kind: str, activation: str, loss: str, optimizer, *, wrap=None):
    """``step_fn`` jitted with params and optimizer state donated (updated in place).

    ``wrap`` (e.g. ``chex.assert_max_traces(n=1)``) decorates the step before ``jax.jit``.
    """
    fn = step_fn(kind, activation, loss, optimizer)
    if wrap is not None:
        fn = wrap(fn)
    return jax.jit(fn, donate_argnums=(0, 1))


def step_flops(sizes, m: int) -> int:
    """Matmul FLOPs of one training step: forward 2·m·n_in·n_out per layer, backward twice
    that (W̄ = δᵀA and x̄ = δW) except the first layer, whose x̄ is not needed."""
    fwd = [2 * m * n_in * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)]
    return 3 * sum(fwd) - fwd[0]


def problem(sizes, m: int, activation: str, loss: str, dtype=jnp.float32, seed: int = 0):
    """Params (``fbp.init_mlp``), inputs and targets for one case."""
    k_p, k_x, k_y = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = fbp.init_mlp(k_p, list(sizes), dtype=dtype)
    x = jax.random.normal(k_x, (m, sizes[0]), dtype)
    if loss == "softmax_cross_entropy":
        y = jax.random.randint(k_y, (m,), 0, sizes[-1])
    else:
        y = (jax.random.uniform(k_y, (m, sizes[-1])) > 0.5).astype(dtype)
    return params, x, y


def stateful(step, params, opt_state, x, y):
    """A zero-argument function that runs one donated step and keeps the new state."""
    state = [jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, opt_state)]

    def run():
        state[0], state[1], value = step(state[0], state[1], x, y)
        return value

    return run


def dot_peak_fn(n: int = 2048):
    a = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(2), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    return (lambda: dot(a, b)), 2 * n**3, compile_seconds(dot, a, b)


# ── the cases ──

MLP = dict(activation="relu", loss="softmax_cross_entropy")
XOR = dict(activation="sigmoid", loss="bce_with_logits")
CASES = [  # (sizes, batch, kind of problem, timed rounds, warm-up rounds)
    ((2, 4, 1), 4, XOR, 41, 2),
    ((2, 4, 1), 1024, XOR, 41, 2),
    ((784, 1024, 1024, 10), 256, MLP, 9, 2),
    ((784, 1024, 1024, 10), 1024, MLP, 7, 2),
    ((784, 4096, 4096, 10), 256, MLP, 5, 1),
    ((784, 4096, 4096, 10), 1024, MLP, 3, 1),   # ~1.3 s per step on 2 idle cores
]
PEAK_CASE = ((784, 1024, 1024, 10), 1024)


def run_case(sizes, m, spec, rounds, *, with_peak=False, warmup=2, lr=0.01):
    params, x, y = problem(sizes, m, **spec)
    optimizer = optax.sgd(lr)
    opt_state = optimizer.init(params)
    fns, compile_s, kernels, dots = {}, {}, {}, {}
    for kind in KINDS:
        step = make_step(kind, spec["activation"], spec["loss"], optimizer)
        compile_s[kind], kernels[kind] = compile_stats(step, params, opt_state, x, y)
        dots[kind] = dot_signatures(step, params, opt_state, x, y)
        fns[kind] = stateful(step, params, opt_state, x, y)
    # A/A control: jax.grad's step jitted a second time (the same program) in the same rounds;
    # its ratio to the first is the noise floor a ratio of this row can be read against.
    fns["jax.grad again"] = stateful(make_step("jax.grad", spec["activation"], spec["loss"],
                                               optimizer), params, opt_state, x, y)
    # which part of fbp's step a gap is in: its layers' rules, or its loss head's
    fns[BODY] = stateful(make_step(BODY, spec["activation"], spec["loss"], optimizer),
                         params, opt_state, x, y)
    small = max(sizes) <= 16
    if small:  # the dispatch floor: a jitted step with the same arguments that does nothing
        noop = jax.jit(lambda p, s, x, y: (p, s, jnp.sum(x)), donate_argnums=(0, 1))
        fns["floor"] = stateful(noop, params, opt_state, x, y)
    peak_flops = None
    if with_peak:
        fns["jnp.dot"], peak_flops, compile_s["jnp.dot"] = dot_peak_fn()
    repeat = auto_repeat(fns["jax.grad"], 0.003)
    times = paired(fns, rounds=rounds, warmup=warmup, repeat=repeat)
    flops = step_flops(sizes, m)
    row = {
        "net": "-".join(map(str, sizes)), "batch": m, **spec, "rounds": rounds,
        "calls_per_timing": repeat, "flops": flops, "compile_s": compile_s, "kernels": kernels,
        "dots": dots["fbp"], "same_dots_as_grad": dots["fbp"] == dots["jax.grad"],
        "median_s": {k: float(sorted(v)[len(v) // 2]) for k, v in times.items()},
        "times_s": times,
        "fbp_vs_grad": ratio_stats(times["fbp"], times["jax.grad"]),
        "backprop_vs_grad": ratio_stats(times["backprop"], times["jax.grad"]),
        "aa_vs_grad": ratio_stats(times["jax.grad again"], times["jax.grad"]),
        "body_vs_grad": ratio_stats(times[BODY], times["jax.grad"]),
        "gflops": {k: flops / row_median / 1e9 for k, row_median in
                   ((k, sorted(times[k])[len(times[k]) // 2]) for k in KINDS)},
    }
    if small:
        floor = row["median_s"]["floor"]
        row["above_floor_s"] = {k: row["median_s"][k] - floor for k in KINDS}
        above = {k: [t - f for t, f in zip(times[k], times["floor"], strict=True)] for k in KINDS}
        row["fbp_vs_grad_above_floor"] = ratio_stats(above["fbp"], above["jax.grad"])
    if with_peak:
        row["peak_gflops"] = peak_flops / row["median_s"]["jnp.dot"] / 1e9
        row["peak_fraction"] = {
            k: ratio_stats([flops / t for t in times[k]],
                           [peak_flops / t for t in times["jnp.dot"]])
            for k in KINDS
        }
    return row


def torch_case(sizes, m, rounds):
    """The same ReLU MLP step in PyTorch eager, paired with the jitted fbp step."""
    import torch  # noqa: PLC0415  (optional; not a dependency)

    params, x, y = problem(sizes, m, **MLP)
    Ws = [torch.tensor(jax.device_get(W), requires_grad=True) for W, _ in params]
    bs = [torch.tensor(jax.device_get(b), requires_grad=True) for _, b in params]
    xt = torch.tensor(jax.device_get(x))
    yt = torch.tensor(jax.device_get(y)).long()
    opt = torch.optim.SGD(Ws + bs, lr=0.01)

    def torch_step():
        opt.zero_grad()
        a = xt
        for W, b in zip(Ws[:-1], bs[:-1], strict=True):
            a = torch.relu(a @ W.T + b)
        loss = torch.nn.functional.cross_entropy(a @ Ws[-1].T + bs[-1], yt)
        loss.backward()
        opt.step()
        return loss.item()

    optimizer = optax.sgd(0.01)
    step = make_step("fbp", optimizer=optimizer, **MLP)
    fns = {"torch": torch_step, "fbp": stateful(step, params, optimizer.init(params), x, y)}
    times = paired(fns, rounds=rounds, warmup=2)
    return {"net": "-".join(map(str, sizes)), "batch": m,
            "torch_threads": torch.get_num_threads(),
            "torch_vs_fbp": ratio_stats(times["torch"], times["fbp"]), "times_s": times}


def run(quick: bool = False) -> dict:
    cases = [c for c in CASES if not quick or max(c[0]) <= 1024]
    rows = []
    for sizes, m, spec, rounds, warmup in cases:
        with_peak = (tuple(sizes), m) == PEAK_CASE
        if quick:
            rounds, warmup = 3, 1
        print(f"  step {'-'.join(map(str, sizes))} batch {m} …", flush=True)
        rows.append(run_case(sizes, m, spec, rounds, with_peak=with_peak, warmup=warmup))
    result = {"rows": rows}
    if importlib.util.find_spec("torch") is None:
        result["torch"] = "skipped: PyTorch is not importable (it is not a dependency of fbp)"
    else:
        sizes, m = PEAK_CASE
        result["torch"] = torch_case(sizes, m, rounds=3 if quick else 7)
    return result


def _ratio(s: dict) -> str:
    return f"{s['ratio_median']:.3f} [{s['ratio_q1']:.2f}–{s['ratio_q3']:.2f}]"


def report(result: dict) -> str:
    rows = []
    for r in result["rows"]:
        med, c = r["median_s"], r["compile_s"]
        rows.append([
            r["net"], r["batch"], fmt_time(med["fbp"]), fmt_time(med["backprop"]),
            fmt_time(med["jax.grad"]), _ratio(r["fbp_vs_grad"]), _ratio(r["backprop_vs_grad"]),
            _ratio(r["aa_vs_grad"]) if "aa_vs_grad" in r else "–",
            f"{r['fbp_vs_grad']['ratio_of_fastest']:.3f}",
            f"{r['gflops']['fbp']:.1f}",
            " / ".join(f"{c[k]:.2f}" for k in KINDS),
            " / ".join(str(r["kernels"][k]) for k in KINDS),
        ])
    lines = [
        "Training step (forward + backward + optax.sgd), jitted, params donated. Ratio: "
        "median of per-round ratios [IQR]; < 1 means fbp is faster. A/A: jax.grad's step "
        "jitted a second time, in the same rounds, against the first: the same program, so "
        "its spread is the noise a ratio of that row can be read against.",
        "",
        table(["net", "batch", "fbp", "backprop", "jax.grad", "fbp / jax.grad",
               "backprop / jax.grad", "A/A", "fbp / jax.grad, fastest rounds", "fbp GFLOP/s",
               "compile s (fbp/bp/grad)", "XLA kernels (fbp/bp/grad)"], rows),
    ]
    same = [f"{r['net']}/{r['batch']}: {'yes' if r['same_dots_as_grad'] else 'NO'}"
            for r in result["rows"] if "same_dots_as_grad" in r]
    lines += ["", "fbp's step compiles to the same dots as jax.grad's (result shapes, layouts, "
              "dimension numbers; so no transposed operand copies): " + ", ".join(same) + "."]
    body = [f"{r['net']}/{r['batch']}: {_ratio(r['body_vs_grad'])}"
            for r in result["rows"] if "body_vs_grad" in r]
    if body:
        lines += ["", "Where a gap sits: fbp's layer rules with autodiff of the reference's loss "
                  "(optax's, not fbp's loss rule), against jax.grad, same rounds: "
                  + ", ".join(body) + "."]
    for r in result["rows"]:
        if "above_floor_s" in r:
            a = r["above_floor_s"]
            lines += ["", f"{r['net']} batch {r['batch']}: a jitted no-op step with the same "
                      f"arguments takes {fmt_time(r['median_s']['floor'])} (dispatch floor); "
                      f"above it fbp takes {fmt_time(a['fbp'])}, backprop "
                      f"{fmt_time(a['backprop'])}, jax.grad {fmt_time(a['jax.grad'])} "
                      f"(fbp / jax.grad above the floor, per round: "
                      f"{_ratio(r['fbp_vs_grad_above_floor'])})."]
    peak = [r for r in result["rows"] if "peak_gflops" in r]
    if peak:
        r = peak[0]
        lines += ["", f"Matmul peak: jnp.dot 2048² float32 = {r['peak_gflops']:.1f} GFLOP/s "
                  f"(same rounds). {r['net']} batch {r['batch']} "
                  f"({r['flops'] / 1e9:.2f} GFLOP per step): " + ", ".join(
                      f"{k} {r['peak_fraction'][k]['ratio_median']:.0%} of peak "
                      f"[{r['peak_fraction'][k]['ratio_q1']:.0%}–"
                      f"{r['peak_fraction'][k]['ratio_q3']:.0%}]" for k in KINDS)]
    t = result["torch"]
    if isinstance(t, str):
        lines += ["", f"PyTorch eager: {t}."]
    else:
        lines += ["", f"PyTorch eager {t['net']} batch {t['batch']}: torch / fbp = "
                  f"{_ratio(t['torch_vs_fbp'])} ({t['torch_threads']} threads)."]
    return "\n".join(lines)


def targets(result: dict) -> list[dict]:
    out = []
    for r in result["rows"]:
        bound = 0.9 if r["net"] == "2-4-1" else 1.0
        for key, name in (("fbp_vs_grad", "fbp"), ("backprop_vs_grad", "backprop")):
            v = r[key]["ratio_median"]
            out.append({"target": f"{name} / jax.grad step ≤ {bound:.2f}, {r['net']} "
                                  f"batch {r['batch']}", "value": round(v, 3), "met": v <= bound})
        if "same_dots_as_grad" in r:
            out.append({"target": f"fbp step holds jax.grad's dots (shapes, layouts, dimension "
                                  f"numbers), {r['net']} batch {r['batch']}",
                        "value": f"{len(r['dots'])} dots", "met": r["same_dots_as_grad"]})
        if "peak_fraction" in r:
            v = r["peak_fraction"]["fbp"]["ratio_median"]
            out.append({"target": f"fbp step ≥ 85% of jnp.dot peak, {r['net']} batch "
                                  f"{r['batch']}", "value": round(v, 3), "met": v >= 0.85})
    return out
