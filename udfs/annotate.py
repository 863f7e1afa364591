"""The annotation UDF: uploads in, per-video expression and context scores out, on the executors.

``AnnotateBatches`` is the function given to ``DataFrame.mapInPandas``. Following Spark's ``predict_batch_udf`` /
``model_cache`` design, models load ONCE per Python worker (``spark.python.worker.reuse=true``) into a small cache
keyed by the settings, batches span several videos, and every forward pass runs under ``torch.inference_mode()`` on
the device Spark assigned to the task (``spark.task.resource.gpu.amount``), else CUDA if visible, else the CPU.

Frames and face crops live only inside this function: they never reach the driver or a table, and no embedding or
identity is computed or kept. A video that cannot be decoded, or whose model call fails, comes back as a
``quarantined`` row with its reason while the rest of the batch goes on.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pandas as pd

from cxatlas.core.settings import AnnotateSettings
from cxatlas.core.uris import UriPolicy
from cxatlas.models.annotation import AnnotationModels, build_annotation_models
from cxatlas.models.device import pick_device

log = logging.getLogger(__name__)

INPUT_COLUMNS = ("video_id", "uri", "title", "description")
OUTPUT_SCHEMA = ("video_id string, status string, reason string, detail string, n_windows int, n_faces int, "
                 "frames_decoded int, decode_seconds double, scores array<float>, "
                 "contexts array<struct<label:string,score:float>>")
ANNOTATED, QUARANTINED = "annotated", "quarantined"


def task_gpus() -> list[str]:
    """The GPU addresses Spark assigned to the running task (``spark.task.resource.gpu.amount``); [] outside a task
    or when none were assigned."""
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        gpus = ctx.resources().get("gpu") if ctx is not None else None
        return list(gpus.addresses) if gpus is not None else []
    except Exception:  # noqa: BLE001 - a Spark without resource scheduling: no assignment
        return []


_CACHE: dict[tuple, AnnotationModels] = {}
_CACHE_LOCK = threading.Lock()


def load_models(settings: AnnotateSettings, device: str) -> AnnotationModels:
    """The models for these settings on ``device``, loaded once per Python worker and then reused."""
    key = (settings, str(device))
    with _CACHE_LOCK:
        if key not in _CACHE:
            started = time.time()
            models = build_annotation_models(settings, device)
            _CACHE.clear()  # one configuration per worker at a time: bounded memory
            _CACHE[key] = models
            log.info("worker loaded models for %s on %s in %.1fs", settings.expression.model, device,
                     time.time() - started)
        return _CACHE[key]


def _context_frames(windows: list[np.ndarray], size: int):
    """One middle frame per window, resized for the visual context expert, as a (F, 3, size, size) uint8 tensor."""
    import cv2
    import torch

    frames = [cv2.resize(w[len(w) // 2], (size, size), interpolation=cv2.INTER_AREA) for w in windows]
    if not frames:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8)
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


@dataclass
class _Video:
    video_id: str
    row: dict
    status: str = ANNOTATED
    reason: str | None = None
    detail: str | None = None
    crops: list = field(default_factory=list)
    n_faces: int = 0
    n_windows: int = 0
    frames_decoded: int = 0
    decode_seconds: float = 0.0
    context_frames: Any = None
    scores: np.ndarray | None = None

    def quarantine(self, reason: str, detail: str) -> None:
        self.status, self.reason, self.detail = QUARANTINED, reason, detail[:2000]
        self.crops, self.scores, self.n_windows = [], None, 0


@dataclass
class AnnotateBatches:
    """``mapInPandas`` function: batches of uploads -> one output row per video (see ``OUTPUT_SCHEMA``)."""

    settings: AnnotateSettings
    uri_policy: UriPolicy | None = None  # checked again right before a file is opened (README "Security")

    def __call__(self, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import torch

        models = load_models(self.settings, str(pick_device(self.settings.device, task_gpus())))
        with torch.inference_mode():
            for batch in batches:
                yield self.annotate(batch, models)

    # -- per batch -------------------------------------------------------------------------------------------------
    def annotate(self, batch: pd.DataFrame, models: AnnotationModels) -> pd.DataFrame:
        videos = [_Video(str(r["video_id"]), r) for r in batch.to_dict("records")]
        for video in videos:
            self._faces(video, models)
        self._expressions([v for v in videos if v.status == ANNOTATED], models)
        contexts = self._contexts(videos, models)
        return pd.DataFrame({
            "video_id": [v.video_id for v in videos],
            "status": [v.status for v in videos],
            "reason": [v.reason for v in videos],
            "detail": [v.detail for v in videos],
            "n_windows": pd.array([v.n_windows for v in videos], dtype="int32"),
            "n_faces": pd.array([v.n_faces for v in videos], dtype="int32"),
            "frames_decoded": pd.array([v.frames_decoded for v in videos], dtype="int32"),
            "decode_seconds": [v.decode_seconds for v in videos],
            "scores": [None if v.scores is None else v.scores.astype(np.float32).tolist() for v in videos],
            "contexts": contexts,
        })

    def _faces(self, video: _Video, models: AnnotationModels) -> None:
        from cxatlas.media.video import VideoError, sample_windows

        v, f = self.settings.video, self.settings.faces
        started = time.time()
        refused = self.uri_policy.refusal(video.row["uri"], resolve_links=True) if self.uri_policy else None
        if refused is not None:  # ingested before the policy, or under other settings: never opened
            video.quarantine(*refused)
            return
        try:
            decoded = sample_windows(str(video.row["uri"]), fps=v.fps, window_seconds=v.window_seconds,
                                     max_windows=v.max_windows, placement=v.placement, max_side=v.max_side,
                                     min_frames=v.min_frames, seek_threshold_s=v.seek_threshold_s,
                                     min_decoded_fraction=v.min_decoded_fraction)
        except VideoError as exc:
            video.quarantine(exc.reason, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - any decoder surprise is this video's problem, not the batch's
            video.quarantine("decode_error", f"{type(exc).__name__}: {exc}")
            return
        video.decode_seconds = time.time() - started
        video.frames_decoded = int(decoded.n_decoded)
        try:
            for window in decoded.windows:
                tracks = models.detector.face_windows(window, size=f.crop_size, margin=f.margin,
                                                      smooth_frames=f.smooth_frames)
                video.n_faces += len(tracks)
                video.crops.extend(tracks)
            if self.settings.context.mode != "text_only":
                video.context_frames = _context_frames(list(decoded.windows), self.settings.context.frame_size)
        except Exception as exc:  # noqa: BLE001
            video.quarantine("face_detection_error", f"{type(exc).__name__}: {exc}")
        del decoded  # frames are dropped here; only face crops (and a few context frames) go on

    def _predict(self, videos: list[_Video], models: AnnotationModels) -> None:
        crops = [c for v in videos for c in v.crops]
        window_scores = models.expression.predict_windows(crops)
        start = 0
        for v in videos:
            n = len(v.crops)
            # The paper's unit is the video: mean of its windows' scores; no face -> null scores.
            v.scores = window_scores[start:start + n].mean(axis=0) if n else None
            v.n_windows = n
            start += n

    def _expressions(self, videos: list[_Video], models: AnnotationModels) -> None:
        """Score all windows of the batch in one pass; if that fails, isolate the failing video(s)."""
        if not videos:
            return
        try:
            self._predict(videos, models)
        except Exception:  # noqa: BLE001 - retried one video at a time to find the culprit
            for video in videos:
                try:
                    self._predict([video], models)
                except Exception as exc:  # noqa: BLE001
                    video.quarantine("model_error", f"{type(exc).__name__}: {exc}")
        for video in videos:
            video.crops = []  # scored: the crops are dropped now

    def _score_contexts(self, videos: list[_Video], models: AnnotationModels) -> dict[str, list]:
        from cxatlas.models.context import to_sparse

        s = self.settings.context
        titles = [str(v.row.get("title") or "") for v in videos]
        descriptions = [str(v.row.get("description") or "") for v in videos]
        frames = [v.context_frames for v in videos] if s.mode != "text_only" else None
        scores = models.context.score(titles, descriptions, videos=frames)
        sparse = to_sparse(scores, models.labels, threshold=s.store_threshold, top_k=s.store_top_k)
        return {v.video_id: [{"label": label, "score": float(score)} for label, score in pairs]
                for v, pairs in zip(videos, sparse)}

    def _contexts(self, videos: list[_Video], models: AnnotationModels) -> list:
        """Score the batch's contexts in one pass; if that fails, isolate the failing video(s) as expression scoring
        does: each is quarantined (``context_model_error``), the rest of the batch keeps its scores."""
        ok = [v for v in videos if v.status == ANNOTATED]
        out: dict[str, list] = {}
        if ok:
            try:
                out = self._score_contexts(ok, models)
            except Exception:  # noqa: BLE001 - retried one video at a time to find the culprit
                for video in ok:
                    try:
                        out.update(self._score_contexts([video], models))
                    except Exception as exc:  # noqa: BLE001
                        video.quarantine("context_model_error", f"{type(exc).__name__}: {exc}")
        return [out.get(v.video_id) for v in videos]

