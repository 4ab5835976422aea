r"""``fbp.nets``: networks composed of ``fbp.ops`` (the MLP and its δ recursion, ...)."""
