"""Shim for tools that still call ``setup.py``: every declaration lives in ``pyproject.toml`` (PEP 621).

The one thing pyproject.toml cannot say without listing every subpackage by hand: the packages are those under
``cxatlas/`` plus the checkout's top-level ``conf/ models/ udfs/ jobs/``, which install as ``cxatlas.conf``,
``cxatlas.models``, ``cxatlas.udfs`` and ``cxatlas.jobs`` (``[tool.setuptools] package-dir``), so the wheel's only
top-level name is ``cxatlas``.
"""
from setuptools import find_packages, setup

MAPPED = ("cxatlas.conf", "cxatlas.models", "cxatlas.udfs", "cxatlas.jobs")

setup(packages=[*find_packages(include=["cxatlas", "cxatlas.*"]), *MAPPED])
