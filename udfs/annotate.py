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
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

INPUT_COLUMNS = ("video_id", "uri", "title", "description")
OUTPUT_SCHEMA = ("video_id string, status string, reason string, detail string, n_windows int, n_faces int, "
                 "frames_decoded int, decode_seconds double, scores array<float>, "
                 "contexts array<struct<label:string,score:float>>")
ANNOTATED, QUARANTINED = "annotated", "quarantined"


@dataclass(frozen=True)
class AnnotateSettings:
    """Everything an executor needs, built on the driver from ``conf['annotate']`` (picklable, hashable)."""

    expression_model: str
    expression_checkpoint: str | None
    expression_batch_size: int
    device: str
    fps: float
    window_seconds: float
    max_windows: int
    placement: str
    max_side: int
    min_frames: int
    min_face_size: int
    min_prob: float
    min_track_frames: int
    detect_stride: int
    crop_size: int
    margin: float
    context_mode: str
    taxonomy: str
    head_checkpoint: str | None
    visual_checkpoint: str | None
    gate_checkpoint: str | None
    cosine_threshold: float
    temperature: float
    store_threshold: float
    store_top_k: int
    context_batch_size: int
    fault_video_ids: tuple[str, ...] = field(default=())

    @classmethod
    def from_section(cls, a: dict[str, Any]) -> "AnnotateSettings":
        v, f, e, c = a["video"], a["faces"], a["expression"], a["context"]
        return cls(
            expression_model=str(e["model"]), expression_checkpoint=e.get("checkpoint"),
            expression_batch_size=int(e["batch_size"]), device=str(a.get("device", "auto")),
            fps=float(v["fps"]), window_seconds=float(v["window_seconds"]), max_windows=int(v["max_windows"]),
            placement=str(v["placement"]), max_side=int(v["max_side"]), min_frames=int(v.get("min_frames", 1)),
            min_face_size=int(f["min_face_size"]), min_prob=float(f["min_prob"]),
            min_track_frames=int(f["min_track_frames"]), detect_stride=int(f["detect_stride"]),
            crop_size=int(f["crop_size"]), margin=float(f["margin"]),
            context_mode=str(c["mode"]), taxonomy=str(c["taxonomy"]), head_checkpoint=c.get("head_checkpoint"),
            visual_checkpoint=c.get("visual_checkpoint"), gate_checkpoint=c.get("gate_checkpoint"),
            cosine_threshold=float(c["cosine_threshold"]), temperature=float(c["temperature"]),
            store_threshold=float(c["store_threshold"]), store_top_k=int(c["store_top_k"]),
            context_batch_size=int(c["batch_size"]),
            fault_video_ids=tuple(str(x) for x in (a.get("fault_video_ids") or ())))


def task_device(preference: str) -> str:
    """The torch device for this task: Spark's GPU assignment first (so tasks sharing an executor use the GPUs Spark
    gave them), then any visible CUDA device, else the CPU. ``preference`` other than ``auto`` wins."""
    if preference != "auto":
        return preference
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        gpus = ctx.resources().get("gpu") if ctx is not None else None
        if gpus is not None and gpus.addresses:
            return f"cuda:{gpus.addresses[0]}"
    except Exception:  # noqa: BLE001 - outside a task, or a Spark without resources: fall through
        pass
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class LoadedModels:
    """The models one Python worker keeps for the life of the process."""

    expression: Any
    detector: Any
    context: Any
    labels: tuple[str, ...]
    device: str


_CACHE: dict[tuple, LoadedModels] = {}
_CACHE_LOCK = threading.Lock()


