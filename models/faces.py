"""Faces in a window of frames: MTCNN detection, an IoU tracker, and square crops per tracked face.

Why: the expression models score one face over time, so a window of frames (from :func:`cxatlas.media.video.sample_windows`)
must become "face windows": for each person, the same face cropped in every frame. Three steps:

1. **Detect** with facenet-pytorch's MTCNN, using the P/R/O-Net weights that ship inside the ``facenet_pytorch``
   package (nothing is downloaded). Frames of a window have the same size, so they go through MTCNN's batched
   ``detect`` in chunks of ``batch_size``. Optionally the full detector (P-Net's image pyramid, then R- and O-Net)
   runs only on key frames, every ``detect_stride``-th frame of a window, and the faces are followed in between:

   * ``refine_stride=0``: the last frame of the window is a key frame too; nothing runs in between (the tracker
     interpolates the boxes).
   * ``refine_stride=k``: on every k-th frame after each key frame, and on the last frame of the window (instead of a
     full detection there), each face is re-measured by MTCNN's own cheap refinement stages alone
     (:meth:`FaceDetector.refine`: R-Net, then O-Net, with their box regression, thresholds and NMS) on the square
     region of its box in the frame evaluated before. A few small crops instead of an image pyramid: a few ms of one
     CPU core per face and frame, against about 35 ms for a full detection at 720x405. Where refinement loses a face (it moved too far, or
     left the picture), the full detector runs on that frame instead.

   With ``refine_stride`` >= 1, each track is also followed frame by frame by the same refinement beyond its first
   and last measured frames, for as long as the face is found (:meth:`FaceDetector._extend`): a face that enters or
   leaves between evaluated frames gets the span every-frame detection would give it. Key frames every
   ``detect_stride`` <= ``min_track_frames`` frames (a setting check) then find every face that stays
   ``min_track_frames`` frames in a row (the shortest track kept): such a run always contains a key frame.
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
from facenet_pytorch.models.utils.detect_face import (bbreg, batched_nms_numpy, generateBoundingBox, imresample, pad,
                                                      rerec)
from torch.nn import functional as F
from torchvision.ops.boxes import batched_nms, nms


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


def _continues(chains: list[tuple[np.ndarray, int]], found: np.ndarray, iou_threshold: float) -> bool:
    """Whether every face the previous evaluated frame saw (chains missed 0 frames) overlaps one ``found``."""
    seen = np.array([box for box, missed in chains if missed == 0]).reshape(-1, 4)
    if len(seen) == 0:
        return True
    if len(found) == 0:
        return False
    return bool((box_iou(seen, found[:, :4]).max(axis=1) >= iou_threshold).all())


def _carry(chains: list[tuple[np.ndarray, int]], found: np.ndarray, iou_threshold: float,
           max_missed: int) -> list[tuple[np.ndarray, int]]:
    """The chains for the next frame: the faces ``found`` on this one, plus the chains none of them continues
    (IoU < ``iou_threshold``) that have missed fewer than ``max_missed`` frames, their miss counted."""
    out = [(d[:4], 0) for d in found]
    if not chains:
        return out
    boxes = np.array([box for box, _ in chains])
    overlap = box_iou(boxes, found[:, :4]).max(axis=1) if len(found) else np.zeros(len(boxes))
    return out + [(box, missed + 1) for (box, missed), iou in zip(chains, overlap)
                  if iou < iou_threshold and missed < max_missed]


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
        Frames per MTCNN call of :meth:`detect`; bounds memory of the image pyramid. With ``refine_stride`` >= 1 the
        key frames are searched one at a time (each needs the boxes of the faces followed up to it).
    thresholds, factor
        MTCNN's per-stage thresholds and pyramid scale factor (facenet-pytorch defaults).
    detect_stride
        Run the full detector on every ``detect_stride``-th frame of a window (the key frames). 1 = every frame.
    refine_stride
        0: the window's last frame is a key frame too, and boxes between key frames are interpolated. k >= 1: the
        faces are re-measured by :meth:`refine` (R-Net and O-Net on the region of their last box) on every k-th
        frame after each key frame and on the last frame of the window (instead of a full detection there), and
        interpolated between measured frames. See the module docstring.
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
                 min_track_frames: int = 9, num_threads: int | None = 1, refine_stride: int = 0) -> None:
        if detect_stride < 1 or batch_size < 1:
            raise ValueError("detect_stride and batch_size must be >= 1")
        if refine_stride < 0:
            raise ValueError("refine_stride must be >= 0")
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
        self.refine_stride = refine_stride
        self.thresholds = tuple(float(t) for t in thresholds)

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

    def refine(self, frame: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Faces near ``boxes`` in one frame, by MTCNN's second and third stages alone -> ``(k, 5)`` float array
        ``x1, y1, x2, y2, prob`` (k may be 0), filtered like :meth:`detect` (``min_prob``).

        ``frame``: ``(H, W, 3)`` uint8 RGB; ``boxes``: ``(m, >=4)`` boxes, or one box (e.g. the faces of a
        neighbouring frame).
        Each box is made square (``rerec``) and handed to R-Net and then O-Net exactly as facenet-pytorch's
        ``detect_face`` hands them the P-Net candidates (same crops, area resampling, normalisation, thresholds,
        box regression and NMS), so a face that moved a little is re-measured, and a face that is gone scores below
        the thresholds and yields nothing.
        """
        boxes = np.atleast_2d(np.asarray(boxes, dtype=np.float64))
        if boxes.size == 0:
            return np.zeros((0, 5))
        mtcnn = self.mtcnn
        dtype = next(mtcnn.rnet.parameters()).dtype
        with torch.no_grad(), _torch_threads(self.num_threads):
            img = torch.as_tensor(np.ascontiguousarray(frame), device=self.device).permute(2, 0, 1)  # uint8; crops
            # become float one by one (detect_face converts the whole frame first: the same values, more work)
            cand = torch.zeros((len(boxes), 5), dtype=dtype, device=self.device)
            cand[:, :4] = torch.as_tensor(boxes[:, :4], dtype=dtype, device=self.device)
            cand = rerec(cand)
            for stage, (net, side) in enumerate(((mtcnn.rnet, 24), (mtcnn.onet, 48))):
                crops, cand = self._crops(img, cand, side, dtype, self.device)
                if len(cand) == 0:
                    return np.zeros((0, 5))
                out = net((crops - 127.5) * 0.0078125)
                reg, score = out[0], out[-1][:, 1]
                keep = score > self.thresholds[stage + 1]
                cand = torch.cat((cand[keep, :4], score[keep, None]), dim=1)
                reg = reg[keep]
                if len(cand) == 0:
                    return np.zeros((0, 5))
                if stage == 0:  # as detect_face: NMS, regression, squared again for O-Net
                    pick = nms(cand[:, :4], cand[:, 4], 0.7)
                    cand = rerec(bbreg(cand[pick], reg[pick]))
                else:  # regression, then NMS with the "Min" overlap
                    cand = bbreg(cand, reg)
                    cand = cand[batched_nms_numpy(cand[:, :4], cand[:, 4], torch.zeros(len(cand)), 0.7, "Min")]
        det = cand.detach().cpu().numpy().astype(np.float64).reshape(-1, 5)
        return det[det[:, 4] >= self.min_prob]

    def candidates(self, frame: np.ndarray) -> torch.Tensor:
        """MTCNN's first stage on one ``(H, W, 3)`` uint8 frame, as facenet-pytorch's ``detect_face`` runs it (the
        same image pyramid, P-Net, per-scale and global NMS, box regression, squaring) -> ``(k, 5)`` tensor
        ``x1, y1, x2, y2, score`` of the boxes it hands to R-Net."""
        mtcnn = self.mtcnn
        dtype = next(mtcnn.pnet.parameters()).dtype
        with torch.no_grad(), _torch_threads(self.num_threads):
            # NCHW float, as detect_face's NHWC view holds the same values: its pyramid resamples ~2x faster
            imgs = torch.as_tensor(np.ascontiguousarray(frame), device=self.device).permute(2, 0, 1)[None]
            imgs = imgs.contiguous().to(dtype)
            h, w = imgs.shape[2:4]
            m = 12.0 / mtcnn.min_face_size
            minl = min(h, w) * m
            scales, scale = [], m
            while minl >= 12:
                scales.append(scale)
                scale, minl = scale * mtcnn.factor, minl * mtcnn.factor
            boxes, inds, picks, offset = [], [], [], 0
            for scale in scales:
                im_data = (imresample(imgs, (int(h * scale + 1), int(w * scale + 1))) - 127.5) * 0.0078125
                reg, probs = mtcnn.pnet(im_data)
                boxes_scale, inds_scale = generateBoundingBox(reg, probs[:, 1], scale, self.thresholds[0])
                boxes.append(boxes_scale)
                inds.append(inds_scale)
                picks.append(batched_nms(boxes_scale[:, :4], boxes_scale[:, 4], inds_scale, 0.5) + offset)
                offset += boxes_scale.shape[0]
            pick = torch.cat(picks)
            boxes, inds = torch.cat(boxes)[pick], torch.cat(inds)[pick]
            boxes = boxes[batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7)]
            regw, regh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
            boxes = torch.stack([boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh,
                                 boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh, boxes[:, 4]], 1)
            return rerec(boxes)

    def detect_known(self, frame: np.ndarray, known: np.ndarray) -> np.ndarray:
        """Faces in one frame where the faces at ``known`` boxes are being followed -> ``(k, 5)`` like :meth:`detect`.

        The full detector's work with one shortcut: P-Net's candidates centred inside a known face's box (P-Net
        fires many times around every face, and each candidate costs R-Net a crop) are replaced by the known box
        itself; everything else (new faces anywhere in the frame) goes through R-Net and O-Net as in :meth:`detect`.
        Without known boxes the result is :meth:`detect`'s (the same stages on the same candidates; it converts only
        the crops, not the whole frame, to float, which makes it a little faster).
        """
        known = np.asarray(known, dtype=np.float64).reshape(-1, 4)
        cand = self.candidates(frame).detach().cpu().numpy().astype(np.float64)
        if len(known) and len(cand):
            cx, cy = (cand[:, 0] + cand[:, 2]) / 2, (cand[:, 1] + cand[:, 3]) / 2
            inside = ((cx[:, None] >= known[None, :, 0]) & (cx[:, None] <= known[None, :, 2])
                      & (cy[:, None] >= known[None, :, 1]) & (cy[:, None] <= known[None, :, 3])).any(axis=1)
            cand = cand[~inside]
        return self.refine(frame, np.concatenate([known, cand[:, :4]]))

    @staticmethod
    def _crops(img: torch.Tensor, cand: torch.Tensor, side: int, dtype: torch.dtype,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``detect_face``'s crops of ``cand`` boxes from one ``(3, H, W)`` uint8 image (the same pixel ranges, as
        ``dtype`` on ``device``), area-resampled to ``side``; boxes wholly outside the image are dropped."""
        h, w = img.shape[1:]
        y, ey, x, ex = pad(cand, w, h)
        crops, keep = [], []
        for k in range(len(y)):
            if ey[k] > (y[k] - 1) and ex[k] > (x[k] - 1):
                region = img[None, :, (y[k] - 1):ey[k], (x[k] - 1):ex[k]].to(dtype)
                crops.append(imresample(region.contiguous(), (side, side)))
                keep.append(k)
        if not keep:
            return torch.zeros((0, 3, side, side), dtype=dtype, device=device), cand[:0]
        return torch.cat(crops), cand[keep]

    def track(self, window: np.ndarray) -> list[FaceTrack]:
        """Detect on the key frames (every ``detect_stride``-th; with ``refine_stride=0`` also the last), refine on
        the frames ``refine_stride`` says, and link the detections into tracks (interpolated in between)."""
        n = len(window)
        if n == 0:
            return []
        if self.refine_stride and self.detect_stride > 1:
            tracks = track_faces(self._refined_detections(window), self.iou_threshold, self.max_missed, 1)
            tracks = self._extend(window, tracks)
            return [tr for tr in tracks if len(tr) >= self.min_track_frames]
        idx = sorted(set(range(0, n, self.detect_stride)) | {n - 1})
        found = self.detect(window[idx])
        detections: list[np.ndarray | None] = [None] * n
        for i, det in zip(idx, found):
            detections[i] = det
        return track_faces(detections, self.iou_threshold, self.max_missed, self.min_track_frames)

    def _refined_detections(self, window: np.ndarray) -> list[np.ndarray | None]:
        """Per frame of ``window``: MTCNN's faces on the key frames, :meth:`refine`'s on the refined frames, None
        on the others (the tracker interpolates there).

        Key frames: every ``detect_stride``-th, searched by the full detector (:meth:`detect_known`: the P-Net
        candidates of the faces being followed give way to their boxes). Refined frames: every
        ``refine_stride``-th after each key frame (before the next one) and the last frame of the window when it is
        no key frame. Faces are followed in
        order: each refined frame starts from the boxes of the frame evaluated before it. Where refine loses a face
        that frame had (it moved too far for its old box, or it left), the full detector runs on that frame
        instead, so a lost face costs one detection, never a track. A face that the detector misses is tried again
        from its last box for ``max_missed`` evaluated frames, as the tracker bridges a missed detection.
        """
        n = len(window)
        keys = list(range(0, n, self.detect_stride))
        refined = {k + j for k in keys for j in range(self.refine_stride, self.detect_stride, self.refine_stride)}
        refined = {t for t in refined | {n - 1} if t < n} - set(keys)
        detections: list[np.ndarray | None] = [None] * n
        chains: list[tuple[np.ndarray, int]] = []  # (last box, evaluated frames missed since)
        for t in range(n):
            boxes = np.array([box for box, _ in chains]).reshape(-1, 4)
            if t in keys:
                detections[t] = self.detect_known(window[t], boxes)
            elif t in refined:
                detections[t] = self.refine(window[t], boxes)
                if not _continues(chains, detections[t], self.iou_threshold):
                    detections[t] = self.detect_known(window[t], np.zeros((0, 4)))  # a face was lost: full search
            else:
                continue
            chains = _carry(chains, detections[t], self.iou_threshold, self.max_missed)
        return detections

    def _extend(self, window: np.ndarray, tracks: list[FaceTrack]) -> list[FaceTrack]:
        """Each track followed by :meth:`refine` frame by frame beyond its first and last measured frames, for as
        long as the face is found (and is no other track's): where a face enters or leaves the picture between
        evaluated frames, its track starts and ends where every-frame detection would have it, not at the nearest
        evaluated frame (a face seen on frames 0-8 of 18 is kept, as with every-frame detection, rather than being
        a one-frame track). Costs one refinement per frame walked, only at the ends of tracks inside a window."""
        out = []
        for i, tr in enumerate(tracks):
            others = tracks[:i] + tracks[i + 1:]
            before = self._walk(window, tr.boxes[0], range(tr.start - 1, -1, -1), others)
            after = self._walk(window, tr.boxes[-1], range(tr.stop, len(window)), others)
            if not before and not after:
                out.append(tr)
                continue
            rows = [*reversed(before), *np.concatenate([tr.boxes, tr.probs[:, None]], axis=1), *after]
            table = np.asarray(rows, dtype=np.float64)
            out.append(FaceTrack(start=tr.start - len(before), boxes=table[:, :4], probs=table[:, 4]))
        out.sort(key=lambda tr: tr.start)
        return out

    def _walk(self, window: np.ndarray, box: np.ndarray, frames: range, others: list[FaceTrack]) -> list[np.ndarray]:
        """``(x1, y1, x2, y2, prob)`` of the face at ``box``, refined on each of ``frames`` in turn from its box on the
        frame before, until it is not found or another track has it there."""
        found = []
        for t in frames:
            refined = self.refine(window[t], box[None, :4])
            if len(refined) == 0:
                break
            best = refined[int(np.argmax(box_iou(box[None, :4], refined[:, :4])[0]))]
            if box_iou(box[None, :4], best[None, :4])[0, 0] < self.iou_threshold:
                break
            taken = [o.boxes[t - o.start] for o in others if o.start <= t < o.stop]
            if taken and box_iou(best[None, :4], np.array(taken)).max() >= self.iou_threshold:
                break
            found.append(best)
            box = best
        return found

    def face_windows(self, window: np.ndarray, size: int = 160, margin: float = 0.2,
                     smooth_frames: int = 5) -> list[np.ndarray]:
        """One ``(T', size, size, 3)`` uint8 RGB array per face tracked through ``window``.

        See :func:`crop_track` for ``margin`` and ``smooth_frames``.
        """
        return [crop_track(window, tr, size, margin, smooth_frames) for tr in self.track(window)]
