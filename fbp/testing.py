"""pytest helpers: ``assert_vjp_correct`` fails a test with ``check_vjp``'s table."""

from __future__ import annotations

from fbp.check import VJPReport, check_vjp


def assert_vjp_correct(f, *args, **kwargs) -> VJPReport:
    r"""Run ``fbp.check_vjp(f, *args, **kwargs)`` and raise ``fbp.VJPCheckError`` if it fails.

    The error (an ``AssertionError``) carries the whole report: every check, every argument
    leaf, the worst element and the hints.  Returns the report when everything passes.
    """
    return check_vjp(f, *args, raise_on_fail=True, **kwargs)
