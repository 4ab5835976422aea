"""Does backprop in pieces (one hand-written gradient per elementary step) give the fused rule?

Karpathy's "backprop ninja" exercise, for the two fused rules fbp has: the softmax
cross-entropy and batch normalisation (training mode).  Each forward is broken into its
elementary steps, and each step's gradient is written by hand, in reverse:

softmax CE  m = max z (the shift) · s = z − m · e = exp s · S = Σ e · l = log S ·
            logp = s − l · pick p = logp[label] · L = −mean p
batch norm  μ = mean x · c = x − μ (centre) · v = mean c² · r = 1/√(v + ε) (1/σ) ·
            x̂ = c r · y = γ x̂ + β,  with L = Σ ȳ ⊙ y for a fixed random ȳ

Every step's gradient is compared with ``jax.grad``'s cotangent of the same intermediate (read
by adding a zero "probe" to each intermediate and differentiating with respect to the probes)
— exact (bitwise) / close (≤ 1e-12 float64, ≤ 1e-5 float32, relative) / max |Δ| — and the
input's gradient with the fused rule (fbp's ``softmax_cross_entropy`` and ``batch_norm`` rules,
run through ``jax.vjp``).  The gradient through the max shift comes out zero (Σⱼ s̄ⱼ = 0 up to
rounding): the max is there for the exp's range, not for the value; and the input's gradient
is the sum of the paths that reach it (z̄ = s̄ + m̄·onehot(argmax); x̄ = c̄ + μ̄/m), which equals
the fused closed form.  The figure shows where the pieces and the fused rule differ in rounding
(float32, in units of the last place of the fused result's largest entry).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import fbp
from experiments._common import RESULTS, cli, save, table

EPS = 1e-5
CLOSE = {"float64": 1e-12, "float32": 1e-5}


# ── softmax cross-entropy in pieces ──

def sce_forward(z, labels, probe):
    """The steps, each intermediate t returned as t + probe[t] (probes are zeros)."""
    t = {}
    t["m"] = jnp.max(z, axis=1, keepdims=True) + probe["m"]
    t["s"] = z - t["m"] + probe["s"]
    t["e"] = jnp.exp(t["s"]) + probe["e"]
    t["S"] = jnp.sum(t["e"], axis=1, keepdims=True) + probe["S"]
    t["l"] = jnp.log(t["S"]) + probe["l"]
    t["logp"] = t["s"] - t["l"] + probe["logp"]
    t["p"] = jnp.take_along_axis(t["logp"], labels[:, None], axis=1) + probe["p"]
    return -jnp.mean(t["p"]), t


def sce_backward(z, labels, t):
    """Each step's gradient by hand, last step first (d[name] is the cotangent of name)."""
    n = z.shape[0]
    d = {}
    d["p"] = jnp.full(t["p"].shape, -1.0 / n, z.dtype)                      # L = −mean p
    d["logp"] = jax.nn.one_hot(labels, z.shape[1], dtype=z.dtype) * d["p"]  # pick: scatter
    d["l"] = -jnp.sum(d["logp"], axis=1, keepdims=True)                     # logp = s − l
    d["S"] = d["l"] / t["S"]                                                # l = log S
    d["e"] = jnp.broadcast_to(d["S"], t["e"].shape)                         # S = Σ e
    d["s"] = d["logp"] + d["e"] * t["e"]               # s feeds logp and e: sum over paths
    d["m"] = -jnp.sum(d["s"], axis=1, keepdims=True)                        # s = z − m
    at_max = jax.nn.one_hot(jnp.argmax(z, axis=1), z.shape[1], dtype=z.dtype)
    d["z"] = d["s"] + at_max * d["m"]                  # z feeds s and the max: the two paths
    return d


def sce_fused(z, labels):
    return jax.vjp(lambda z: fbp.softmax_cross_entropy(z, labels), z)[1](jnp.ones((), z.dtype))[0]


# ── batch norm in pieces ──

