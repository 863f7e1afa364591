"""The ``cxatlas`` console script (:func:`main`); see :mod:`cxatlas.cli.main`."""
from cxatlas.cli.main import main

__all__ = ["main"]
