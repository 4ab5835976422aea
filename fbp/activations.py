r"""Alias kept for old imports: ``fbp.activations`` now lives in ``fbp/ops/activations.py``.

``import fbp.activations`` gives the very module ``fbp.ops.activations``.
"""

import sys

from fbp.ops import activations as _module

sys.modules[__name__] = _module
