"""cxatlas: the context-expression atlas (Cowen et al., Nature 2021) as a Spark + Delta + PyTorch platform."""
from setuptools import setup

setup(
    name="cxatlas",
    version="0.1.0",
    description="Which facial expressions occur in which contexts, across 12 world regions, at Spark scale.",
    python_requires=">=3.11,<3.12",
    # `conf/` is shipped inside the wheel as `cxatlas.conf` so an installed cxatlas (on a cluster's executors or a
    # user's laptop) finds its defaults without a checkout; `models/` and `udfs/` stay top-level as the design asks.
    packages=["cxatlas", "cxatlas.stats", "cxatlas.taxonomies", "cxatlas.published", "cxatlas.conf", "models", "udfs", "jobs"],
    package_dir={"cxatlas.conf": "conf"},
    package_data={
        "cxatlas.conf": ["*.yaml", "*.csv"],
        "cxatlas.taxonomies": ["*.txt", "*.md"],
        "cxatlas.published": ["*.csv", "*.md"],
    },
    entry_points={"console_scripts": ["cxatlas=cxatlas.cli:main"]},
    # Versions are pinned in requirements.txt / constraints.txt (the stack known to run together); setup.py only
    # names what the code imports so `pip install .` into a prepared image does not fight its pins.
    install_requires=[
        "pyspark>=4.0", "pyarrow", "numpy", "pandas", "scipy", "deltalake", "pyyaml", "fsspec",
        "torch", "torchvision", "av", "h5py", "reverse-geocode", "matplotlib", "psutil",
    ],
)
