r"""Alias kept for old imports: ``fbp.norms`` now lives in ``fbp/ops/norms.py``.

``import fbp.norms`` gives the very module ``fbp.ops.norms``.
"""

import sys

from fbp.ops import norms as _module

sys.modules[__name__] = _module