def bn_forward(x, gamma, beta, y_bar, probe):
    t = {}
    t["μ"] = jnp.mean(x, axis=0, keepdims=True) + probe["μ"]
    t["c"] = x - t["μ"] + probe["c"]
    t["v"] = jnp.mean(t["c"] ** 2, axis=0, keepdims=True) + probe["v"]
    t["r"] = 1 / jnp.sqrt(t["v"] + EPS) + probe["r"]
    t["x̂"] = t["c"] * t["r"] + probe["x̂"]
    t["y"] = gamma[None] * t["x̂"] + beta[None] + probe["y"]
    return jnp.sum(y_bar * t["y"]), t


def bn_backward(x, gamma, y_bar, t):
    m = x.shape[0]
    d = {"y": y_bar}
    d["γ"] = jnp.sum(d["y"] * t["x̂"], axis=0)                                # y = γ x̂ + β
    d["β"] = jnp.sum(d["y"], axis=0)
    d["x̂"] = d["y"] * gamma[None]
    d["r"] = jnp.sum(d["x̂"] * t["c"], axis=0, keepdims=True)                 # x̂ = c r
    d["v"] = -0.5 * d["r"] * t["r"] ** 3                          # r = (v + ε)^{−½}
    d["c"] = d["x̂"] * t["r"] + d["v"] * 2 * t["c"] / m            # c feeds x̂ and v
    d["μ"] = -jnp.sum(d["c"], axis=0, keepdims=True)                          # c = x − μ
    d["x"] = d["c"] + d["μ"] / m                                  # x feeds c and μ
    return d


def bn_fused(x, gamma, beta, y_bar):
    params = fbp.BatchNormParams(gamma, beta)
    vjp = jax.vjp(lambda p, x: fbp.batch_norm(p, x, eps=EPS)[0], params, x)[1]
    p_bar, x_bar = vjp(y_bar)
    return {"x": x_bar, "γ": p_bar.gamma, "β": p_bar.beta}


# ── comparisons ──

def _zero_probe(forward, *args):
    shapes = jax.eval_shape(lambda *a: forward(*a, _Free())[1], *args)
    return {k: jnp.zeros(s.shape, s.dtype) for k, s in shapes.items()}


class _Free(dict):
    """A probe that is 0 for every name (to learn the intermediates' shapes)."""

    def __missing__(self, key):
        return 0.0


def _compare(mine, ref, dtype_name, floor: float = 0.0):
    """exact / close / max |Δ|; close is relative to max |ref| or ``floor`` (the scale of the
    input's gradient), whichever is larger, so that a gradient that is zero up to rounding
    (m̄) is judged against the gradients around it."""
    mine, ref = np.asarray(mine, np.float64), np.asarray(ref, np.float64)
    diff = float(np.max(np.abs(mine - ref)))
    scale = max(float(np.max(np.abs(ref))), floor)
    return {"exact": bool(np.array_equal(mine, ref)),
            "close": diff <= CLOSE[dtype_name] * max(scale, 1e-30) or diff == 0.0,
            "max_diff": diff, "scale": scale}


def sce_case(key, n, k, dtype):
    z = (3 * jax.random.normal(key, (n, k))).astype(dtype)
    labels = jax.random.randint(jax.random.fold_in(key, 1), (n,), 0, k)
    probe = _zero_probe(lambda z, labels, p: sce_forward(z, labels, p), z, labels)
    (loss, t), grads = jax.jit(jax.value_and_grad(sce_forward, argnums=(0, 2), has_aux=True))(
        z, labels, probe)
    z_ref, probe_ref = grads
    d = sce_backward(z, labels, t)
    return d, {**probe_ref, "z": z_ref}, {"z": sce_fused(z, labels)}, t


