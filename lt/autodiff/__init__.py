"""lt's transforms, JAX's set over lt's primitives.

- ``reverse``: the tape of the primitives' VJPs, on plain arrays, and ``vjp``.
- ``batching``: ``vmap`` (a batching rule per primitive).
- ``forward``: ``jvp`` (a JVP rule per primitive).
- ``gradients``: the gradient transforms as the user calls them, which also work on values another
  transform traces (per-example gradients, gradients of gradients), and ``hvp``.
- ``recompute``: ``remat``, recompute a function's activations in the backward pass instead of keeping them.
"""

from .batching import vmap
from .forward import jvp
from .gradients import grad, hvp, value_and_grad
from .recompute import remat
from .reverse import vjp

__all__ = ["value_and_grad", "grad", "vjp", "vmap", "jvp", "hvp", "remat"]
