"""Batch functions of the training job: rated stimuli -> face crops on the executors, and crop bytes -> model
input inside petastorm's reader.

``StimulusCrops`` is given to ``DataFrame.mapInPandas``: each stimulus (a photo or a clip) is read, its face found
with MTCNN (the ``annotate.faces`` settings, so training crops look like the crops annotation scores) and cut out as a
fixed-size RGB square. A photo gives the most probable face; a clip gives ``train.crops_per_window`` crops, evenly
spaced along the longest face track, of each of ``train.windows_per_clip`` windows. A stimulus that cannot be read or
shows no face comes back as one ``quarantined`` row with its reason; the rest of the batch goes on.

``DecodeExamples`` is the ``TransformSpec`` function petastorm runs on each row group it reads from the training
table: it turns the stored uint8 bytes into the model's float input (grey 64 x 64 for fer7, RGB 160 for the
FaceNet models, whole windows of crops for cowen16) in the loader's worker threads, because petastorm's torch
loader refuses byte and string columns (uber/petastorm#795: ``_sanitize_pytorch_types`` rejects object arrays).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd

from cxatlas.core.settings import AnnotateSettings, TrainSettings
from cxatlas.models.checkpoint import InputSpec
from cxatlas.models.faces import FaceDetector, FaceTrack, crop_track

log = logging.getLogger(__name__)

OUTPUT_SCHEMA = ("stimulus_id string, status string, reason string, detail string, n_faces int, "
                 "crops array<struct<crop_index:int,window_index:int,crop:binary,frame_time:double,face_prob:float>>")
CROPPED, QUARANTINED = "cropped", "quarantined"

_DETECTORS: dict[tuple, FaceDetector] = {}
_LOCK = threading.Lock()


def _detector(annotate: AnnotateSettings, device: str) -> FaceDetector:
    """One MTCNN per Python worker (workers are reused), built as annotation builds it."""
    from cxatlas.models.annotation import build_face_detector

    key = (annotate.faces, device)
    with _LOCK:
        if key not in _DETECTORS:
            _DETECTORS.clear()
            _DETECTORS[key] = build_face_detector(annotate.faces, device)
        return _DETECTORS[key]


def _prob(p: float) -> float | None:
    return None if p is None or np.isnan(p) else float(p)


@dataclass
class StimulusCrops:
    """``mapInPandas`` function: (stimulus_id, uri) rows -> one row per stimulus (see ``OUTPUT_SCHEMA``)."""

    annotate: AnnotateSettings
    train: TrainSettings

    def __call__(self, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import torch

        from cxatlas.models.device import pick_device
        from cxatlas.udfs.annotate import task_gpus

        detector = _detector(self.annotate, str(pick_device(self.train.device, task_gpus())))
        with torch.inference_mode():
            for batch in batches:
                rows = [self.crops(str(r["stimulus_id"]), str(r["uri"]), detector) for r in batch.to_dict("records")]
                yield pd.DataFrame(rows, columns=["stimulus_id", "status", "reason", "detail", "n_faces", "crops"]
                                   ).astype({"n_faces": "int32"})

    def crops(self, stimulus_id: str, uri: str, detector: FaceDetector) -> dict:
        """One stimulus -> its output row."""
        from cxatlas.media.image import read_image
        from cxatlas.media.video import VideoError

        def quarantined(reason: str, detail: str, n_faces: int = 0) -> dict:
            return {"stimulus_id": stimulus_id, "status": QUARANTINED, "reason": reason, "detail": detail[:2000],
                    "n_faces": n_faces, "crops": None}

        try:
            image = read_image(uri, self.train.image_max_side)
            crops, n_faces = self._from_image(image, detector) if image is not None else self._from_clip(uri, detector)
        except VideoError as exc:
            # missing_file keeps its name (restore the file); anything else means the bytes are no usable picture
            reason = exc.reason if exc.reason in ("missing_file", "unreadable") else "unreadable"
            detail = str(exc) if reason == exc.reason else f"neither an image nor a readable video ({exc})"
            return quarantined(reason, detail)
        except Exception as exc:  # noqa: BLE001 - a detector surprise is this stimulus' problem, not the batch's
            return quarantined("face_detection_error", f"{type(exc).__name__}: {exc}")
        if not crops:
            return quarantined("no_face", f"MTCNN found no face with probability >= "
                                          f"{self.annotate.faces.min_prob} of at least "
                                          f"{self.annotate.faces.min_face_size} px", n_faces)
        return {"stimulus_id": stimulus_id, "status": CROPPED, "reason": None, "detail": None, "n_faces": n_faces,
                "crops": [{**c, "crop_index": i} for i, c in enumerate(crops)]}

    def _from_image(self, image: np.ndarray, detector: FaceDetector) -> tuple[list[dict], int]:
        found = detector.detect(image[None])[0]
        if len(found) == 0:
            return [], 0
        best = found[int(np.argmax(found[:, 4]))]
        track = FaceTrack(start=0, boxes=best[None, :4], probs=best[None, 4])
        crop = crop_track(image[None], track, self.train.crop_size, self.annotate.faces.margin, smooth_frames=1)[0]
        return [{"crop": crop.tobytes(), "window_index": 0, "frame_time": None, "face_prob": _prob(best[4])}], \
            len(found)

    def _from_clip(self, uri: str, detector: FaceDetector) -> tuple[list[dict], int]:
        from cxatlas.media.video import sample_windows

        v, f = self.annotate.video, self.annotate.faces
        decoded = sample_windows(uri, fps=v.fps, window_seconds=v.window_seconds,
                                 max_windows=self.train.windows_per_clip, placement="even", max_side=v.max_side,
                                 min_frames=v.min_frames, seek_threshold_s=v.seek_threshold_s,
                                 min_decoded_fraction=v.min_decoded_fraction)
        crops: list[dict] = []
        n_faces = 0
        for w, (window, times) in enumerate(zip(decoded.windows, decoded.times)):
            tracks = detector.track(window)
            n_faces += len(tracks)
            if not tracks:
                continue
            track = max(tracks, key=len)  # the face seen longest in this window
            faces = crop_track(window, track, self.train.crop_size, f.margin, f.smooth_frames)
            picks = np.unique(np.linspace(0, len(track) - 1, self.train.crops_per_window).round().astype(int))
            crops += [{"crop": faces[k].tobytes(), "window_index": w, "frame_time": float(times[track.start + k]),
                       "face_prob": _prob(track.probs[k])} for k in picks]
        return crops, n_faces


@dataclass
class DecodeExamples:
    """petastorm ``TransformSpec`` function: stored crop bytes -> ``x``, the model's float input; ``targets`` lists
    -> float32 arrays.

    Per-frame models (``window`` None) read one ``crop`` (``crop_size``^2 x 3 uint8) per row and get ``x`` (C, size,
    size). Sequence models (cowen16) read one window per row: ``window`` bytes holding ``window`` crops (the real
    ones first, zero-padded, so every row has the same shape) and ``length``, how many are real; they get ``x``
    (window, C, size, size) with zeros past ``length`` and ``lengths``, which the model uses to ignore the padding.
    """

    input_spec: InputSpec
    crop_size: int
    n_targets: int
    window: int | None = None

    @property
    def columns(self) -> list[str]:
        """The stored columns this function reads."""
        return ["crop", "targets"] if self.window is None else ["window", "length", "targets"]

    @property
    def fields(self) -> list[tuple]:
        """petastorm ``edit_fields``: the shapes and types the transform produces."""
        frame = (1 if self.input_spec.grey else 3, self.input_spec.size, self.input_spec.size)
        targets = ("targets", np.float32, (self.n_targets,), False)
        if self.window is None:
            return [("x", np.float32, frame, False), targets]
        return [("x", np.float32, (self.window, *frame), False), ("lengths", np.int64, (), False), targets]

    def __call__(self, pdf: pd.DataFrame) -> pd.DataFrame:
        side = self.crop_size
        targets = [np.asarray(t, dtype=np.float32) for t in pdf["targets"]]
        if self.window is None:
            crops = [np.frombuffer(b, dtype=np.uint8).reshape(side, side, 3) for b in pdf["crop"]]
            return pd.DataFrame({"x": list(self.input_spec.prepare(crops).numpy()), "targets": targets})
        lengths = pdf["length"].to_numpy(np.int64)
        windows = [np.frombuffer(b, dtype=np.uint8).reshape(self.window, side, side, 3) for b in pdf["window"]]
        frames = self.input_spec.prepare([crop for w, n in zip(windows, lengths) for crop in w[:n]]).numpy()
        x = np.zeros((len(pdf), self.window, *frames.shape[1:]), dtype=np.float32)
        x[np.arange(self.window)[None, :] < lengths[:, None]] = frames  # real crops first, zeros after
        return pd.DataFrame({"x": list(x), "lengths": lengths, "targets": targets})
