"""How far back does the gradient reach in an RNN and an LSTM, and what does truncating BPTT cost?

§7.2 turned sideways: in a recurrent net the δ recursion runs back along time, one factor
W_hhᵀ diag(1 − h_t²) per step for the RNN, while the LSTM's cell path multiplies only by the
forget gates.  On the adding problem (two of T random numbers are marked, one in each half of
the sequence; predict their sum from the last hidden state; a constant guess scores 1/6) this
measures, with fbp's hand-written BPTT:

1. ‖∂L/∂h_t‖ against the number of steps back from the end, at initialisation and after
   training (on the shorter length of part 3).  ∂L/∂h_{t−1} = W_hᵀ δz_t, and δz_t is read off
   the rule exactly by feeding a
   zero input U through an identity block of the input weight (z_t += U_t, so ∂L/∂U_t = δz_t);
2. success (test MSE) against sequence length, after a short Adam run;
3. what truncated BPTT (``truncate=k``) costs: the norm of ∂L/∂W lost, and the test MSE.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import fbp
from experiments._common import RESULTS, cli, save, table

CELLS = ("rnn", "lstm")
BASELINE = 1 / 6          # MSE of always guessing 1: the variance of a sum of two U(0, 1)


def adding_batch(rng, batch: int, T: int):
    """xs (…, batch, T, 2): values in channel 0, the two markers in channel 1; targets
    (…, batch, 1).  ``batch`` may be a tuple (steps, batch).  NumPy: nothing to compile."""
    shape = batch if isinstance(batch, tuple) else (batch,)
    values = rng.uniform(size=(*shape, T)).astype(np.float32)
    first = rng.integers(0, T // 2, shape)
    second = rng.integers(T // 2, T, shape)
    marks = (np.arange(T) == first[..., None]) | (np.arange(T) == second[..., None])
    xs = np.stack([values, marks.astype(np.float32)], axis=-1)
    return jnp.asarray(xs), jnp.asarray(np.sum(values * marks, axis=-1, keepdims=True))


def init(cell: str, key, n_hidden: int):
    k_c, k_r = jax.random.split(key)
    make = fbp.init_rnn if cell == "rnn" else fbp.init_lstm
    return {"cell": make(k_c, 2, n_hidden, jnp.float32),
            "out": fbp.init_dense(k_r, n_hidden, 1, "xavier", jnp.float32)}


def _last_hidden(cell: str, params, xs, truncate=None, U=None):
    """h_{T−1}; with U (T-aligned, (batch, T, rows of W)) added to the pre-activations."""
    p = params["cell"]
    if U is not None:                       # [W | I] applied to [x | U]: z_t = W x_t + U_t + …
        p = p._replace(**{p._fields[0]: jnp.concatenate(
            [p[0], jnp.eye(p[0].shape[0], dtype=p[0].dtype)], axis=1)})
        xs = jnp.concatenate([xs, U], axis=-1)
    if cell == "rnn":
        return fbp.rnn(p, xs, truncate=truncate)[:, -1]
    return fbp.lstm(p, xs, truncate=truncate)[1][0]


def loss(cell: str, params, xs, ys, truncate=None, U=None):
    return fbp.mse(fbp.dense(params["out"], _last_hidden(cell, params, xs, truncate, U)), ys)


def grad_through_time(cell: str, params, xs, ys):
    """‖∂L/∂h_t‖ (mean over the batch) for t = 0 … T−1, from the rule's δz_t."""
    rows = params["cell"][0].shape[0]
    U = jnp.zeros((*xs.shape[:2], rows), xs.dtype)
    delta = jax.grad(lambda u: loss(cell, params, xs, ys, U=u))(U)         # (batch, T, rows)
    W_h = params["cell"][1]
    dh_prev = delta[:, 1:] @ W_h                                           # ∂L/∂h_{t−1}, t ≥ 1
    h_last = _last_hidden(cell, params, xs)
    dh_last = jax.grad(lambda h: fbp.mse(fbp.dense(params["out"], h), ys))(h_last)
    dh = jnp.concatenate([dh_prev, dh_last[:, None]], axis=1)              # t = 0 … T−1
    return jnp.mean(jnp.linalg.norm(dh, axis=-1), axis=0)


