"""cxatlas: the context-expression atlas.

Rebuilds Cowen et al., "Sixteen facial expressions occur in similar contexts worldwide" (Nature 589, 2021) as a
Spark + Delta + PyTorch platform: manifest -> ``uploads`` -> per-video annotations -> the paper's statistics.
"""
__version__ = "0.1.0"
