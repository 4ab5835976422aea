"""Where do naive loss compositions give NaN, inf or wrong gradients that fbp's fused rules do not?

One logit z from −1000 to 1000 with target y = 1 (the case y = 0 is its mirror image) goes
through seven ways of computing the same binary loss L = log(1 + e^{−z}) and its gradient
dL/dz = −1/(1 + e^{z}): fbp's fused ``bce_with_logits`` and ``softmax_cross_entropy`` (on
the logits [z, 0]), fbp's unfused ``sigmoid`` then ``bce``, and ``jax.grad`` of the textbook
compositions — sigmoid then log (with and without the tutorial's +1e-8), softmax then log
then NLL (with the max-shifted ``jax.nn.softmax`` and with the raw exp(z)/Σexp).  Each is
compared with the exact value, computed with Python's ``decimal`` at 60 digits and rounded
to the dtype (so an answer that underflows in that dtype counts as exact).
"""

from __future__ import annotations

import decimal
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import fbp
from experiments._common import RESULTS, cli, save, table

decimal.getcontext().prec = 60
D = decimal.Decimal


def _stack(z):
    return jnp.stack([z, jnp.zeros_like(z)])


# L(z) for target y = 1, each a function of one scalar logit z.
METHODS = {
    "fbp.bce_with_logits (fused)": lambda z: fbp.bce_with_logits(z, jnp.ones_like(z)),
    "fbp.softmax_cross_entropy (fused)":
        lambda z: fbp.softmax_cross_entropy(_stack(z), jnp.asarray(0)),
    "fbp.sigmoid → fbp.bce (unfused rules)":
        lambda z: fbp.bce(fbp.sigmoid(z), jnp.ones_like(z)),
    "σ → −log σ (autodiff)": lambda z: -jnp.log(jax.nn.sigmoid(z)),
    "σ → −log(σ + 1e-8) (tutorial, autodiff)": lambda z: -jnp.log(jax.nn.sigmoid(z) + 1e-8),
    "softmax → log → NLL (autodiff)": lambda z: -jnp.log(jax.nn.softmax(_stack(z)))[0],
    "exp/Σexp → log → NLL (autodiff)":
        lambda z: -jnp.log(jnp.exp(_stack(z)) / jnp.sum(jnp.exp(_stack(z))))[0],
}


def exact(z: float) -> tuple[D, D]:
    """L = ln(1 + e^{−z}) and dL/dz = −1/(1 + e^{z}) to 60 significant digits."""
    zd = D(repr(float(z)))
    return (D(1) + (-zd).exp()).ln(), -D(1) / (D(1) + zd.exp())


def _rel_error(value: float, ref: D, dtype) -> float:
    """|v − r| / |r| with r the exact value rounded to dtype (inf for NaN/inf outputs)."""
    if not np.isfinite(value):
        return float("inf")
    r = float(np.asarray(float(ref), dtype))           # the best this dtype can hold
    if r == 0.0:
        return 0.0 if value == 0.0 else float("inf")
    return float(abs(D(repr(float(value))) - D(repr(r))) / abs(D(repr(r))))


def grid(quick: bool) -> np.ndarray:
    pos = np.logspace(-2, 3, 60 if quick else 400)
    return np.concatenate([-pos[::-1], [0.0], pos])


def evaluate(z: np.ndarray, dtype) -> dict:
    refs = [exact(v) for v in z]
    out = {}
    for name, f in METHODS.items():
        loss, grad = jax.jit(jax.vmap(jax.value_and_grad(f)))(jnp.asarray(z, dtype))
        loss, grad = np.asarray(loss, np.float64), np.asarray(grad, np.float64)
        out[name] = {
            "loss": loss, "grad": grad, "grad_exact": np.array([float(r[1]) for r in refs]),
            "loss_rel_error": np.array([_rel_error(v, r[0], dtype) for v, r in zip(
                loss, refs, strict=True)]),
            "grad_rel_error": np.array([_rel_error(v, r[1], dtype) for v, r in zip(
                grad, refs, strict=True)]),
        }
    return out


def _runs(z, mask) -> list:
    """The contiguous stretches of the grid where ``mask`` holds, as [first z, last z]."""
    runs, start = [], None
    for i, m in enumerate(np.append(mask, False)):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append([float(z[start]), float(z[i - 1])])
            start = None
    return runs


def _summary(z, res, tol: float = 1e-3) -> dict:
    """Where each method is non-finite, and where it is off by more than ``tol`` relative."""
    finite_grad = np.isfinite(res["grad"])
    abs_err = np.abs(res["grad"] - res["grad_exact"])
    return {
        "nonfinite_loss_at": _runs(z, ~np.isfinite(res["loss"])),
        "nonfinite_grad_at": _runs(z, ~finite_grad),
        "loss_wrong_at": _runs(z, np.isfinite(res["loss"]) & (res["loss_rel_error"] > tol)),
        "grad_wrong_at": _runs(z, finite_grad & (res["grad_rel_error"] > tol)),
        "max_grad_abs_error_when_finite": float(np.max(np.where(finite_grad, abs_err, 0.0))),
    }


