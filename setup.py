"""cxatlas: the context-expression atlas (Cowen et al., Nature 2021) as a Spark + Delta + PyTorch platform.

The checkout keeps the top level our users asked for (``jobs/ udfs/ models/ conf/``), but the installed distribution
claims one top-level name only, ``cxatlas``: those folders install as ``cxatlas.jobs``, ``cxatlas.udfs``,
``cxatlas.models`` and ``cxatlas.conf``, so cxatlas can sit next to any other project's ``models`` package.
"""
from setuptools import find_packages, setup

# Top-level folders of the checkout that install as subpackages of cxatlas.
MAPPED = {"cxatlas.conf": "conf", "cxatlas.models": "models", "cxatlas.udfs": "udfs", "cxatlas.jobs": "jobs"}

setup(
    name="cxatlas",
    version="0.1.0",
    description="Which facial expressions occur in which contexts, across 12 world regions, at Spark scale.",
    python_requires=">=3.11,<3.12",
    packages=[*find_packages(include=["cxatlas", "cxatlas.*"]), *MAPPED],
    package_dir=MAPPED,
    package_data={
        "cxatlas.conf": ["*.yaml", "*.csv", "*.sh", "schedules/*"],
        "cxatlas.core.taxonomies": ["*.txt", "*.md"],
        "cxatlas.core.published": ["*.csv", "*.md"],
    },
    entry_points={"console_scripts": ["cxatlas=cxatlas.cli:main"]},
    # Versions are pinned in requirements.txt / constraints.txt (the stack known to run together); setup.py only
    # names what the code imports so `pip install .` into a prepared image does not fight its pins.
    install_requires=[
        "pyspark>=4.0", "delta-spark>=4.0,<4.1", "pyarrow", "numpy", "pandas", "scipy", "pyyaml", "fsspec",
        "torch", "torchvision", "av", "h5py", "reverse-geocode", "matplotlib", "psutil",
    ],
)