def bn_case(key, n, k, dtype):
    kx, kg, kb, ky = jax.random.split(key, 4)
    x = (2 + 3 * jax.random.normal(kx, (n, k))).astype(dtype)
    gamma = (1 + 0.3 * jax.random.normal(kg, (k,))).astype(dtype)
    beta = (0.1 * jax.random.normal(kb, (k,))).astype(dtype)
    y_bar = jax.random.normal(ky, (n, k)).astype(dtype)
    probe = _zero_probe(lambda x, g, b, w, p: bn_forward(x, g, b, w, p), x, gamma, beta, y_bar)
    (_, t), grads = jax.jit(jax.value_and_grad(bn_forward, argnums=(0, 1, 2, 4), has_aux=True))(
        x, gamma, beta, y_bar, probe)
    x_ref, g_ref, b_ref, probe_ref = grads
    d = bn_backward(x, gamma, y_bar, t)
    return d, {**probe_ref, "x": x_ref, "γ": g_ref, "β": b_ref}, bn_fused(x, gamma, beta, y_bar), t


STEPS = {"softmax_cross_entropy": ["p", "logp", "l", "S", "e", "s", "m", "z"],
         "batch_norm": ["y", "γ", "β", "x̂", "r", "v", "c", "μ", "x"]}
CASES = {"softmax_cross_entropy": sce_case, "batch_norm": bn_case}
INPUT = {"softmax_cross_entropy": "z", "batch_norm": "x"}


def run(quick: bool = False, out: Path = RESULTS) -> dict:
    n, k = (16, 10) if quick else (256, 64)
    key = jax.random.PRNGKey(0)
    result = {"shape": [n, k], "losses": {}}
    ulps = {}
    with jax.enable_x64(True):
        for loss, case in CASES.items():
            rows = []
            by_dtype = {}
            for dtype in (jnp.float64, jnp.float32):
                dname = jnp.dtype(dtype).name
                d, ref, fused, t = case(key, n, k, dtype)
                by_dtype[dname] = (d, ref, fused)
                if dname == "float64":          # the path that should carry nothing
                    zero_path = (d["m"] if loss == "softmax_cross_entropy"
                                 else 2 * d["v"] * jnp.sum(t["c"], axis=0, keepdims=True) / n)
                    zero_path = float(jnp.max(jnp.abs(zero_path)))
            for step in STEPS[loss]:
                row = {"step": step}
                for dname, (d, ref, fused) in by_dtype.items():
                    floor = float(jnp.max(jnp.abs(ref[INPUT[loss]])))
                    row[dname] = _compare(d[step], ref[step], dname, floor)
                    if step in fused:
                        row[f"fused_{dname}"] = _compare(d[step], fused[step], dname)
                        row[f"fused_vs_jax_{dname}"] = _compare(fused[step], ref[step], dname)
                rows.append(row)
                print(f"{loss:>22} {step:>5}: vs jax.grad f64 max|Δ| "
                      f"{row['float64']['max_diff']:.1e}, f32 {row['float32']['max_diff']:.1e}"
                      + (f"; vs fused f32 {row['fused_float32']['max_diff']:.1e}"
                         if "fused_float32" in row else ""))
            shift = "m" if loss == "softmax_cross_entropy" else "μ"
            d32, _, f32 = by_dtype["float32"]
            name = INPUT[loss]
            mine, theirs = np.asarray(d32[name], np.float64), np.asarray(f32[name], np.float32)
            ulp = float(np.spacing(np.max(np.abs(theirs))))   # one ulp of the largest entry
            ulps[loss] = (mine - theirs.astype(np.float64)) / ulp
            result["losses"][loss] = {
                "rows": rows, "zero_path_name": shift, "zero_path_max": zero_path,
                "ulp_max": float(np.max(np.abs(ulps[loss]))),
                "ulp_mean": float(np.mean(np.abs(ulps[loss]))),
                "ulp_differ_fraction": float(np.mean(ulps[loss] != 0))}
            print(f"{loss}: the path through {shift} carries at most {float(zero_path):.1e}; "
                  f"pieces vs fused (float32): {result['losses'][loss]['ulp_max']:.0f} ulp max, "
                  f"{100 * result['losses'][loss]['ulp_differ_fraction']:.0f} % of entries differ")
    return save("pieces", result, draw(ulps), out)


