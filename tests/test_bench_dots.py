"""benchmarks._timing.dot_signatures: it sees every dot's orientation, so 'same dots' means it."""

import jax
import jax.numpy as jnp
import optax

from benchmarks import _timing, steps


def test_a_transposed_operand_changes_the_signature():
    a = jnp.ones((8, 4))
    b = jnp.ones((4, 6))
    plain = _timing.dot_signatures(jax.jit(lambda a, b: a @ b), a, b)
    via_t = _timing.dot_signatures(jax.jit(lambda a, bt: a @ bt.T), a, b.T)
    assert len(plain) == len(via_t) == 1
    assert plain != via_t                      # contracting dims {1},{0} against {1},{1}
    assert plain == _timing.dot_signatures(jax.jit(lambda a, b: jnp.dot(a, b)), a, b)


def test_fbp_and_jax_grad_mlp_steps_hold_the_same_dots():
    params, x, y = steps.problem((6, 5, 4, 3), 8, dtype=jnp.float32, **steps.MLP)
    opt = optax.sgd(0.1)
    dots = {kind: _timing.dot_signatures(steps.make_step(kind, optimizer=opt, **steps.MLP),
                                         params, opt.init(params), x, y)
            for kind in ("fbp", "jax.grad")}
    assert len(dots["fbp"]) == 8               # 3 forward, 3 W̄, 2 x̄ (the input's x̄ unused)
    assert dots["fbp"] == dots["jax.grad"]
