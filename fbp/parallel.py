r"""Data-parallel gradients on a device mesh: ``shard_map`` + ``lax.pmean`` (tutorial §13).

Data-parallel SGD in one line of maths: for a batch split into N equal shards B_1 … B_N,

    ∇L(B) = (1/|B|) Σ_{i∈B} ∇ℓ_i = (1/N) Σ_k (1/|B_k|) Σ_{i∈B_k} ∇ℓ_i = (1/N) Σ_k ∇L(B_k),

so every device runs the fbp forward and hand-written backward on its own shard and one
all-reduce (``lax.pmean``) of the per-shard gradients gives exactly the full-batch gradient.
The middle equality needs |B_k| = |B|/N for every k: with unequal shards the mean of means
weights examples unequally, which is why an uneven batch is an error here, not padded.

Params (and optimizer state) are replicated: every device holds the same copy, applies the
same averaged update and so stays identical without any further communication.

``check_vma=False``: ``grad_fn`` is arbitrary user code, e.g. a ``lax.scan`` over micro-batches
whose carry starts from zeros shaped like the (replicated) params, which the varying-manual-
axes type check would reject; what that check guards, that the output really is the same on
every device, holds by construction here because every output leaf comes out of ``pmean``.

Multi-host, same code path: call ``jax.distributed.initialize()`` once at the start of every
process (on Cloud TPU / SLURM / Open MPI it finds the coordinator itself; elsewhere pass
``coordinator_address``, ``num_processes``, ``process_id``).  Afterwards ``jax.devices()``
lists every device of every host, so ``default_mesh()`` spans them all and ``lax.pmean``
becomes a cross-host all-reduce; each process feeds its own slice of the global batch
through ``shard_batch``.  Nothing else changes: there is no other distributed engine.
(CPU-only processes need ``jax.config.update("jax_cpu_collectives_implementation", "gloo")``
before ``initialize``; tests/test_parallel.py runs two such processes of 2 devices each.)
"""

from __future__ import annotations

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fbp._fit_checks import abstract, check_examples
from fbp._validate import float_array, labels_within, traced_class_counts, warn_masked_mean

__all__ = ["data_parallel", "data_parallel_step", "default_mesh", "shard_batch"]


def default_mesh(axis: str = "data") -> Mesh:
    """A 1-D ``Mesh`` over all of ``jax.devices()`` (every host's, after
    ``jax.distributed.initialize``), its one axis named ``axis``."""
    if not isinstance(axis, str) or not axis:
        raise TypeError(f"axis must be a non-empty string; got {axis!r}.")
    return Mesh(np.asarray(jax.devices()), (axis,))


def _mesh_and_axis(mesh, axis) -> tuple[Mesh, str]:
    if mesh is None:
        mesh = default_mesh(axis)
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh or None; got {type(mesh).__name__}.")
    if axis not in mesh.axis_names:
        raise ValueError(
            f"axis {axis!r} is not an axis of the mesh; its axes are {mesh.axis_names}. "
            f"Pass axis= one of them, or build the mesh with an axis named {axis!r}."
        )
    return mesh, axis


def _check_batch(x, y, n_shards: int, axis: str):
    """x and y share a leading batch size divisible by the number of shards."""
    x = float_array(x, "x", min_rank=1)
    y = jax.numpy.asarray(y)
    if y.ndim == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"x and y must share the leading (batch) dimension; got x: {x.shape}, y: {y.shape}."
        )
    m = x.shape[0]
    check_examples(x, m)
    if m % n_shards:
        lo, hi = m - m % n_shards, m + n_shards - m % n_shards
        raise ValueError(
            f"x has batch size {m}, which does not split evenly over the {n_shards} devices "
            f"of mesh axis {axis!r} (the mean of per-device means equals the full-batch mean "
            f"only for equal shards). Use a batch size divisible by {n_shards}, e.g. drop the "
            f"last {m % n_shards} example(s) (batch {lo}) or load {hi}."
        )
    return x, y