def draw(ulps: dict):
    fig, axes = plt.subplots(1, len(ulps), figsize=(6 * len(ulps), 4.2))
    for ax, (loss, u) in zip(axes, ulps.items(), strict=True):
        lim = max(1.0, float(np.max(np.abs(u))))
        im = ax.imshow(u[:32, :32], cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto",
                       interpolation="nearest")
        name = INPUT[loss]
        ax.set_title(f"{loss}: {name}̄ in pieces − fused rule (float32, in ulps of max |{name}̄|)\n"
                     f"{100 * np.mean(u != 0):.0f} % of entries differ, at most "
                     f"{np.max(np.abs(u)):.0f} ulp", fontsize=9)
        ax.set_xlabel("feature / class")
        ax.set_ylabel("example")
        fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def _fmt(c) -> str:
    return f"{'exact' if c['exact'] else 'close' if c['close'] else 'DIFFERS'} {c['max_diff']:.1e}"


def report(result: dict) -> str:
    n, k = result["shape"]
    lines = ["## Does backprop in pieces (one hand-written gradient per elementary step) give "
             "the fused rule?", "",
             f"Karpathy's \"backprop ninja\" exercise on fbp's two fused rules ({n} × {k} "
             f"inputs): each step of the forward gets its gradient by hand, last step first, "
             f"and is compared with `jax.grad`'s cotangent of the same intermediate (exact = "
             f"bitwise, close = ≤ 1e-12 in float64 / 1e-5 in float32 relative to the larger of "
             f"the step's and the input's largest gradient entry, then max |Δ|); "
             f"the input's gradient also with the fused rule (fbp's `softmax_cross_entropy` and "
             f"`batch_norm` rules)."]
    for loss, r in result["losses"].items():
        rows = []
        for row in r["rows"]:
            fused = (f"{_fmt(row['fused_float64'])} / {_fmt(row['fused_float32'])}"
                     if "fused_float64" in row else "")
            rows.append([row["step"] + "̄", _fmt(row["float64"]), _fmt(row["float32"]), fused])
        lines += ["", f"**{loss}**", "",
                  table(["gradient of", "vs jax.grad, float64", "vs jax.grad, float32",
                         "vs fused rule (float64 / float32)"], rows)]
    sce, bn = result["losses"]["softmax_cross_entropy"], result["losses"]["batch_norm"]
    lines += ["", "![](pieces.png)", "",
              f"The gradient through the max shift is zero: m̄ = −Σⱼ s̄ⱼ and s̄ = logp̄ − "
              f"softmax·Σⱼ logp̄ⱼ sums to zero, so the largest |m̄| is {sce['zero_path_max']:.1e} "
              f"(float64 rounding) — the max keeps exp in range and changes no derivative. The "
              f"same happens in batch norm where the variance reads the centred c: the path "
              f"μ → c → v carries (2v̄/m) Σᵢ cᵢ, at most {bn['zero_path_max']:.1e}. The input's "
              f"gradient is the sum of its paths (z̄ = s̄ + m̄·onehot(argmax), x̄ = c̄ + μ̄/m) and "
              f"equals the fused closed form ((softmax − onehot)/m; (γ/σ)(ȳ − mean ȳ − x̂ "
              f"mean(ȳ x̂))) to rounding: in float32 the pieces and the fused rule differ in "
              f"{100 * sce['ulp_differ_fraction']:.0f} % of z̄'s entries by at most "
              f"{sce['ulp_max']:.0f} ulp, and in {100 * bn['ulp_differ_fraction']:.0f} % of "
              f"x̄'s by at most {bn['ulp_max']:.0f} ulp (ulps of the largest entry; the figure "
              f"shows where). Against `jax.grad` the pieces agree bit for bit wherever JAX "
              f"runs the same operations in the same order, and to rounding where it "
              f"associates a sum differently (v̄, c̄, μ̄)."]
    return "\n".join(lines)


if __name__ == "__main__":
    cli(run, report)
