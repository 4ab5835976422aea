r"""Alias kept for old imports: ``fbp.linear`` now lives in ``fbp/ops/linear.py``.

``import fbp.linear`` gives the very module ``fbp.ops.linear``.
"""

import sys

from fbp.ops import linear as _module

sys.modules[__name__] = _module
