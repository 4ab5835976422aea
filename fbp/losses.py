r"""Alias kept for old imports: ``fbp.losses`` now lives in ``fbp/ops/losses.py``.

``import fbp.losses`` gives the very module ``fbp.ops.losses``.
"""

import sys

from fbp.ops import losses as _module

sys.modules[__name__] = _module