def run(quick: bool = False, out: Path = RESULTS) -> dict:
    z = grid(quick)
    with jax.enable_x64(True):
        results = {"float32": evaluate(z, jnp.float32), "float64": evaluate(z, jnp.float64)}
    result = {
        "z_range": [float(z.min()), float(z.max())], "n_points": int(z.size),
        "tolerance": 1e-3,
        "summary": {dt: {name: _summary(z, r) for name, r in res.items()}
                    for dt, res in results.items()},
        "at_z": {dt: {name: {str(v): [float(r["loss"][i]), float(r["grad"][i])]
                             for v, i in ((-1000.0, 0), (1000.0, -1))}
                      for name, r in res.items()} for dt, res in results.items()},
    }

    fig, axes = plt.subplots(2, 2, figsize=(13, 8), sharex=True)
    for col, dt in enumerate(("float32", "float64")):
        for row, what in enumerate(("loss", "grad")):
            ax = axes[row, col]
            for i, (name, r) in enumerate(results[dt].items()):
                err = r[f"{what}_rel_error"]
                floor = np.finfo(dt).eps / 4          # below this: exact to rounding
                shown = np.clip(np.where(np.isfinite(err), err, np.nan), floor, 1e2)
                style = "-" if "fbp" in name else "--"
                ax.plot(z, shown, style, color=f"C{i}", lw=1.4,
                        label=name if (row, col) == (0, 0) else None)
                bad = ~np.isfinite(r[what])
                ax.plot(z[bad], np.full(bad.sum(), 1e3 * 3 ** (i / 3)), "x", color=f"C{i}",
                        ms=4)
            ax.set_xscale("symlog", linthresh=1.0)
            ax.set_yscale("log")
            ax.set_ylim(np.finfo(dt).eps / 8, 1e4)
            ax.axhline(1e2 * 3, color="gray", lw=0.5)
            ax.set(title=f"{'loss L' if what == 'loss' else 'gradient dL/dz'}, {dt} "
                   "(× above the line: NaN/inf)", ylabel="relative error vs exact",
                   xlabel="logit z (target y = 1)" if row else None)
    fig.legend(loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    result = save("stability", result, fig, out)
    print(table(*_table(result)))
    return result


def _fmt(runs):
    return "—" if not runs else " ∪ ".join(f"[{a:.3g}, {b:.3g}]" for a, b in runs)


def _table(result, dtype="float32"):
    tol = f"{result['tolerance']:g}"
    headers = ["method", "loss NaN/inf at z ∈", f"loss rel. error > {tol} at z ∈",
               "gradient NaN/inf at z ∈", f"gradient rel. error > {tol} at z ∈",
               "max abs. gradient error (finite)"]
    rows = [[name, _fmt(s["nonfinite_loss_at"]), _fmt(s["loss_wrong_at"]),
             _fmt(s["nonfinite_grad_at"]), _fmt(s["grad_wrong_at"]),
             f"{s['max_grad_abs_error_when_finite']:.2g}"]
            for name, s in result["summary"][dtype].items()]
    return headers, rows


def _right_side(result: dict) -> str:
    """What the data says about the confidently right side (z ≫ 0), from the float32 summary."""
    summary = result["summary"]["float32"]
    bce, ce = summary["fbp.bce_with_logits (fused)"], summary["fbp.softmax_cross_entropy (fused)"]
    bce_bad = bce["loss_wrong_at"] + bce["grad_wrong_at"]
    return (
        "On the confidently right side the fused BCE "
        + ("keeps full relative precision everywhere: it is written y·softplus(−z) + "
           "(1 − y)·softplus(z) with gradient (1 − y)σ(z) − yσ(−z), so it never subtracts two "
           "nearly equal numbers. " if not bce_bad else
           f"loses relative precision only at z ∈ {_fmt(bce_bad)}"
           + (", where the exact values (≈ e^{−z} < 1.2e-38) fall below float32's smallest "
              "normal number and XLA's CPU kernels flush them to zero. "
              if min(a for a, _ in bce_bad) > 87 else ". "))
        + "The softmax cross-entropy's softmax − onehot "
        + (f"does cancel where the right class's probability rounds to 1 (gradient off by more "
           f"than {result['tolerance']:g} relative at z ∈ {_fmt(ce['grad_wrong_at'])}); its "
           f"absolute error stays at {ce['max_grad_abs_error_when_finite']:.2g}, below one ulp "
           "of 1, which is harmless for training." if ce["grad_wrong_at"] else
           "keeps full relative precision too.")
    )


def report(result: dict) -> str:
    at = result["at_z"]["float32"]
    tut = at["σ → −log(σ + 1e-8) (tutorial, autodiff)"]["-1000.0"]
    fused = at["fbp.bce_with_logits (fused)"]["-1000.0"]
    return "\n\n".join([
        "## Stability: where do naive loss compositions break that fused rules do not?",
        "float32, target y = 1, logits z over "
        f"[{result['z_range'][0]:g}, {result['z_range'][1]:g}] (float64 in the JSON):",
        table(*_table(result)),
        "![](stability.png)",
        "The fused rules (`bce_with_logits`, `softmax_cross_entropy`) are finite over the whole "
        "range with the right gradient where it matters: at z = −1000 the gradient is "
        f"{fused[1]:.3g}. Autodiff of σ then log (and softmax then log) turns into inf/NaN once "
        "σ underflows (z < −88 in float32, where e^{−z} overflows), and the unshifted "
        "exp/Σexp overflows on both sides. "
        "The tutorial's +1e-8 keeps the loss finite but caps it near 18.4 and kills the "
        f"gradient exactly where the prediction is confidently wrong: at z = −1000 it returns "
        f"{tut[1]:.3g} instead of {fused[1]:.3g}, so the network stops learning from its worst "
        "mistakes. " + _right_side(result),
    ])


if __name__ == "__main__":
    cli(run, report)
