"""XOR, 10,000 epochs (tutorial §6.2): fbp in jit + lax.scan against the tutorial's NumPy class.

``TutorialNetwork`` is the tutorial's §6.1 ``NeuralNetwork`` written again in NumPy for this
benchmark (features in rows, examples in columns, sigmoid output, BCE with ε = 1e-8, plain
gradient descent, the loss recorded every epoch; the progress print is left out).  The fbp
side trains the same 2-4-1 sigmoid network with ``jax.value_and_grad(fbp.mlp_loss)`` and
``optax.sgd``, the whole loop one ``lax.scan`` inside ``jit`` (its loss, ``bce_with_logits``,
has the same gradient ŷ − y as the tutorial's sigmoid + BCE).  Then 1,000 such networks, each
from its own initialisation, train at once under ``vmap``.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fbp
from benchmarks._timing import fmt_time, paired, ratio_stats, table

X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)   # (m, n_in): features last
Y = np.array([[0], [1], [1], [0]], dtype=np.float32)
SIZES = [2, 4, 1]
LR = 0.5


class TutorialNetwork:
    """The tutorial's §6.1 network in NumPy: columns are examples, ``W`` is (n_out, n_in)."""

    def __init__(self, W1, b1, W2, b2):
        self.W1, self.W2 = np.array(W1, np.float64), np.array(W2, np.float64)
        self.b1 = np.array(b1, np.float64).reshape(-1, 1)
        self.b2 = np.array(b2, np.float64).reshape(-1, 1)

    def sigmoid(self, z):
        return 1 / (1 + np.exp(-np.clip(z, -500, 500)))

    def sigmoid_derivative(self, z):
        s = self.sigmoid(z)
        return s * (1 - s)

    def forward(self, x):
        self.z1 = self.W1 @ x + self.b1
        self.h = self.sigmoid(self.z1)
        self.z2 = self.W2 @ self.h + self.b2
        self.y_pred = self.sigmoid(self.z2)
        return self.y_pred

    def backward(self, x, y):
        m = x.shape[1]
        dz2 = self.y_pred - y
        dW2 = (1 / m) * (dz2 @ self.h.T)
        db2 = (1 / m) * np.sum(dz2, axis=1, keepdims=True)
        dh = self.W2.T @ dz2
        dz1 = dh * self.sigmoid_derivative(self.z1)
        dW1 = (1 / m) * (dz1 @ x.T)
        db1 = (1 / m) * np.sum(dz1, axis=1, keepdims=True)
        return dW1, db1, dW2, db2

    def compute_loss(self, y_pred, y):
        m = y.shape[1]
        epsilon = 1e-8
        return -(1 / m) * np.sum(y * np.log(y_pred + epsilon)
                                 + (1 - y) * np.log(1 - y_pred + epsilon))

    def train(self, X, y, epochs, learning_rate):
        losses = []
        for _ in range(epochs):
            y_pred = self.forward(X)
            losses.append(self.compute_loss(y_pred, y))
            dW1, db1, dW2, db2 = self.backward(X, y)
            self.W1 -= learning_rate * dW1
            self.b1 -= learning_rate * db1
            self.W2 -= learning_rate * dW2
            self.b2 -= learning_rate * db2
        return losses


def numpy_train(params, epochs: int):
    """Train the tutorial's class from ``params`` (fbp layout); return the trained network
    and its per-epoch losses."""
    (W1, b1), (W2, b2) = jax.device_get(params)
    net = TutorialNetwork(W1, b1, W2, b2)
    return net, net.train(X.T.astype(np.float64), Y.T.astype(np.float64), epochs, LR)


def train_fn(epochs: int, *, unroll: int = 1, lr: float = LR):
    """``(params, x, y) -> (params, losses)``: ``epochs`` SGD steps of fbp in one ``lax.scan``."""
    optimizer = optax.sgd(lr)

    def train(params, x, y):
        def epoch(carry, _):
            p, s = carry
            loss, grads = jax.value_and_grad(fbp.mlp_loss)(p, x, y, "sigmoid", "bce_with_logits")
            updates, s = optimizer.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), loss

        (params, _), losses = jax.lax.scan(epoch, (params, optimizer.init(params)), None,
                                           length=epochs, unroll=unroll)
        return params, losses

    return train


def init_many(n: int, seed: int = 0, dtype=jnp.float32):
    """``n`` independent 2-4-1 networks, params stacked on a leading axis."""
    keys = jax.random.split(jax.random.PRNGKey(seed), n)
    return jax.vmap(lambda k: fbp.init_mlp(k, SIZES, dtype=dtype))(keys)


def solved(params) -> jax.Array:
    """Per network: all four XOR outputs on the right side of ½."""
    logits = jax.vmap(lambda p: fbp.mlp(p, jnp.asarray(X)))(params)[..., 0]
    return jnp.all((logits > 0) == (jnp.asarray(Y)[:, 0] > 0.5), axis=-1)


# XLA:CPU in this jaxlib hands reductions and small dots to YNNPACK fusions, which are slow
# for 1,000 tiny (4×4) problems at once; the vmapped loop is also compiled without them.
NO_YNN = {"xla_cpu_experimental_ynn_fusion_type": ""}


