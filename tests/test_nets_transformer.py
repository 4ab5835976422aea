"""The GPT of fbp.nets.transformer: every gradient equals jax.grad of a plain-jnp GPT."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import pytest

import fbp
from fbp.nets.transformer import GPT, gpt, gpt_loss, init_gpt
from tests._gpt_reference import reference_gpt, reference_gpt_loss
from tests._proof import rel_err

F64 = jnp.float64
FAST = {"xla_backend_optimization_level": 0}
V, D, H, L, MAX_LEN = 7, 8, 2, 2, 6


def _perturbed(params, key):
    """init_gpt's params with every norm and bias moved off its initial 1 or 0, so each
    gradient term (γ̄, β̄, b̄) is exercised at a generic point."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [a + 0.2 * jax.random.normal(k, a.shape, a.dtype)
                                        for a, k in zip(leaves, keys, strict=True)])


def _problem(T=5, batch=(2,)):
    params = _perturbed(init_gpt(jax.random.PRNGKey(0), V, D, H, L, MAX_LEN, F64),
                        jax.random.PRNGKey(1))
    ids = jax.random.randint(jax.random.PRNGKey(2), (*batch, T), 0, V)
    targets = jax.random.randint(jax.random.PRNGKey(3), (*batch, T), 0, V)
    return params, ids, targets


def test_every_gradient_equals_jax_grad_of_a_plain_jnp_gpt():
    """With flash attention; the textbook-attention GPT's SGD step is held against the
    reference's in tests/test_bench_attention.py."""
    flash = True
    params, ids, targets = _problem()
    ours = jax.value_and_grad(partial(gpt_loss, n_heads=H, flash=flash, block_size=2))
    theirs = jax.value_and_grad(partial(reference_gpt_loss, n_heads=H))
    (loss, grads), (loss_ref, grads_ref) = jax.jit(
        lambda p: (ours(p, ids, targets), theirs(p, ids, targets)),
        compiler_options=FAST)(params)
    assert abs(loss - loss_ref) <= 1e-12 * abs(loss_ref)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    worst = max(jax.tree.leaves(jax.tree.map(rel_err, grads, grads_ref)))
    print(f"\nflash={flash}: worst per-parameter relative error {worst:.1e}")
    for path, g, g_ref in zip(jax.tree_util.tree_leaves_with_path(grads),
                              jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
        assert rel_err(g, g_ref) <= 1e-12, jax.tree_util.keystr(path[0])


def test_hidden_states_and_causality():
    params, ids, _ = _problem(T=6, batch=(3,))
    f = jax.jit(partial(gpt, n_heads=H), compiler_options=FAST)
    h = f(params, ids)
    assert h.shape == (3, 6, D)
    assert rel_err(h, reference_gpt(params, ids, H)) <= 1e-13
    h2 = f(params, ids.at[:, 4:].set((ids[:, 4:] + 1) % V))
    assert jnp.allclose(h[:, :4], h2[:, :4], rtol=0, atol=1e-13)   # later tokens unseen
    assert not jnp.allclose(h[:, 4], h2[:, 4])


def test_every_op_runs_its_own_rule():
    params, ids, targets = _problem()
    jaxpr = str(jax.make_jaxpr(partial(gpt_loss, n_heads=H))(params, ids, targets))
    # 2 embeddings, per block 2 residuals, 3 layer norms in all + 2 per block,
    # denses, gelu, flash attention, and the loss: each a custom_vjp call
    assert jaxpr.count("custom_vjp_call") >= 2 + L * 2 + 1 + 1


def test_init_shapes_and_face():
    params = init_gpt(jax.random.PRNGKey(0), V, D, H, L, MAX_LEN)
    assert isinstance(params, GPT) and len(params.blocks) == L
    assert params.tok.shape == (V, D) and params.pos.shape == (MAX_LEN, D)
    assert params.blocks[0].fc.W.shape == (4 * D, D)
    assert fbp.gpt is gpt and fbp.gpt_loss is gpt_loss and fbp.init_gpt is init_gpt


@pytest.mark.parametrize("call, exc, match", [
    (lambda p, i: gpt(p, jnp.zeros((2, MAX_LEN + 1), int), n_heads=H), ValueError,
     r"1 ≤ T ≤ max_len = 6"),
    (lambda p, i: gpt(p, i.astype(F64), n_heads=H), TypeError, r"ids must have an integer"),
    (lambda p, i: gpt(p.blocks, i, n_heads=H), TypeError, r"params must be GPT"),
    (lambda p, i: gpt(p, i, n_heads=3), ValueError, r"n_heads must divide"),
    (lambda p, i: init_gpt(jax.random.PRNGKey(0), V, D, H, 0, MAX_LEN), ValueError,
     r"n_layers must be a positive int"),
])
def test_bad_input_is_refused(call, exc, match):
    params, ids, _ = _problem()
    with pytest.raises(exc, match=match):
        call(params, ids)
