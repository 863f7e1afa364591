"""Compatibility shims for third-party packages: each patch or workaround of a dependency lives here, in one module
per package, with a test that fails once an upstream release makes it unnecessary (``tests/compat/test_compat.py``)."""
