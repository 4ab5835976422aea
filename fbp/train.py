r"""Training on optax: the whole loop in one ``jit`` over ``lax.scan`` (tutorial §6.1, §11.3).

``fit`` runs ``steps`` optimiser updates on device with no round-trip to Python between
them.  The gradients are fbp's: by default ``jax.value_and_grad(loss_fn)`` of a loss built
from fbp ops (``fbp.mlp_loss``), which runs each op's hand-written VJP; or any
``grad_fn(params, x, y) -> (loss, grads)`` such as ``backprop_grad_fn()``, the tutorial's
δ recursion written out (``fbp.backprop``).

``accumulate_grads`` is the tutorial's §11.3 gradient accumulation: the batch gradient as the
mean of k micro-batch gradients, summed in a ``lax.scan`` so only one micro-batch's
activations are alive at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fbp._fit_checks import check_before_compiling, check_examples, check_opt_state, donatable
from fbp._validate import finite_scalar, float_array, positive_int
from fbp.nets.mlp import backprop


class FitResult(NamedTuple):
    """What ``fit`` returns.

    params:    the parameters after the last update.
    opt_state: the optimiser state after the last update (pass it back to ``fit`` to resume).
    losses:    ``(steps,)``, the loss at the parameters *before* each update (step 0 is the
               loss at the initial parameters), as the tutorial's ``train`` records it.
    records:   ``record(params)`` stacked over steps (leading axis ``steps``), evaluated at
               the same parameters as ``losses``; ``None`` when no ``record`` is given.
    state:     the threaded state after the last step (batch norm's running statistics)
               when ``fit`` was given ``state=``; ``None`` otherwise.
    """

    params: Any
    opt_state: Any
    losses: jax.Array
    records: Any
    state: Any = None


# ── validation ──

_positive_int = positive_int   # steps, micro_batches: any integer type (NumPy's too)


def _check_data(data, name: str = "data"):
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise TypeError(f"{name} must be a pair (x, y) of arrays; got {type(data).__name__}.")
    x = float_array(data[0], "x", min_rank=1)
    y = jnp.asarray(data[1])
    if y.ndim < 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"x and y must share their leading (example) axis; got x: {x.shape}, y: {y.shape}."
        )
    return x, y


def _check_params(params) -> None:
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves:
        raise ValueError("params must be a non-empty pytree of arrays; got no leaves.")
    for leaf in leaves:
        float_array(leaf, "params leaf")


def _check_divisible(m: int, k: int) -> None:
    if m % k:
        divisors = [d for d in range(1, m + 1) if m % d == 0]
        raise ValueError(
            f"micro_batches must divide the batch size: {m} examples cannot be split into "
            f"{k} equal micro-batches (equal sizes keep the mean of micro-batch means equal to "
            f"the batch mean). Choose one of {divisors}, or trim the batch."
        )


# ── gradient accumulation (§11.3) ──

def _accumulate(grad_fn, params, x, y, k: int, state=None, threaded: bool = False,
                grad_dtypes=None):
    """(loss, grads), or (loss, grads, state) when a state is threaded (grad_fn then takes
    and returns it: each micro-batch's forward updates it in turn, as k steps' forwards do).
    The sum is kept in ``grad_dtypes``, the gradient's dtypes leaf by leaf (as k = 1 returns
    them), which may differ from the params' (float32 grads of bfloat16 params)."""
    call = (lambda p, bx, by, s: grad_fn(p, bx, by, s)) if threaded else (
        lambda p, bx, by, s: (*grad_fn(p, bx, by), s))
    if k == 1:
        out = call(params, x, y, state)
        return out if threaded else out[:2]
    split = lambda a: a.reshape((k, a.shape[0] // k) + a.shape[1:])

    def body(carry, batch):
        total, s = carry
        loss, grads, s = call(params, *batch, s)
        return (jax.tree_util.tree_map(jnp.add, total, grads), s), loss

    # grads are shaped like params (what optax needs too), so the sum starts from zeros of
    # the params' shapes in the gradient's dtypes
    leaves, tree = jax.tree_util.tree_flatten(params)
    dtypes = grad_dtypes or [p.dtype for p in leaves]
    zeros = tree.unflatten([jnp.zeros(p.shape, d) for p, d in zip(leaves, dtypes, strict=True)])
    (total, state), losses = jax.lax.scan(body, (zeros, state), (split(x), split(y)))
    out = jnp.mean(losses), jax.tree_util.tree_map(lambda t: t / k, total)
    return (*out, state) if threaded else out


def accumulate_grads(grad_fn, params, x, y, micro_batches: int):
    r"""Loss and gradient of a batch as the mean over k equal micro-batches (tutorial §11.3).

    With the batch split into k micro-batches B_1 … B_k of m/k examples each, and a loss that
    is a mean over its examples,

        L(B) = (1/k) Σ_j L(B_j),    ∇L(B) = (1/k) Σ_j ∇L(B_j),

    so the accumulated gradient equals the full-batch one up to rounding.  (Not so for a loss
    that is a mean over the M positions a mask selects, ``softmax_cross_entropy(...,
    where=)``: a micro-batch selecting M_j then weighs each of its positions 1/(k M_j), not
    1/M, exact only when every M_j = M/k; with k > 1 such a loss gets a warning.)

    The k gradients are summed in a ``lax.scan``: the forward/backward activations of only
    one micro-batch are alive at a time, so peak working memory is that of a micro-batch of
    m/k examples.

    Args:
      grad_fn: ``grad_fn(params, x, y) -> (loss, grads)``, e.g.
        ``jax.value_and_grad(loss_fn)`` or ``backprop_grad_fn()``; the loss must be a mean
        over the examples of its batch (every fbp loss is).
      params: any pytree of parameters.
      x: ``(m, ...)`` floating inputs, examples on the leading axis.
      y: ``(m, ...)`` targets.
      micro_batches: k, a positive int dividing m.
    Returns:
      ``(loss, grads)`` with grads shaped like params, in the dtypes ``grad_fn`` gives them
      (the micro-batch gradients are summed in those, e.g. float32 for bfloat16 params).

    Checked first, by one abstract trace of ``grad_fn`` on a micro-batch (as ``fit`` does):
    that it returns ``(loss, grads)`` in the structure of params, and, when ``y`` is
    concrete, that integer labels in every micro-batch lie in [0, C) for the C classes of
    each ``softmax_cross_entropy`` it calls (inside the scan no label value is seen).
    """
    if not callable(grad_fn):
        raise TypeError(f"grad_fn must be callable (params, x, y) -> (loss, grads); "
                        f"got {type(grad_fn).__name__}.")
    k = _positive_int(micro_batches, "micro_batches")
    x, y = _check_data((x, y))
    check_examples(x, x.shape[0])
    _check_divisible(x.shape[0], k)
    # inside the scan every micro-batch's labels are traced, never seen: check them all here
    grad_dtypes = check_before_compiling(None, grad_fn, params, None, x, y, stacked=False,
                                         k=k, threaded=False, y_name="y")
    return _accumulate(grad_fn, params, x, y, k, grad_dtypes=grad_dtypes)


def backprop_grad_fn(activation="sigmoid", loss="bce_with_logits", *, residual: bool = False):
    """A ``grad_fn(params, x, y) -> (loss, grads)`` computed by ``fbp.backprop`` (§7.1).

    The δ recursion written out layer by layer, no autodiff; pass it to ``fit`` or
    ``accumulate_grads`` as ``grad_fn=`` for an MLP from ``fbp.init_mlp``.
    """
    def grad_fn(params, x, y):
        result = backprop(params, x, y, activation, loss, residual=residual)
        return result.loss, result.grads

    return grad_fn


# ── the training loop ──

@partial(jax.jit, static_argnames=("grad_fn", "optimizer", "steps", "stacked", "micro_batches",
                                   "record", "threaded", "grad_dtypes"),
         donate_argnames=("opt_state",))
def _fit(params, opt_state, state, x, y, *, grad_fn, optimizer, steps, stacked, micro_batches,
         record, threaded, grad_dtypes):
    def step(carry, batch):
        params, opt_state, state = carry
        bx, by = batch if stacked else (x, y)
        loss, grads, *rest = _accumulate(grad_fn, params, bx, by, micro_batches, state, threaded,
                                         grad_dtypes)
        state = rest[0] if threaded else state
        recorded = None if record is None else record(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, state), (loss, recorded)

    xs = (x, y) if stacked else None
    (params, opt_state, state), (losses, records) = jax.lax.scan(
        step, (params, opt_state, state), xs, length=steps)
    return FitResult(params, opt_state, losses, records, state if threaded else None)


def fit(loss_fn: Callable | None, params, data, optimizer: optax.GradientTransformation,
        steps: int, *, grad_fn: Callable | None = None, stacked: bool = False,
        micro_batches: int = 1, clip_norm: float | None = None, opt_state=None,
        record: Callable | None = None, state=None) -> FitResult:
    r"""Train ``params`` for ``steps`` optimiser updates, the whole loop in one compiled scan.

    Each step:  (L, g) = grad_fn(θ, x, y);  (u, s) = optimizer.update(g, s, θ);  θ ← θ + u.
    With ``optax.sgd(η)`` that is the tutorial's  θ ← θ − η ∂L/∂θ  (§6.1 ``train``).

    Gradients.  By default ``grad_fn = jax.value_and_grad(loss_fn)``: build ``loss_fn`` from
    fbp ops (e.g. ``lambda p, x, y: fbp.mlp_loss(p, x, y, "sigmoid")``) and autodiff only
    chains their hand-written VJPs.  Or pass ``loss_fn=None, grad_fn=backprop_grad_fn(...)``
    (the δ recursion, no autodiff), or any ``grad_fn(params, x, y) -> (loss, grads)``.

    Data.  ``data = (x, y)`` with examples on the leading axis.  ``stacked=False`` (default):
    the same full batch every step (full-batch gradient descent, as the tutorial's XOR).
    ``stacked=True``: x is ``(steps, m, ...)`` and y ``(steps, m, ...)``, one batch per step,
    scanned over (shuffle/batch on the host beforehand; the scan streams them).

    Compilation.  The loop is one ``jax.jit`` keyed on ``(grad_fn or loss_fn, optimizer,
    clip_norm, steps, stacked, micro_batches, record)`` and on the shapes: call ``fit`` again
    with the same objects and shapes and it reuses the compiled program.  Build the
    optimiser (``optax.adam(1e-3)``) and the loss function once and reuse them; a fresh
    lambda or ``optax.sgd(…)`` per call compiles anew.  The optimiser state ``fit`` creates
    is donated to the computation (its buffers are reused on device).

    Args:
      loss_fn: ``loss_fn(params, x, y) -> scalar``, or ``None`` when ``grad_fn`` is given.
      params: a pytree of floating arrays (e.g. the list of ``Dense`` from ``init_mlp``).
      data: ``(x, y)``: ``x: (m, ...)``, ``y: (m, ...)`` — or ``(steps, m, ...)`` if stacked.
      optimizer: any optax ``GradientTransformation`` (``optax.sgd(0.5)``, ``optax.adam``…).
      steps: number of updates, a positive int.
      grad_fn: ``grad_fn(params, x, y) -> (loss, grads)`` used instead of autodiff of loss_fn.
      stacked: whether data holds one batch per step (see Data).
      micro_batches: k > 1 computes each step's gradient by ``accumulate_grads`` over k
        equal micro-batches (equal to the full-batch gradient; memory of one micro-batch;
        for a masked loss only when each micro-batch selects as many positions: a warning).
      clip_norm: if given, clip the gradient to this global L2 norm before the optimiser,
        through ``optax.clip_by_global_norm`` chained in front of ``optimizer``
        (g ← g · min(1, c / ‖g‖₂), ‖g‖₂ over every leaf together).
      opt_state: resume from this optimiser state (as returned in a previous ``FitResult``
        with the same ``optimizer`` and ``clip_norm``); by default ``optimizer.init(params)``.
        (It is then donated: do not reuse it.)
      record: optional ``record(params) -> pytree`` evaluated inside the loop at the
        parameters of each step (before the update), stacked into ``FitResult.records``.
      state: a state threaded through the loop and never updated by the optimiser — batch
        norm's running statistics (``params, state = init_mlp(key, sizes, norm="batch")``).
        Then ``loss_fn(params, x, y, state) -> (loss, new_state)``, e.g.
        ``lambda p, x, y, s: fbp.mlp_loss(p, x, y, "relu", state=s)``; each step uses the
        state the previous one returned, and ``FitResult.state`` is the last.
    Returns:
      ``FitResult(params, opt_state, losses: (steps,), records, state)``.

    Checked before compiling, by one abstract trace (shapes only): that ``loss_fn`` returns a
    scalar (or ``(loss, new_state)`` with ``state=``), that ``grad_fn`` returns ``(loss,
    grads)`` with grads in the structure of params, that ``opt_state`` matches the optimiser,
    and that integer labels in ``y`` lie in [0, C) for the C classes of every
    ``softmax_cross_entropy`` the loss calls (inside the loop the values are not seen).
    The opt_state leaves that share a buffer with params (``optax.contrib.prodigy`` keeps
    the initial params) are copied before donation, so every optax optimiser trains.
    """
    if grad_fn is None:
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable (params, x, y) -> scalar, or pass "
                            f"grad_fn=; got {type(loss_fn).__name__}.")
        grad_fn = _value_and_grad(loss_fn, has_aux=state is not None)
    elif loss_fn is not None:
        raise ValueError("give loss_fn or grad_fn, not both (grad_fn computes the loss too); "
                         "pass loss_fn=None with grad_fn=.")
    elif not callable(grad_fn):
        raise TypeError(f"grad_fn must be callable (params, x, y) -> (loss, grads); "
                        f"got {type(grad_fn).__name__}.")
    threaded = state is not None
    if threaded and loss_fn is None:
        raise ValueError("state= is threaded through loss_fn(params, x, y, state) -> (loss, "
                         "new_state); it cannot be used with grad_fn=. Pass loss_fn instead.")
    if not (callable(getattr(optimizer, "init", None))
            and callable(getattr(optimizer, "update", None))):
        raise TypeError("optimizer must be an optax GradientTransformation (with init and "
                        f"update), e.g. optax.sgd(0.5); got {type(optimizer).__name__}.")
    steps = _positive_int(steps, "steps")
    k = _positive_int(micro_batches, "micro_batches")
    if not isinstance(stacked, bool):
        raise TypeError(f"stacked must be True or False; got {stacked!r}.")
    if clip_norm is not None:
        clip_norm = finite_scalar(clip_norm, "clip_norm", low=0.0, low_open=True)
    if record is not None and not callable(record):
        raise TypeError(f"record must be callable params -> pytree; got {type(record).__name__}.")
    _check_params(params)
    x, y = _check_data(data)
    if stacked:
        if x.ndim < 2 or y.ndim < 2 or x.shape[0] != steps:
            raise ValueError(
                f"with stacked=True, x and y must be (steps, m, ...) with steps = {steps} "
                f"batches; got x: {x.shape}, y: {y.shape}. (For one full batch every step "
                "pass stacked=False.)"
            )
        if y.shape[1] != x.shape[1]:
            raise ValueError(f"each batch of x and y must hold the same number of examples; "
                             f"got x: {x.shape}, y: {y.shape}.")
    check_examples(x, x.shape[1] if stacked else x.shape[0])
    _check_divisible(x.shape[1] if stacked else x.shape[0], k)
    grad_dtypes = check_before_compiling(loss_fn, None if loss_fn is not None else grad_fn,
                                         params, state, x, y, stacked=stacked, k=k,
                                         threaded=threaded)
    if clip_norm is not None:
        optimizer = _clipped(optimizer, clip_norm)
    if opt_state is None:
        opt_state = optimizer.init(params)
    else:
        check_opt_state(opt_state, optimizer, params)
    return _fit(params, donatable(opt_state, params), state, x, y, grad_fn=grad_fn,
                optimizer=optimizer, steps=steps, stacked=stacked, micro_batches=k,
                record=record, threaded=threaded, grad_dtypes=grad_dtypes)


@lru_cache(maxsize=64)
def _clipped(optimizer, clip_norm: float):
    """``optax.chain(clip_by_global_norm(c), optimizer)``, one object per pair (no re-tracing)."""
    return optax.chain(optax.clip_by_global_norm(clip_norm), optimizer)


class _value_and_grad:
    """``jax.value_and_grad(loss_fn)``, hashed by ``loss_fn`` so the jit cache finds it again.
    With ``has_aux`` (a threaded state): ``(params, x, y, state) -> (loss, grads, new_state)``."""

    def __init__(self, loss_fn, has_aux: bool = False):
        self.loss_fn, self.has_aux = loss_fn, has_aux
        self._vg = jax.value_and_grad(loss_fn, has_aux=has_aux)

    def __call__(self, params, x, y, *state):
        if not self.has_aux:
            return self._vg(params, x, y)
        (loss, new_state), grads = self._vg(params, x, y, *state)
        return loss, grads, new_state

    def __hash__(self):
        return hash((self.loss_fn, self.has_aux))

    def __eq__(self, other):
        return (isinstance(other, _value_and_grad) and other.loss_fn is self.loss_fn
                and other.has_aux == self.has_aux)
