"""``python -m benchmarks [--quick] [--only NAME ...]``: fbp's hand-written rules against autodiff.

Every comparison is paired in one process (see ``benchmarks._timing``): the candidates run
interleaved, round after round, after warm-up; the table reports medians, the median of
the per-round ratios and its spread; compile time is measured apart.  Results go to
``results/bench.json``.

Case groups, one module each:

* ``steps``    — a training step (forward + backward + optax SGD) with fbp's rules, with
                 ``fbp.backprop``, and with ``jax.grad`` of a reference network; achieved
                 GFLOP/s against the measured ``jnp.dot`` peak; PyTorch eager if importable.
* ``xor``      — the tutorial's XOR training (10,000 epochs): jit + ``lax.scan`` against a
                 NumPy version of the tutorial's class, and 1,000 networks at once with vmap.
* ``memory``   — bytes saved for the backward, per op and per step, fbp against autodiff.
* ``numgrad``  — the cost of central-difference gradients against backprop.
* ``conv``     — a conv2d training step against ``jax.grad`` of ``lax.conv_general_dilated``;
                 dropout's residual (the key) against autodiff's mask.
* ``recurrent`` — rnn and lstm training steps (hand-written BPTT) against ``jax.grad`` of a
                 plain scan: time and XLA temp bytes.
* ``attention`` — flash_attention's temp bytes and time against autodiff of the naive form
                 (and jax.checkpoint), its temp against T with the log-log slope, and a GPT
                 training step against jax.grad of a plain-jnp GPT.
* ``vocab``    — ``linear_cross_entropy`` against autodiff of optax on materialised logits:
                 XLA temp bytes (a large case compiled only) and paired time.
"""

GROUPS = ["steps", "xor", "memory", "numgrad", "conv", "recurrent", "vocab", "attention"]
