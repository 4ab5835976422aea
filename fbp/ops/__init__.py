r"""``fbp.ops``: the ground floor.  One file per op family; each op is a forward, its
hand-written rule (a private ``jax.custom_vjp``) and the public function that validates."""