def train(cell: str, T: int, steps: int, n_hidden: int, truncate=None, batch: int = 64,
          seed: int = 0):
    """Adam (lr 1e-2, clipped at norm 1) on a fresh batch every step, all in one lax.scan;
    the test MSE on 512 new sequences."""
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
    params = init(cell, jax.random.key(seed), n_hidden)
    grad_fn = jax.value_and_grad(lambda p, x, y: loss(cell, p, x, y, truncate))

    def step(carry, batch_xy):
        p, s = carry
        value, g = grad_fn(p, *batch_xy)
        updates, s = optimizer.update(g, s, p)
        return (optax.apply_updates(p, updates), s), value

    @jax.jit
    def run(p, data, test_x, test_y):
        (p, _), losses = jax.lax.scan(step, (p, optimizer.init(p)), data)
        return p, losses, loss(cell, p, test_x, test_y)

    rng = np.random.default_rng(seed)
    p, losses, test = run(params, adding_batch(rng, (steps, batch), T),
                          *adding_batch(rng, 512, T))
    return p, np.asarray(losses), float(test)


def run(quick: bool = False, out: Path = RESULTS) -> dict:
    lengths, steps, n_hidden = ([10], 150, 16) if quick else ([10, 25, 50], 500, 24)
    T_profile, T_cut, k = (30, 10, 3) if quick else (100, 25, 5)
    result = {"lengths": lengths, "steps": steps, "n_hidden": n_hidden, "baseline_mse": BASELINE,
              "profile_T": T_profile, "truncation": {"T": T_cut, "k": k}}

    rows, curves, trained = [], {}, {}
    for T in lengths:
        for cell in CELLS:
            print(f"  train {cell} on T = {T} ({steps} steps) …", flush=True)
            trained[cell, T], losses, test = train(cell, T, steps, n_hidden)
            rows.append({"cell": cell, "T": T, "test_mse": test, "solved": test < 0.1 * BASELINE})
            curves[f"{cell} T={T}"] = losses
    result["success"] = rows

    print(f"  ‖∂L/∂h_t‖ through time, T = {T_profile} …", flush=True)
    xs, ys = adding_batch(np.random.default_rng(3), 256, T_profile)
    profile = {}
    for cell in CELLS:
        through_time = jax.jit(lambda p, x, y, cell=cell: grad_through_time(cell, p, x, y))
        profile[cell] = {"init": through_time(init(cell, jax.random.key(0), n_hidden), xs, ys),
                         "trained": through_time(trained[cell, T_cut], xs, ys)}
    result["grad_norm_through_time"] = jax.tree.map(np.asarray, profile)
    result["reach"] = {c: {w: float(v[0] / v[-1]) for w, v in d.items()}
                       for c, d in profile.items()}

    cut = []
    xs, ys = adding_batch(np.random.default_rng(4), 256, T_cut)
    for cell in CELLS:
        print(f"  truncated BPTT, {cell}, T = {T_cut}, k = {k} …", flush=True)

        @jax.jit
        def grads(p, cell=cell):
            full, part = (jax.grad(loss, argnums=1)(cell, p, xs, ys, kk) for kk in (None, k))
            norm = lambda g: optax.tree.norm(g["cell"])
            return norm(full), norm(part), norm(jax.tree.map(jnp.subtract, full, part))

        g_full, g_cut, g_diff = map(float, grads(init(cell, jax.random.key(0), n_hidden)))
        # quick (the smoke test): the truncated run is skipped to save its compile
        test_cut = (None if quick else
                    train(cell, T_cut, steps, n_hidden, truncate=k)[2])
        test_full = next(r["test_mse"] for r in rows if r["cell"] == cell and r["T"] == T_cut)
        cut.append({"cell": cell, "grad_norm_full": g_full, "grad_norm_truncated": g_cut,
                    "rel_grad_error": g_diff / g_full, "test_mse_full": test_full,
                    "test_mse_truncated": test_cut})
    result["truncation"]["rows"] = cut

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    ax = axes[0]
    back = np.arange(T_profile)[::-1]                 # steps back from the last one
    for i, cell in enumerate(CELLS):
        for when, style in (("init", ":"), ("trained", "-")):
            label = f"{cell}, {when}" + (f" (on T = {T_cut})" if when == "trained" else "")
            ax.semilogy(back, profile[cell][when], style, color=f"C{i}", label=label)
    ax.set(xlabel="steps back from the end, T − 1 − t", ylabel="‖∂L/∂h_t‖ (batch mean)",
           title=f"gradient through time, adding problem T = {T_profile}")
    ax.legend(fontsize=8)
    ax = axes[1]
    for cell, marker in zip(CELLS, "os", strict=True):
        mine = [r for r in rows if r["cell"] == cell]
        ax.semilogy([r["T"] for r in mine], [r["test_mse"] for r in mine], marker + "-",
                    label=cell)
    ax.axhline(BASELINE, color="k", ls=":", label="constant guess (1/6)")
    ax.axhline(0.1 * BASELINE, color="g", ls=":", label="solved (< 1/60)")
    ax.set(xlabel="sequence length T", ylabel=f"test MSE after {steps} steps",
           title="success against sequence length")
    ax.legend(fontsize=8)
    ax = axes[2]
    for name, losses in curves.items():
        ax.semilogy(np.convolve(losses, np.ones(10) / 10, "valid"), label=name, lw=1)
    ax.set(xlabel="step", ylabel="training MSE (10-step mean)", title="training curves")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    result = save("bptt", result, fig, out)
    for headers, body in _tables(result):
        print(table(headers, body))
    return result