def load_models(settings: AnnotateSettings, device: str) -> LoadedModels:
    """Load (or reuse) the expression model, face detector and context model for these settings on ``device``."""
    key = (settings, device)
    with _CACHE_LOCK:
        if key not in _CACHE:
            from cxatlas.taxonomies import load_taxonomy
            from models.context import MixtureOfExpertsContext, TextContextModel
            from models.faces import FaceDetector
            from models.registry import load_expression_model

            started = time.time()
            expression = load_expression_model(settings.expression_model, settings.expression_checkpoint,
                                               device=device, batch_size=settings.expression_batch_size)
            detector = FaceDetector(min_face_size=settings.min_face_size, min_prob=settings.min_prob, device=device,
                                    detect_stride=settings.detect_stride, min_track_frames=settings.min_track_frames)
            taxonomy = load_taxonomy(settings.taxonomy)
            text = TextContextModel(taxonomy.labels, label_texts=taxonomy.source_names,
                                    head_checkpoint=settings.head_checkpoint,
                                    cosine_threshold=settings.cosine_threshold, temperature=settings.temperature,
                                    batch_size=settings.context_batch_size, device=device)
            context = MixtureOfExpertsContext(text, mode=settings.context_mode,
                                              visual_checkpoint=settings.visual_checkpoint,
                                              gate_checkpoint=settings.gate_checkpoint, device=device)
            _CACHE.clear()  # one configuration per worker at a time: bounded memory
            _CACHE[key] = LoadedModels(expression, detector, context, taxonomy.labels, device)
            log.info("worker loaded models for %s on %s in %.1fs", settings.expression_model, device,
                     time.time() - started)
        return _CACHE[key]


def _context_frames(windows: list[np.ndarray], size: int = 224):
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

    def __call__(self, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import torch

        models = load_models(self.settings, task_device(self.settings.device))
        with torch.inference_mode():
            for batch in batches:
                yield self.annotate(batch, models)

    # -- per batch -------------------------------------------------------------------------------------------------
    def annotate(self, batch: pd.DataFrame, models: LoadedModels) -> pd.DataFrame:
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

    def _faces(self, video: _Video, models: LoadedModels) -> None:
        from cxatlas.video import VideoError, sample_windows

        s = self.settings
        started = time.time()
        try:
            decoded = sample_windows(str(video.row["uri"]), fps=s.fps, window_seconds=s.window_seconds,
                                     max_windows=s.max_windows, placement=s.placement, max_side=s.max_side,
                                     min_frames=s.min_frames)
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
                tracks = models.detector.face_windows(window, size=s.crop_size, margin=s.margin)
                video.n_faces += len(tracks)
                video.crops.extend(tracks)
            if s.context_mode != "text_only":
                video.context_frames = _context_frames(list(decoded.windows))
        except Exception as exc:  # noqa: BLE001
            video.quarantine("face_detection_error", f"{type(exc).__name__}: {exc}")
        del decoded  # frames are dropped here; only face crops (and a few context frames) go on

    def _predict(self, videos: list[_Video], models: LoadedModels) -> None:
        faulty = [v.video_id for v in videos if v.video_id in self.settings.fault_video_ids]
        if faulty:
            raise RuntimeError(f"fault injected by annotate.fault_video_ids for {faulty}")
        crops = [c for v in videos for c in v.crops]
        window_scores = models.expression.predict_windows(crops)
        start = 0
        for v in videos:
            n = len(v.crops)
            # The paper's unit is the video: mean of its windows' scores; no face -> null scores.
            v.scores = window_scores[start:start + n].mean(axis=0) if n else None
            v.n_windows = n
            start += n

    def _expressions(self, videos: list[_Video], models: LoadedModels) -> None:
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

    def _contexts(self, videos: list[_Video], models: LoadedModels) -> list:
        from models.context import to_sparse

        s = self.settings
        ok = [v for v in videos if v.status == ANNOTATED]
        out: dict[str, list] = {}
        if ok:
            titles = [str(v.row.get("title") or "") for v in ok]
            descriptions = [str(v.row.get("description") or "") for v in ok]
            frames = [v.context_frames for v in ok] if s.context_mode != "text_only" else None
            scores = models.context.score(titles, descriptions, videos=frames)
            sparse = to_sparse(scores, models.labels, threshold=s.store_threshold, top_k=s.store_top_k)
            for v, pairs in zip(ok, sparse):
                out[v.video_id] = [{"label": label, "score": float(score)} for label, score in pairs]
        return [out.get(v.video_id) for v in videos]


def settings_dict(settings: AnnotateSettings) -> dict:
    return asdict(settings)
