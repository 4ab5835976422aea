"""What ``fbp.fit`` checks before it compiles, by one abstract trace (shapes only).

Inside the compiled loop a wrong contract surfaces as a pytree or tracer error from deep in
JAX or optax, and a label outside [0, C) as a NaN; here each is an error naming the argument
at fault (``loss_fn``, ``grad_fn``, ``opt_state``, ``y``) before anything runs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fbp._validate import is_concrete, labels_within, traced_class_counts, warn_masked_mean


def abstract(tree):
    """Every leaf as a ``jax.ShapeDtypeStruct``: what an abstract trace needs, nothing more."""
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), tree)


def _is_scalar(v) -> bool:
    return isinstance(v, jax.ShapeDtypeStruct) and v.shape == () and jnp.issubdtype(
        v.dtype, jnp.floating)


def _describe(out) -> str:
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)}: ({', '.join(map(_describe, out))})"
    if isinstance(out, jax.ShapeDtypeStruct):
        return f"{out.dtype}{list(out.shape)}"
    return type(out).__name__


def _check_contract(fn_name, out, params, state, threaded) -> None:
    """loss_fn gives a scalar ((scalar, state) with state=); grad_fn gives (loss, grads)
    with grads in the structure of params: else a TypeError naming the function."""
    if fn_name == "loss_fn":
        if threaded:
            ok = (isinstance(out, (tuple, list)) and len(out) == 2 and _is_scalar(out[0])
                  and jax.tree.structure(out[1]) == jax.tree.structure(state))
            if not ok:
                raise TypeError(
                    "with state=, loss_fn(params, x, y, state) must return (loss, new_state), "
                    f"loss a scalar and new_state shaped like state; got {_describe(out)}.")
            return
        if _is_scalar(out):
            return
        if isinstance(out, (tuple, list)) and len(out) == 2 and _is_scalar(out[0]):
            raise TypeError(
                "loss_fn returns a pair (loss, aux) — a batch-norm fbp.mlp_loss returns "
                f"(loss, new_state) — but fit differentiates a scalar loss_fn; got "
                f"{_describe(out)}. For batch norm pass state=<the initial state> and write "
                "loss_fn(params, x, y, state) -> (loss, new_state): fit threads the state "
                "through the loop (FitResult.state); otherwise return the loss alone.")
        raise TypeError(f"loss_fn(params, x, y) must return a scalar loss; got "
                        f"{_describe(out)}.")
    grads = out[1] if isinstance(out, (tuple, list)) and len(out) == 2 else None
    if grads is None or not _is_scalar(out[0]):
        hint = (" It looks like the grads alone (shaped like params): return (loss, grads), "
                "e.g. jax.value_and_grad(loss)(params, x, y)."
                if jax.tree.structure(out) == jax.tree.structure(params) else "")
        raise TypeError(f"grad_fn(params, x, y) must return (loss, grads), loss a scalar and "
                        f"grads shaped like params; got {_describe(out)}.{hint}")
    want, got = jax.tree.structure(params), jax.tree.structure(grads)
    shapes = [(a.shape, b.shape) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(grads))]
    if want != got or any(a != b for a, b in shapes):
        raise TypeError(f"grad_fn(params, x, y) must return (loss, grads) with grads in the "
                        f"structure of params, {want}; got grads {got} with shapes "
                        f"{[b for _, b in shapes]}. (optax matches grads to params leaf by leaf.)")


_TRACED: dict = {}       # (fn, argument shapes) -> (output shapes, (class counts, masked)); ≤ 64


def _signature(tree):
    return jax.tree.structure(tree), tuple(jax.tree.leaves(tree))


def _trace_once(fn, args):
    """The output shapes of fn(*args) and the class counts its losses noted, traced once per
    function and argument shapes (so repeated fits of one loss trace it only when compiling)."""
    try:
        key = (fn, _signature(args))
        hash(key)
    except TypeError:                      # an unhashable callable: trace every time
        key = None
    if key is not None and key in _TRACED:
        return _TRACED[key]
    out = []
    # a fresh function: eval_shape's own trace cache would skip the validators on a repeat
    counts = traced_class_counts(lambda: out.append(jax.eval_shape(lambda *a: fn(*a), *args)))
    if key is not None:
        if len(_TRACED) >= 64:
            _TRACED.pop(next(iter(_TRACED)))
        _TRACED[key] = out[0], counts
    return out[0], counts


def check_before_compiling(loss_fn, grad_fn, params, state, x, y, *, stacked, k, threaded,
                           y_name: str = "y (data[1])"):
    """One abstract trace of the per-step function on one micro-batch: its output contract,
    and integer labels in the whole of y (every micro-batch, every step) against the class
    count of every softmax_cross_entropy the loss calls.  Returns the gradient's dtypes, leaf
    by leaf (a grad_fn may give other dtypes than the params'; jax.grad gives theirs)."""
    m = x.shape[1] if stacked else x.shape[0]
    rest_x, rest_y = (x.shape[2:], y.shape[2:]) if stacked else (x.shape[1:], y.shape[1:])
    bx = jax.ShapeDtypeStruct((m // k, *rest_x), x.dtype)
    by = jax.ShapeDtypeStruct((m // k, *rest_y), y.dtype)
    fn, fn_name = (loss_fn, "loss_fn") if loss_fn is not None else (grad_fn, "grad_fn")
    args = (abstract(params), bx, by) + ((abstract(state),) if threaded else ())
    out, (counts, masked) = _trace_once(fn, args)
    _check_contract(fn_name, out, params, state, threaded)
    labels_within(y, y_name, counts)
    if masked and k > 1:
        warn_masked_mean(f"micro_batches={k} micro-batches", k)
    grads = out[1] if loss_fn is None else params
    return tuple(jnp.result_type(g) for g in jax.tree.leaves(grads))


def check_examples(x, m: int) -> None:
    """The batch holds m ≥ 1 examples: a loss is a mean over them, and over none it is 0/0."""
    if m == 0:
        raise ValueError(
            f"x holds no examples (shape {x.shape}): the loss is a mean over the batch's "
            "examples, and over none both the loss and the gradient are 0/0 = NaN. Pass at "
            "least one example per batch (drop empty batches before training).")


def check_opt_state(opt_state, optimizer, params) -> None:
    want = jax.eval_shape(optimizer.init, abstract(params))
    if jax.tree.structure(opt_state) != jax.tree.structure(want):
        raise ValueError(
            "opt_state does not match the optimiser fit runs: it has the structure "
            f"{jax.tree.structure(opt_state)}, but optimizer.init(params) gives "
            f"{jax.tree.structure(want)}. Resume with the opt_state of a fit run with the same "
            "optimizer and the same clip_norm (clip_norm chains optax.clip_by_global_norm in "
            "front, which changes the state), or pass opt_state=None to start afresh.")


def donatable(opt_state, params):
    """opt_state with every leaf that shares a buffer with params, or with another of its own
    leaves, copied: fit donates opt_state, and XLA refuses to donate a buffer the same call
    also reads (optax.contrib.prodigy keeps the initial params in its state)."""
    def buffer(a):
        try:
            return a.unsafe_buffer_pointer()
        except Exception:     # not a single-device array: compare by identity alone
            return id(a)

    seen = {buffer(a) for a in jax.tree.leaves(params) if isinstance(a, jax.Array)
            and is_concrete(a)}

    def own(a):
        if not (isinstance(a, jax.Array) and is_concrete(a)):
            return a
        if buffer(a) in seen:
            return jnp.copy(a)
        seen.add(buffer(a))
        return a

    return jax.tree.map(own, opt_state)
