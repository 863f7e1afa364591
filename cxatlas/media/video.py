"""Decode a video into short, fixed-rate windows of small RGB frames (PyAV).

Why this module exists: the expression models look at one-second windows of frames at 18 frames/s (the rate the
paper's temporal model was trained on), while uploaded videos come at any frame rate, resolution and container.
Everything that touches a codec lives here, so that the rest of the pipeline sees only uint8 arrays of a bounded
size and a single exception type.

Design choices, each made for a reason:

- **Frames are picked by timestamp, not by index.** Window ``w`` asks for the times ``start_w + k / fps``; each is
  served by the decoded frame whose presentation time is nearest. A 24 fps or 30 fps or variable-rate video
  therefore yields the same real-time spacing (frames are dropped, or repeated when the source is slower than
  ``fps``).
- **Only needed frames are converted, and they are downscaled at conversion.** The decoder produces YUV frames
  owned by FFmpeg; a frame is converted to RGB only when chosen, and swscale resizes it in the same pass so a
  1080p or 4K frame never exists as a full-size numpy array.
- **Seek instead of decoding everything** when the next window starts far ahead (``seek_threshold_s``): the demuxer
  jumps to the keyframe before the window and the decoder runs from there.
- **Every failure is a :class:`VideoError` with a machine-readable ``reason``** (see :data:`REASONS`), so a batch job
  can record why a video was skipped instead of dying on an FFmpeg exception.

Frames and windows stay in memory; nothing is written anywhere.

Known limits: display-matrix rotation (phone videos filmed upright) and non-square pixel aspect ratios are not
applied; streams without a declared duration fall back to consecutive windows from the start.
"""
from __future__ import annotations

import contextlib
import math
import os
import stat
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import av
import av.error
import fsspec
import numpy as np

from cxatlas.core.uris import SYSTEM_ROOTS

#: Why a video could not be used. Values of :attr:`VideoError.reason`.
REASONS: dict[str, str] = {
    "missing_file": "the path or URI does not exist",
    "unreadable": "the file exists but cannot be read (permissions, a storage error)",
    "not_a_regular_file": "a directory, device, FIFO, socket or pseudo-file (/proc, /sys): never opened as a stream",
    "empty_video": "zero-length file, or a video stream that yields no decodable frame",
    "not_a_video": "the bytes are not a media container FFmpeg can read (text, image, random bytes)",
    "no_video_stream": "a valid media file without a video stream (audio only, or only cover art)",
    "corrupt_video": "a recognised video container that cannot be parsed or decoded (truncated, damaged)",
    "unsupported_codec": "the video stream's codec has no decoder in this FFmpeg build",
    "too_few_frames": "no window reaches the caller's ``min_frames``, or the asked time range holds no frame",
}

#: FFmpeg demuxers that read a single picture: a renamed .jpg/.png must not pass as a one-frame video.
_IMAGE_FORMAT_MARKERS: tuple[str, ...] = ("image2", "_pipe", "tty")

#: Placement strategies accepted by :func:`sample_windows`.
PLACEMENTS: tuple[str, ...] = ("even", "start")


