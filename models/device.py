"""The one device rule of cxatlas, used by every model, the annotation UDF and the benchmarks.

``auto`` means: the GPU the scheduler assigned to this task (Spark's ``spark.task.resource.gpu.amount``; the caller
passes the addresses, this layer knows nothing of Spark), else any visible CUDA device, else the CPU. An explicit
device wins; asking for CUDA where torch sees none is an error rather than a silent fall-back to the CPU, which
would make a misconfigured cluster job run orders of magnitude slower.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from cxatlas.core.errors import UserError

AUTO = "auto"


class DeviceError(UserError, ValueError):
    """A device was asked for that this machine does not have."""


def pick_device(preferred: str | torch.device | None = None,
                assigned_gpus: Sequence[str] | None = None) -> torch.device:
    """The torch device to run on (see the module docstring). ``None`` is the same as ``'auto'``."""
    if preferred is None or str(preferred) == AUTO:
        if assigned_gpus:
            return torch.device(f"cuda:{assigned_gpus[0]}")
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preferred)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device '{preferred}' was requested but torch sees no CUDA device on this machine")
    return device


def place(module: nn.Module, device: str | torch.device | None) -> nn.Module:
    """Move a freshly built module to ``device`` (default CPU), record it as ``module.device`` and set eval mode:
    the tail every model constructor shares."""
    module.device = torch.device(device) if device is not None else torch.device("cpu")
    module.to(module.device)
    module.eval()
    return module
