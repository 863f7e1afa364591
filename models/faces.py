"""Faces in a window of frames: MTCNN detection, an IoU tracker, and square crops per tracked face.

Why: the expression models score one face over time, so a window of frames (from :func:`cxatlas.media.video.sample_windows`)
must become "face windows": for each person, the same face cropped in every frame. Three steps:

1. **Detect** with facenet-pytorch's MTCNN, using the P/R/O-Net weights that ship inside the ``facenet_pytorch``
   package (nothing is downloaded). Frames of a window have the same size, so they go through MTCNN's batched
   ``detect`` in chunks of ``batch_size``. Optionally only every ``detect_stride``-th frame is run (plus the last),
   trading a little box accuracy for speed on CPU.
2. **Track** with a greedy IoU tracker (:func:`track_faces`): a detection continues the track whose last box it
   overlaps most (IoU >= ``iou_threshold``); a track survives ``max_missed`` evaluated frames without a match (a blink
   of the detector, a hand in front of the face); boxes for frames in between are linearly interpolated. Tracks
   spanning fewer than ``min_track_frames`` frames are dropped: a face seen for a few frames is too short for a
   temporal model and is usually a false positive.
3. **Crop** (:func:`crop_track`): one square per frame, centred on the temporally smoothed box centre, with a side
   fixed for the whole track (median box size plus ``margin``), so the face keeps its position and scale across the
   window (this is the "alignment"; there is no in-plane rotation, matching how FER-style models were trained).
   Parts of the square outside the frame are black. Crops are resized with torch (bilinear, antialiased) to
   ``size`` and returned as RGB uint8.

No embeddings, no identities: a track exists only within one window, and nothing is written anywhere.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from facenet_pytorch import MTCNN
from torch.nn import functional as F


@dataclass
class FaceTrack:
    """One face followed through consecutive frames of a window.

    Attributes
    ----------
    start
        Index (in the window) of the first frame of the track.
    boxes
        ``(T', 4)`` float boxes ``x1, y1, x2, y2`` in pixels for frames ``start .. start + T' - 1``; frames without
        a detection of this face carry a box interpolated between its neighbours.
    probs
        ``(T',)`` MTCNN probabilities, NaN on interpolated frames.
    """

    start: int
    boxes: np.ndarray
    probs: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def stop(self) -> int:
        """One past the index of the last frame of the track."""
        return self.start + len(self.boxes)

    @property
    def detected(self) -> np.ndarray:
        """``(T',)`` bool: True where the box is a detection rather than an interpolation."""
        return ~np.isnan(self.probs)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``(n, 4)`` and ``(m, 4)`` boxes in ``x1, y1, x2, y2`` form -> ``(n, m)``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def track_faces(detections: Sequence[np.ndarray | None], iou_threshold: float = 0.4, max_missed: int = 1,
                min_track_frames: int = 9) -> list[FaceTrack]:
    """Link per-frame detections of one window into face tracks (greedy IoU matching).

    Parameters
    ----------
    detections
        One entry per frame of the window: a ``(k, 5)`` array ``x1, y1, x2, y2, prob`` for frames the detector ran
        on (``k`` may be 0), or None for frames it skipped (see ``detect_stride``).
    iou_threshold
        Minimum IoU between a track's last box and a detection to continue the track. Faces move little in a
        1/18 s step, so 0.4 tolerates fast head motion while keeping two neighbouring faces apart.
    max_missed
        Evaluated frames in a row a track may go without a matching detection before it is closed.
    min_track_frames
        Tracks spanning fewer frames (first to last detection, inclusive) are dropped.

    Returns
    -------
    list[FaceTrack]
        Ordered by start frame, then by position in the detector's output.
    """
    active: list[dict] = []
    finished: list[dict] = []
    for t, det in enumerate(detections):
        if det is None:
            continue
        det = np.asarray(det, dtype=np.float64).reshape(-1, 5)
        unmatched = set(range(len(det)))
        matched_tracks: set[int] = set()
        if active and len(det):
            iou = box_iou(np.stack([tr["boxes"][-1] for tr in active]), det[:, :4])
            for flat in np.argsort(-iou, axis=None):
                i, j = np.unravel_index(flat, iou.shape)
                if iou[i, j] < iou_threshold:
                    break
                if i in matched_tracks or j not in unmatched:
                    continue
                tr = active[i]
                tr["frames"].append(t)
                tr["boxes"].append(det[j, :4])
                tr["probs"].append(det[j, 4])
                tr["missed"] = 0
                matched_tracks.add(int(i))
                unmatched.discard(int(j))
        still: list[dict] = []
        for i, tr in enumerate(active):
            if i not in matched_tracks:
                tr["missed"] += 1
            (still if tr["missed"] <= max_missed else finished).append(tr)
        active = still
        for j in sorted(unmatched):
            active.append({"frames": [t], "boxes": [det[j, :4]], "probs": [det[j, 4]], "missed": 0})
    tracks = []
    for tr in finished + active:
        frames = np.asarray(tr["frames"])
        span = frames[-1] - frames[0] + 1
        if span < min_track_frames:
            continue
        idx = np.arange(frames[0], frames[-1] + 1)
        boxes_at = np.asarray(tr["boxes"])
        boxes = np.stack([np.interp(idx, frames, boxes_at[:, c]) for c in range(4)], axis=1)
        probs = np.full(span, np.nan)
        probs[frames - frames[0]] = tr["probs"]
        tracks.append(FaceTrack(start=int(frames[0]), boxes=boxes, probs=probs))
    tracks.sort(key=lambda tr: tr.start)
    return tracks


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average along axis 0 with edge values repeated (no shrink at the ends)."""
    if width <= 1 or len(x) <= 1:
        return x
    half = width // 2
    padded = np.concatenate([np.repeat(x[:1], half, axis=0), x, np.repeat(x[-1:], half, axis=0)])
    kernel = np.ones(2 * half + 1) / (2 * half + 1)
    return np.stack([np.convolve(padded[:, c], kernel, mode="valid") for c in range(x.shape[1])], axis=1)


def crop_track(window: np.ndarray, track: FaceTrack, size: int, margin: float = 0.2,
               smooth_frames: int = 5) -> np.ndarray:
    """Square crops of one tracked face, resized to ``size`` -> ``(T', size, size, 3)`` uint8 RGB.

    Parameters
    ----------
    window
        ``(T, H, W, 3)`` uint8 frames the track was found in.
    track
        The face to cut out.
    size
        Output side in pixels (160 for FaceNet-style models; grey 64x64 inputs are made later by their own
        preprocessing).
    margin
        Context added on each side, as a fraction of the face box side (0.2: the square is 1.4x the box).
    smooth_frames
        Width of the moving average applied to box centres, to remove detector jitter.
    """
    boxes = track.boxes
    centres = _moving_average(np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1),
                              smooth_frames)
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    side = max(2, int(round(float(np.median(sides)) * (1 + 2 * margin))))
    _, height, width, _ = window.shape
    crops = np.zeros((len(track), side, side, 3), dtype=np.uint8)
    for k, (cx, cy) in enumerate(centres):
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1, sy1 = min(x0 + side, width), min(y0 + side, height)
        if sx1 > sx0 and sy1 > sy0:
            crops[k, sy0 - y0: sy1 - y0, sx0 - x0: sx1 - x0] = window[track.start + k, sy0:sy1, sx0:sx1]
    if side == size:
        return crops
    tensor = torch.from_numpy(crops).permute(0, 3, 1, 2).float()
    resized = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False,
                            antialias=side > size)
    return resized.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (process-wide), restoring it afterwards."""
    if n is None or n == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class FaceDetector:
    """MTCNN face detection and tracking for windows of video frames.

    Parameters
    ----------
    min_face_size
        Smallest face side in pixels MTCNN looks for; also sets the cost (its image pyramid starts at
        ``12 / min_face_size`` of the frame).
    min_prob
        Detections below this final-stage probability are discarded (MTCNN itself keeps >= 0.7).
    device
        Torch device (None: CPU).
    batch_size
        Frames per MTCNN call; bounds memory of the image pyramid.
    thresholds, factor
        MTCNN's per-stage thresholds and pyramid scale factor (facenet-pytorch defaults).
    detect_stride
        Run the detector on every ``detect_stride``-th frame of a window (and on its last frame); boxes in between
        are interpolated by the tracker. 1 = every frame.
    iou_threshold, max_missed, min_track_frames
        Tracker settings, see :func:`track_faces`.
    num_threads
        torch intra-op threads while MTCNN runs (None: leave torch's setting). Default 1 because MTCNN is many
        small convolutions: on a 2-core machine one thread is as fast as two when idle, and 3-10x faster when other
        processes compete for the cores (18 frames at 640x360: 0.7 s vs 2.4-7.7 s). Spark runs one task per core
        anyway, so parallelism comes from tasks, not threads.
    """

    def __init__(self, min_face_size: int = 40, min_prob: float = 0.9, device: str | torch.device | None = None,
                 batch_size: int = 18, thresholds: Sequence[float] = (0.6, 0.7, 0.7), factor: float = 0.709,
                 detect_stride: int = 1, iou_threshold: float = 0.4, max_missed: int = 1,
                 min_track_frames: int = 9, num_threads: int | None = 1) -> None:
        if detect_stride < 1 or batch_size < 1:
            raise ValueError("detect_stride and batch_size must be >= 1")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        # keep_all: every face; select_largest=False: order by probability. Weights come from the package folder.
        self.mtcnn = MTCNN(min_face_size=min_face_size, thresholds=list(thresholds), factor=factor, keep_all=True,
                           select_largest=False, device=self.device).eval()
        self.min_prob = min_prob
        self.batch_size = batch_size
        self.detect_stride = detect_stride
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self.min_track_frames = min_track_frames
        self.num_threads = num_threads

    def detect(self, frames: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
        """Faces in each frame: a list of ``(k, 5)`` float arrays ``x1, y1, x2, y2, prob`` (k may be 0).

        ``frames`` must share one size (MTCNN batches them into one tensor); ``(T, H, W, 3)`` uint8 RGB.
        """
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected (T, H, W, 3) RGB frames, got shape {frames.shape}")
        out: list[np.ndarray] = []
        for i in range(0, len(frames), self.batch_size):
            with _torch_threads(self.num_threads):
                boxes, probs = self.mtcnn.detect(frames[i: i + self.batch_size])
            for b, p in zip(boxes, probs):
                if b is None:
                    out.append(np.zeros((0, 5)))
                    continue
                det = np.concatenate([np.asarray(b, dtype=np.float64).reshape(-1, 4),
                                      np.asarray(p, dtype=np.float64).reshape(-1, 1)], axis=1)
                out.append(det[det[:, 4] >= self.min_prob])
        return out

    def track(self, window: np.ndarray) -> list[FaceTrack]:
        """Detect (every ``detect_stride``-th frame and the last) and link detections into tracks."""
        n = len(window)
        if n == 0:
            return []
        idx = sorted(set(range(0, n, self.detect_stride)) | {n - 1})
        found = self.detect(window[idx])
        detections: list[np.ndarray | None] = [None] * n
        for i, det in zip(idx, found):
            detections[i] = det
        return track_faces(detections, self.iou_threshold, self.max_missed, self.min_track_frames)

    def face_windows(self, window: np.ndarray, size: int = 160, margin: float = 0.2,
                     smooth_frames: int = 5) -> list[np.ndarray]:
        """One ``(T', size, size, 3)`` uint8 RGB array per face tracked through ``window``.

        See :func:`crop_track` for ``margin`` and ``smooth_frames``.
        """
        return [crop_track(window, tr, size, margin, smooth_frames) for tr in self.track(window)]