def compile_aot(fn, args, options=None):
    """``jax.jit(fn)`` compiled ahead of time for ``args``; returns (executable, seconds)."""
    t0 = time.perf_counter()
    lowered = jax.jit(fn).lower(*args)
    compiled = lowered.compile(compiler_options=options) if options else lowered.compile()
    return compiled, time.perf_counter() - t0


def run(quick: bool = False) -> dict:
    epochs = 1_000 if quick else 10_000
    n_nets = 100 if quick else 1_000
    rounds = 3 if quick else 7
    x, y = jnp.asarray(X), jnp.asarray(Y)
    params = fbp.init_mlp(jax.random.PRNGKey(42), SIZES, dtype=jnp.float32)

    # one network: the NumPy class against fbp's scan, for two unroll factors
    fns, compile_s = {"numpy": lambda: numpy_train(params, epochs)[1]}, {}
    unrolls = (1, 8)
    for u in unrolls:
        train, compile_s[u] = compile_aot(train_fn(epochs, unroll=u), (params, x, y))
        fns[f"fbp unroll={u}"] = lambda train=train: train(params, x, y)
    times = paired(fns, rounds=rounds, warmup=1)
    ratios = {u: ratio_stats(times["numpy"], times[f"fbp unroll={u}"]) for u in unrolls}
    best = min(unrolls, key=lambda u: ratios[u]["b_median_s"])
    _, np_losses = numpy_train(params, epochs)
    _, fbp_losses = fns[f"fbp unroll={best}"]()

    # many networks at once
    many = init_many(n_nets)
    variants = {"vmap, unroll=1": (1, None), "vmap, unroll=8, no YNNPACK fusions": (8, NO_YNN)}
    many_fns, many_compile, solved_fraction = {}, {}, None
    for name, (u, options) in variants.items():
        try:
            train_many, many_compile[name] = compile_aot(
                jax.vmap(train_fn(epochs, unroll=u), in_axes=(0, None, None)), (many, x, y),
                options)
        except Exception as err:  # noqa: BLE001  (an XLA without this option)
            print(f"  {name}: not compiled ({type(err).__name__}: {err})")
            continue
        many_fns[name] = lambda t=train_many: t(many, x, y)
        if solved_fraction is None:
            solved_fraction = float(jnp.mean(solved(train_many(many, x, y)[0])))
    many_times = paired(many_fns, rounds=3, warmup=1)
    best_many = min(many_times, key=lambda k: np.median(many_times[k]))

    return {
        "epochs": epochs, "n_nets": n_nets, "rounds": rounds,
        "numpy_s": float(np.median(times["numpy"])),
        "fbp_s": {u: float(np.median(times[f"fbp unroll={u}"])) for u in unrolls},
        "compile_s": compile_s, "speedup": ratios, "best_unroll": best,
        "final_loss": {"numpy": float(np_losses[-1]), "fbp": float(fbp_losses[-1])},
        "vmap_s": {k: float(np.median(v)) for k, v in many_times.items()},
        "vmap_best": best_many, "vmap_compile_s": many_compile,
        "vmap_solved_fraction": solved_fraction,
        "times_s": {**times, **many_times},
    }


def report(r: dict) -> str:
    rows = [["NumPy (tutorial class)", fmt_time(r["numpy_s"]), "", "1"]]
    for u, s in r["fbp_s"].items():
        sp = r["speedup"][u]
        rows.append([f"fbp jit + scan, unroll={u}", fmt_time(s), f"{r['compile_s'][u]:.2f}",
                     f"{sp['ratio_median']:.1f}× [{sp['ratio_q1']:.1f}–{sp['ratio_q3']:.1f}]"])
    for k, s in r["vmap_s"].items():
        rows.append([f"{r['n_nets']} nets, {k}", fmt_time(s), f"{r['vmap_compile_s'][k]:.2f}", ""])
    return "\n".join([
        f"XOR 2-4-1, {r['epochs']} epochs, lr {LR} (medians of {r['rounds']} paired rounds; "
        "speed-up = NumPy time / fbp time per round, [IQR]).",
        "",
        table(["training", "time", "compile s", "speed-up vs NumPy"], rows),
        "",
        f"Final loss after {r['epochs']} epochs, same initial weights: NumPy "
        f"{r['final_loss']['numpy']:.4g}, fbp {r['final_loss']['fbp']:.4g}. "
        f"{r['vmap_solved_fraction']:.1%} of the {r['n_nets']} vmapped networks solve XOR. "
        f"All {r['n_nets']} together take {r['vmap_s'][r['vmap_best']] / r['numpy_s']:.2f}× "
        "the time NumPy takes to train one.",
    ])


def targets(r: dict) -> list[dict]:
    sp = r["speedup"][r["best_unroll"]]["ratio_median"]
    vm = r["vmap_s"][r["vmap_best"]]
    return [
        {"target": f"XOR {r['epochs']} epochs: fbp ≥ 25× faster than NumPy",
         "value": round(sp, 1), "met": sp >= 25},
        {"target": f"{r['n_nets']} vmapped XOR nets × {r['epochs']} epochs ≤ 0.5 s",
         "value": round(vm, 3), "met": vm <= 0.5},
    ]