class VideoError(Exception):
    """A video that cannot be decoded into windows, with the reason why.

    Parameters
    ----------
    reason
        One of the keys of :data:`REASONS`; stable, so it can be stored in a table and counted.
    uri
        The path or URI that failed.
    detail
        Human-readable detail (usually FFmpeg's message).
    """

    def __init__(self, reason: str, uri: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown VideoError reason {reason!r}; expected one of {sorted(REASONS)}")
        self.reason = reason
        self.uri = uri
        self.detail = detail
        super().__init__(f"{reason}: {uri}" + (f" ({detail})" if detail else ""))

    def __reduce__(self) -> tuple:
        # Picklable with its attributes (Spark ships exceptions between processes).
        return (VideoError, (self.reason, self.uri, self.detail))


@dataclass
class DecodedVideo:
    """Windows of frames sampled from one video, plus what the decoder learned about it.

    Attributes
    ----------
    windows
        One ``(T, H, W, 3)`` uint8 RGB array per window, ``T <= round(window_seconds * fps)``.
    times
        Per window, the ``(T,)`` target times in seconds from the start of the video (spaced exactly ``1 / fps``).
    source_times
        Per window, the ``(T,)`` presentation times of the decoded frames that served those targets.
    duration
        Declared duration of the video stream in seconds (None when the container does not say).
    native_fps
        The stream's average frame rate (None when unknown).
    width, height
        Native frame size in pixels.
    out_width, out_height
        Size of the returned frames after downscaling to ``max_side``.
    n_decoded
        Frames the decoder produced (including those skipped between windows); the cost actually paid.
    codec, container
        FFmpeg codec and demuxer names, for diagnostics.
    fps
        The sampling rate of the windows.
    """

    windows: list[np.ndarray]
    times: list[np.ndarray]
    source_times: list[np.ndarray]
    duration: float | None
    native_fps: float | None
    width: int
    height: int
    out_width: int
    out_height: int
    n_decoded: int
    codec: str
    container: str
    fps: float


def _is_local(uri: str) -> bool:
    """True for plain paths and ``file://`` URIs, which PyAV opens itself (faster than a Python file object)."""
    return "://" not in uri or uri.startswith("file://")


def _local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def _looks_like_video_container(head: bytes) -> bool:
    """Magic-byte sniffing: does the file start like a video container?

    Why: FFmpeg says "invalid data" both for a text file named ``.mp4`` and for an MP4 whose index was cut off;
    the first bytes tell these apart, which matters because the second is a damaged upload, the first a wrong file.
    """
    if len(head) >= 8 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"):
        return True  # ISO base media (mp4, mov, m4v, 3gp)
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return True  # Matroska / WebM
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return True
    if head.startswith((b"FLV", b"OggS", b"\x00\x00\x01\xba", b"\x30\x26\xb2\x75\x8e\x66\xcf\x11")):
        return True  # FLV, Ogg, MPEG-PS, ASF/WMV
    return len(head) > 188 and head[0] == 0x47 and head[188] == 0x47  # MPEG-TS: sync byte every 188 bytes


def _read_head(uri: str, n: int = 192) -> bytes:
    try:
        if _is_local(uri):
            with open(_local_path(uri), "rb") as fh:
                return fh.read(n)
        with fsspec.open(uri, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def _classify_open_failure(uri: str, exc: Exception) -> VideoError:
    """Map an exception raised while opening a container to a :class:`VideoError`."""
    if isinstance(exc, (FileNotFoundError, av.error.FileNotFoundError)):
        return VideoError("missing_file", uri, str(exc))
    if isinstance(exc, (PermissionError, IsADirectoryError, av.error.PermissionError, av.error.IsADirectoryError)):
        return VideoError("unreadable", uri, str(exc))
    if isinstance(exc, av.error.FFmpegError):
        reason = "corrupt_video" if _looks_like_video_container(_read_head(uri)) else "not_a_video"
        return VideoError(reason, uri, str(exc))
    return VideoError("unreadable", uri, f"{type(exc).__name__}: {exc}")


def _file_size(uri: str) -> int:
    """Size in bytes; raises VideoError for a missing or unreadable path."""
    try:
        if _is_local(uri):
            path = _local_path(uri)
            if not os.path.exists(path):
                raise VideoError("missing_file", uri)
            mode = os.stat(path).st_mode
            if not stat.S_ISREG(mode):
                kind = "a directory" if stat.S_ISDIR(mode) else "a device, FIFO or socket"
                raise VideoError("not_a_regular_file", uri, kind)
            real = os.path.realpath(path)
            if any(real == root or real.startswith(root + "/") for root in SYSTEM_ROOTS):
                raise VideoError("not_a_regular_file", uri, f"{real} is a pseudo-file")
            return os.path.getsize(path)
        fs, path = fsspec.core.url_to_fs(uri)
        if not fs.exists(path):
            raise VideoError("missing_file", uri)
        return int(fs.size(path))
    except VideoError:
        raise
    except Exception as exc:  # noqa: BLE001 - storage back ends raise their own types (unknown protocol, auth...)
        raise VideoError("unreadable", uri, f"{type(exc).__name__}: {exc}") from exc


@contextlib.contextmanager
def open_video(uri: str) -> Iterator[av.container.InputContainer]:
    """Open a local path or any fsspec URI as a PyAV input container.

    Local paths (and ``file://``) are opened by FFmpeg directly; anything else (``s3://``, ``hdfs://``,
    ``memory://``...) through ``fsspec.open`` and handed to PyAV as a seekable file object. Both the container
    and the file object are closed on exit.

    Raises
    ------
    VideoError
        ``missing_file``, ``unreadable``, ``empty_video`` (zero bytes), ``not_a_video`` or ``corrupt_video``.
    """
    if _file_size(uri) == 0:
        raise VideoError("empty_video", uri, "zero-length file")
    fobj: BinaryIO | None = None
    try:
        if _is_local(uri):
            container = av.open(_local_path(uri), mode="r")
        else:
            fobj = fsspec.open(uri, "rb").open()
            container = av.open(fobj, mode="r")
    except Exception as exc:  # noqa: BLE001 - every open failure becomes a VideoError, by contract
        if fobj is not None:
            fobj.close()
        if isinstance(exc, VideoError):
            raise
        raise _classify_open_failure(uri, exc) from exc
    try:
        yield container
    finally:
        container.close()
        if fobj is not None:
            fobj.close()


def _video_stream(container: av.container.InputContainer, uri: str) -> av.video.stream.VideoStream:
    """The first real video stream (cover art in an audio file is not a video)."""
    fmt = container.format.name or ""
    if any(marker in fmt for marker in _IMAGE_FORMAT_MARKERS):
        raise VideoError("not_a_video", uri, f"demuxer {fmt!r} reads still images")
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise VideoError("no_video_stream", uri, f"streams: {[s.type for s in container.streams]}")


def _check_decoder(stream: av.video.stream.VideoStream, uri: str) -> None:
    """Fail early with ``unsupported_codec`` when FFmpeg has no decoder for the stream."""
    ctx = stream.codec_context
    name = ctx.name if ctx is not None else None
    if not name or name == "none":
        raise VideoError("unsupported_codec", uri, "the stream's codec is unknown to this FFmpeg build")
    try:
        av.codec.Codec(name, "r")
    except Exception as exc:  # noqa: BLE001 - PyAV raises several types for a missing decoder
        raise VideoError("unsupported_codec", uri, f"no decoder for {name!r}") from exc


def _stream_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    """Video stream duration in seconds; the container duration (which includes audio) only as a fallback."""
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def _output_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """Downscaled (width, height) with the longest side at most ``max_side``; aspect ratio kept, never upscaled."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def window_starts(duration: float | None, window_seconds: float, max_windows: int | None, placement: str,
                  start_s: float = 0.0, end_s: float | None = None) -> list[float]:
    """Start times (s) of the windows to sample within ``[start_s, end_s]`` (default: the whole video).

    ``'even'``: when the whole video fits in ``max_windows`` windows it is tiled completely (every frame of a short
    clip is used); otherwise ``max_windows`` windows are centred in equal segments of the video, which spreads the
    budget over the whole video and keeps away from the very first and last frames (logos, fades).
    ``'start'``: consecutive windows from the beginning (no seeking; the cheapest).
    An unknown duration degrades to ``'start'``: windows are produced until the stream ends.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if window_seconds <= 0:
        raise ValueError("window_seconds must be positive")
    limit = max_windows if max_windows is not None else math.inf
    end = end_s if end_s is not None else duration
    if end is not None and duration is not None:
        end = min(end, duration)
    if end is None:
        n = int(limit) if limit != math.inf else 1_000_000
        return [start_s + i * window_seconds for i in range(n)]
    span = end - start_s
    if span <= 0:
        return []
    n_tiles = max(1, math.ceil(span / window_seconds - 1e-9))
    if placement == "start" or n_tiles <= limit:
        return [start_s + i * window_seconds for i in range(int(min(n_tiles, limit)))]
    n = int(limit)
    segment = span / n
    return [start_s + max(0.0, (i + 0.5) * segment - window_seconds / 2) for i in range(n)]


class _FrameCursor:
    """Decoded frames of one stream as (time, frame) with one-frame look-ahead and seeking.

    Times are seconds relative to the stream's start time. Frames without a timestamp get one extrapolated from the
    previous frame, so timestamp-based selection still works on badly muxed files.
    """

    def __init__(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                 frame_step: float, uri: str) -> None:
        self.container = container
        self.stream = stream
        self.frame_step = frame_step
        self.uri = uri
        self.start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        self.n_decoded = 0
        self.last_time: float | None = None
        self.max_time: float | None = None  # latest time ever decoded (survives seeks), for truncation checks
        self._peeked: tuple[float, av.VideoFrame] | None = None
        self._it = container.decode(stream)
        self.exhausted = False

    def _next_raw(self) -> tuple[float, av.VideoFrame] | None:
        if self.exhausted:
            return None
        try:
            frame = next(self._it)
        except StopIteration:
            self.exhausted = True
            return None
        except av.error.DecoderNotFoundError as exc:
            raise VideoError("unsupported_codec", self.uri, str(exc)) from exc
        except av.error.FFmpegError as exc:
            raise VideoError("corrupt_video", self.uri, str(exc)) from exc
        self.n_decoded += 1
        if frame.time is not None:
            t = float(frame.time) - self.start
        else:
            t = (self.last_time + self.frame_step) if self.last_time is not None else 0.0
        self.last_time = t
        self.max_time = t if self.max_time is None else max(self.max_time, t)
        return t, frame

    def peek(self) -> tuple[float, av.VideoFrame] | None:
        if self._peeked is None:
            self._peeked = self._next_raw()
        return self._peeked

    def pop(self) -> tuple[float, av.VideoFrame] | None:
        item = self.peek()
        self._peeked = None
        return item

    def seek(self, t: float) -> None:
        """Jump to the keyframe at or before ``t`` (seconds); the decoder is flushed by PyAV."""
        offset = int((t + self.start) / self.stream.time_base)
        try:
            self.container.seek(offset, stream=self.stream, backward=True, any_frame=False)
        except av.error.FFmpegError as exc:
            raise VideoError("corrupt_video", self.uri, f"seek failed: {exc}") from exc
        self._it = self.container.decode(self.stream)
        self._peeked = None
        self.exhausted = False
        self.last_time = None


def _to_rgb(frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
    """Convert (and downscale in the same swscale pass) one decoded frame to RGB uint8."""
    if frame.width == width and frame.height == height:
        return frame.to_ndarray(format="rgb24")
    return frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()


def _sample_window(cursor: _FrameCursor, targets: np.ndarray, out_w: int, out_h: int,
                   prev: tuple[float, av.VideoFrame] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                      tuple[float, av.VideoFrame] | None]:
    """Serve each target time with the nearest decoded frame; stops early at the end of the stream.

    ``prev`` is the last frame with time <= the previous target (carried between windows so that a frame just
    before a window start can still be the nearest one). Returns frames, served targets, source times, new prev.
    """
    out = np.empty((len(targets), out_h, out_w, 3), dtype=np.uint8)
    src = np.empty(len(targets), dtype=np.float64)
    last_frame: av.VideoFrame | None = None  # a reference (not an id, which a freed frame's successor may reuse)
    n = 0
    for target in targets:
        while True:  # advance until the next frame lies after the target
            nxt = cursor.peek()
            if nxt is None or nxt[0] > target:
                break
            prev = cursor.pop()
        nxt = cursor.peek()
        if prev is None and nxt is None:
            break
        if nxt is None:  # past the last frame: hold it only for its own display duration
            if target - prev[0] > cursor.frame_step * 1.01:
                break
            chosen = prev
        elif prev is None:
            chosen = nxt
        else:
            chosen = prev if (target - prev[0]) <= (nxt[0] - target) else nxt
        if chosen[1] is last_frame:
            out[n] = out[n - 1]  # source slower than fps: repeat without converting again
        else:
            out[n] = _to_rgb(chosen[1], out_w, out_h)
            last_frame = chosen[1]
        src[n] = chosen[0]
        n += 1
    return out[:n], targets[:n].copy(), src[:n], prev


def sample_windows(uri: str, fps: float = 18.0, window_seconds: float = 1.0, max_windows: int | None = 8,
                   placement: str = "even", max_side: int | None = 720, min_frames: int = 1,
                   start_s: float = 0.0, end_s: float | None = None,
                   seek_threshold_s: float = 2.0, min_decoded_fraction: float | None = 0.9,
                   thread_type: str = "AUTO") -> DecodedVideo:
    """Decode ``uri`` into windows of frames resampled to ``fps``.

    Parameters
    ----------
    uri
        Local path or fsspec URI.
    fps
        Output frame rate; frames are picked by presentation time (nearest frame to each ``k / fps``).
    window_seconds
        Window length; a window has ``round(window_seconds * fps)`` frames, fewer at the end of the video.
    max_windows
        At most this many windows (None: tile the whole video).
    placement
        ``'even'`` or ``'start'``; see :func:`window_starts`.
    max_side
        Frames whose longest side exceeds this are downscaled as they are converted (None: keep native size).
    start_s, end_s
        Restrict the windows to this time range in seconds (default: the whole video); a window starting before
        ``end_s`` may run past it by up to ``window_seconds``.
    min_frames
        Windows with fewer frames are dropped; if none is left, ``too_few_frames`` is raised. The default 1 only
        drops empty windows (a video with no decodable frame raises ``empty_video``). Frames are counted after
        resampling: a one-frame 15 fps video shows its picture for 1/15 s, i.e. at two 18 fps ticks.
    seek_threshold_s
        Seek instead of decoding through when the next window starts more than this far past the decoder.
    min_decoded_fraction
        When the stream ends before this fraction of its declared duration, the file is truncated:
        ``corrupt_video``. None disables the check (checked only when decoding actually reaches the end).
    thread_type
        PyAV decoder threading (``'AUTO'`` = frame + slice threads).

    Returns
    -------
    DecodedVideo

    Raises
    ------
    VideoError
        For every reason in :data:`REASONS`.
    """
    if fps <= 0:
        raise ValueError("fps must be positive")
    n_per_window = max(1, round(window_seconds * fps))
    with open_video(uri) as container:
        stream = _video_stream(container, uri)
        _check_decoder(stream, uri)
        stream.thread_type = thread_type
        width, height = stream.codec_context.width, stream.codec_context.height
        if not width or not height:
            raise VideoError("corrupt_video", uri, "stream has no frame size")
        out_w, out_h = _output_size(width, height, max_side)
        rate = stream.average_rate or stream.guessed_rate
        native_fps = float(rate) if rate else None
        duration = _stream_duration(container, stream)
        frame_step = 1.0 / native_fps if native_fps else 1.0 / fps
        cursor = _FrameCursor(container, stream, frame_step, uri)

        windows: list[np.ndarray] = []
        times: list[np.ndarray] = []
        sources: list[np.ndarray] = []
        prev: tuple[float, av.VideoFrame] | None = None
        n_short = 0
        starts = window_starts(duration, window_seconds, max_windows, placement, start_s, end_s)
        if not starts:
            raise VideoError("too_few_frames", uri, f"no frame in [{start_s}, {end_s}] s; video duration {duration} s")
        for start in starts:
            if cursor.exhausted and cursor.peek() is None:
                break
            position = cursor.last_time if cursor.last_time is not None else 0.0
            if start - position > seek_threshold_s:
                cursor.seek(start)
                prev = None
            targets = start + np.arange(n_per_window, dtype=np.float64) / fps
            frames, served, src, prev = _sample_window(cursor, targets, out_w, out_h, prev)
            if len(frames) == 0:
                break
            if len(frames) < min_frames:
                n_short += 1
                continue
            windows.append(frames)
            times.append(served)
            sources.append(src)

        if cursor.n_decoded == 0:
            raise VideoError("empty_video", uri, "no decodable frame")
        if (min_decoded_fraction is not None and duration and cursor.exhausted and cursor.max_time is not None
                and cursor.max_time + frame_step < min_decoded_fraction * duration):
            raise VideoError("corrupt_video", uri,
                             f"stream ends at {cursor.max_time:.2f}s of a declared {duration:.2f}s (truncated)")
        if not windows:
            raise VideoError("too_few_frames", uri, f"{n_short} window(s) shorter than {min_frames} frames")
        return DecodedVideo(windows=windows, times=times, source_times=sources, duration=duration,
                            native_fps=native_fps, width=width, height=height, out_width=out_w, out_height=out_h,
                            n_decoded=cursor.n_decoded, codec=stream.codec_context.name,
                            container=container.format.name, fps=fps)


def decode_frame_count(uri: str, thread_type: str = "AUTO") -> int:
    """Decode every frame of the first video stream and return how many there were; converts nothing.

    Why: the bare PyAV reference for benchmarks (frames/s of :func:`sample_windows` vs the codec alone on the same
    files). Failures are mapped to :class:`VideoError` like everywhere else in this module, but a file cut short
    after a front index (``faststart``) just counts fewer frames: there is no truncation check here.
    """
    with open_video(uri) as container:
        stream = _video_stream(container, uri)
        _check_decoder(stream, uri)
        stream.thread_type = thread_type
        n = 0
        try:
            for _ in container.decode(stream):
                n += 1
        except av.error.FFmpegError as exc:
            raise VideoError("corrupt_video", uri, str(exc)) from exc
        if n == 0:
            raise VideoError("empty_video", uri, "no decodable frame")
        return n