def _per_shard_output(grad_fn, params, x, y, n_shards: int) -> None:
    """At trace time: grad_fn's output must not depend on the batch size (it gets averaged)."""
    def shapes(m):
        sx = jax.ShapeDtypeStruct((m,) + x.shape[1:], x.dtype)
        sy = jax.ShapeDtypeStruct((m,) + y.shape[1:], y.dtype)
        out = jax.eval_shape(grad_fn, params, sx, sy)
        return jax.tree_util.tree_flatten_with_path(out)[0]

    full, shard = shapes(x.shape[0]), shapes(x.shape[0] // n_shards)
    bad = [(jax.tree_util.keystr(path), a.shape, b.shape)
           for (path, a), (_, b) in zip(full, shard, strict=True) if a.shape != b.shape]
    if bad:
        path, whole, part = bad[0]
        raise ValueError(
            "grad_fn must return batch-mean quantities (loss, grads) whose shapes do not "
            "depend on the batch size, since data_parallel averages every leaf; its output leaf "
            f"`{path}` has shape {whole} for the whole batch but {part} per device. Return "
            "e.g. fbp.backprop(...)[:2] (loss, grads) instead of the per-example deltas."
        )


def _label_check(grad_fn, n_shards: int):
    """check(params, x, y): concrete integer labels y against the class counts of the
    softmax_cross_entropy calls in grad_fn, found once per shape by an abstract trace of one
    shard (inside the compiled program the values are never seen)."""
    cache: dict = {}

    def check(params, x, y) -> None:
        if not jax.numpy.issubdtype(y.dtype, jax.numpy.integer):
            return
        shard = lambda a: jax.ShapeDtypeStruct((a.shape[0] // n_shards,) + a.shape[1:], a.dtype)
        shapes = abstract(params)
        key = (jax.tree_util.tree_structure(shapes), tuple(jax.tree_util.tree_leaves(shapes)),
               shard(x), shard(y))
        if key not in cache:
            cache[key] = traced_class_counts(
                lambda: jax.eval_shape(lambda *a: grad_fn(*a), shapes, shard(x), shard(y)))
        counts, masked = cache[key]
        labels_within(y, "y", counts)
        if masked and n_shards > 1:
            warn_masked_mean(f"the {n_shards} devices of the mesh", n_shards)

    return check


def data_parallel(grad_fn, mesh: Mesh | None = None, axis: str = "data"):
    r"""``grad_fn`` run data-parallel: the batch sharded over a mesh axis, results all-reduced.

    Per device k (shard_map):   g_k = grad_fn(params, x[B_k], y[B_k])
    All-reduce (lax.pmean):     g = (1/N) Σ_k g_k  =  grad_fn(params, x, y)   for equal |B_k|.

    Args:
      grad_fn: any ``grad_fn(params, x, y) -> pytree`` whose leaves are batch means, e.g.
        ``lambda p, x, y: fbp.backprop(p, x, y).grads`` or one returning ``(loss, grads)``.
        It may itself accumulate over micro-batches (those then run inside each device).
      mesh: a ``jax.sharding.Mesh``; default ``default_mesh(axis)``, all devices in 1-D.
      axis: the mesh axis the batch is split over.
    Integer labels in y are checked before the compiled program runs, against the class
    count of every softmax_cross_entropy grad_fn calls (found by one abstract trace per
    shape): a label outside [0, C) is a ValueError here, not a NaN inside.  A loss over the
    positions a mask selects (``softmax_cross_entropy(..., where=)``) is a mean over M_k per
    device, and the pmean equals the full-batch mean only when every M_k is the same: over
    N > 1 devices such a loss gets a warning.

    Returns:
      a jitted function of the same signature: ``x: (m, ...)`` and ``y: (m, ...)`` with m
      divisible by N = ``mesh.shape[axis]`` (else a ``ValueError``), params replicated; it
      returns the pytree of ``grad_fn`` averaged over the N shards, replicated.  Its
      ``.lower(params, x, y)`` gives the lowered program, as ``jax.jit(...).lower`` does.
    """
    if not callable(grad_fn):
        raise TypeError(f"grad_fn must be callable (params, x, y) -> grads; got {grad_fn!r}.")
    mesh, axis = _mesh_and_axis(mesh, axis)
    n_shards = mesh.shape[axis]

    def per_device(params, x, y):
        return jax.lax.pmean(grad_fn(params, x, y), axis)

    sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(axis), P(axis)),
                            out_specs=P(), check_vma=False)

    @jax.jit
    def run(params, x, y):
        _per_shard_output(grad_fn, params, x, y, n_shards)
        return sharded(params, x, y)

    check_labels = _label_check(grad_fn, n_shards)

    def parallel_grad_fn(params, x, y):
        x, y = _check_batch(x, y, n_shards, axis)
        check_labels(params, x, y)
        return run(params, x, y)

    # .lower(params, x, y).compile().as_text() shows the compiled program and its all-reduce
    parallel_grad_fn.lower = lambda params, x, y: run.lower(
        params, *_check_batch(x, y, n_shards, axis))
    parallel_grad_fn.__doc__ = f"data_parallel({getattr(grad_fn, '__name__', grad_fn)})"
    return parallel_grad_fn


def data_parallel_step(grad_fn, optimizer: optax.GradientTransformation,
                       mesh: Mesh | None = None, axis: str = "data"):
    r"""One data-parallel optimizer step: all-reduced gradients, then the optax update.

    Per device:  (loss_k, g_k) = grad_fn(params, x[B_k], y[B_k]),
                 (loss, g) = pmean over the mesh axis,
                 updates, opt_state = optimizer.update(g, opt_state, params),
                 params = params + updates.
    Every device applies the same averaged update to its replica, so params and optimizer
    state stay replicated without any further communication.

    Args:
      grad_fn: ``grad_fn(params, x, y) -> (loss, grads)`` with grads shaped like params
        (e.g. ``lambda p, x, y: fbp.backprop(p, x, y)[:2]``).
      optimizer: an ``optax.GradientTransformation``; its state is ``optimizer.init(params)``.
      mesh, axis: as in ``data_parallel``.
    Returns:
      jitted ``step(params, opt_state, x, y) -> (params, opt_state, loss)``; x and y as in
      ``data_parallel`` (batch divisible by the number of devices).
    """
    if not callable(grad_fn):
        raise TypeError(f"grad_fn must be callable (params, x, y) -> (loss, grads); "
                        f"got {grad_fn!r}.")
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax.GradientTransformation (e.g. "
                        f"optax.sgd(0.1)); got {type(optimizer).__name__}.")
    mesh, axis = _mesh_and_axis(mesh, axis)
    n_shards = mesh.shape[axis]

    def per_device(params, opt_state, x, y):
        loss, grads = jax.lax.pmean(grad_fn(params, x, y), axis)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(axis), P(axis)),
                            out_specs=P(), check_vma=False)

    @jax.jit
    def run(params, opt_state, x, y):
        _per_shard_output(grad_fn, params, x, y, n_shards)
        return sharded(params, opt_state, x, y)

    check_labels = _label_check(grad_fn, n_shards)

    def step(params, opt_state, x, y):
        x, y = _check_batch(x, y, n_shards, axis)
        check_labels(params, x, y)
        return run(params, opt_state, x, y)

    step.lower = lambda params, opt_state, x, y: run.lower(
        params, opt_state, *_check_batch(x, y, n_shards, axis))
    return step


def shard_batch(x, mesh: Mesh | None = None, axis: str = "data"):
    """This process's slice of the global batch as one global array sharded along ``axis``.

    On one host this is ``jax.device_put(x, NamedSharding(mesh, P(axis)))``; after
    ``jax.distributed.initialize`` each of the P processes passes its own (m/P, ...) slice
    and gets back the (m, ...) global array that ``data_parallel`` functions take.
    """
    mesh, axis = _mesh_and_axis(mesh, axis)
    x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError(f"x must have a leading batch dimension; got a scalar {x!r}.")
    if mesh.devices.ndim == 1:
        n_local = sum(1 for d in mesh.devices.flat if d.process_index == jax.process_index())
        if x.shape[0] % n_local:
            raise ValueError(
                f"x (this process's slice) has batch size {x.shape[0]}, not divisible by "
                f"this process's {n_local} devices on mesh axis {axis!r}."
            )
    return jax.make_array_from_process_local_data(NamedSharding(mesh, P(axis)), x)