def _num(v, spec: str) -> str:
    return "skipped (--quick)" if v is None else format(v, spec)


def _tables(result):
    success = [[r["cell"], r["T"], f"{r['test_mse']:.4f}", "yes" if r["solved"] else "no"]
               for r in result["success"]]
    t = result["truncation"]
    cut = [[r["cell"], f"{r['grad_norm_full']:.3g}", f"{r['grad_norm_truncated']:.3g}",
            f"{r['rel_grad_error']:.2f}", f"{r['test_mse_full']:.4f}",
            _num(r["test_mse_truncated"], ".4f")] for r in t["rows"]]
    return [(["cell", "T", f"test MSE after {result['steps']} steps", "solved (< 1/60)"],
             success),
            (["cell", "‖∂L/∂W‖ full", f"‖∂L/∂W‖ k = {t['k']}", "‖ḡ_full − ḡ_k‖ / ‖ḡ_full‖",
              f"test MSE full (T = {t['T']})", f"test MSE k = {t['k']}"], cut)]


def report(result: dict) -> str:
    reach, T = result["reach"], result["profile_T"]
    t = result["truncation"]
    cut = {r["cell"]: r for r in t["rows"]}
    solved = {c: [r["T"] for r in result["success"] if r["cell"] == c and r["solved"]]
              for c in CELLS}
    (h1, b1), (h2, b2) = _tables(result)
    return "\n\n".join([
        "## Backpropagation through time (§7.2 along time): how far back the gradient reaches",
        table(h1, b1), table(h2, b2), "![](bptt.png)",
        f"Over T = {T} steps, ‖∂L/∂h_0‖ / ‖∂L/∂h_{{T−1}}‖ is {reach['rnn']['init']:.1e} for "
        f"the RNN and {reach['lstm']['init']:.1e} for the LSTM at initialisation, and "
        f"{reach['rnn']['trained']:.1e} / {reach['lstm']['trained']:.1e} after training on T = "
        f"{t['T']}: each "
        "step back multiplies by W_hhᵀ diag(1 − h²) in the RNN, by the forget gates on the "
        "LSTM's cell path. "
        f"Solved (test MSE < 1/60) within {result['steps']} Adam steps: RNN at T = "
        f"{solved['rnn'] or 'none'}, LSTM at T = {solved['lstm'] or 'none'}. "
        f"Truncating BPTT to k = {t['k']} steps at T = {t['T']} changes the RNN's gradient by "
        f"{cut['rnn']['rel_grad_error']:.0%} and the LSTM's by "
        f"{cut['lstm']['rel_grad_error']:.0%} of its norm, and the test MSE goes from "
        f"{cut['rnn']['test_mse_full']:.3f} to {_num(cut['rnn']['test_mse_truncated'], '.3f')} "
        f"(RNN) and {cut['lstm']['test_mse_full']:.3f} to "
        f"{_num(cut['lstm']['test_mse_truncated'], '.3f')} "
        "(LSTM): with k = " f"{t['k']}" " the gradient of the loss at the last step reaches only "
        "the last chunk, so nothing tells the net to keep the first marker, which lies in the "
        "first half.",
    ])


if __name__ == "__main__":
    cli(run, report)
