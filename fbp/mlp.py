r"""Alias kept for old imports: the code of ``fbp.mlp`` now lives in ``fbp/nets/mlp.py``.

``import fbp.mlp`` and ``from fbp.mlp import NAME`` give the very module ``fbp.nets.mlp``.
"""

import sys

from fbp.nets import mlp as _module

sys.modules[__name__] = _module
