"""Still images as rated stimuli: read a photo into RGB pixels, or say why not (no Spark, no torch).

Why a module of its own: rated stimuli are photos as often as clips (Brooks et al. rated mimicry photos), and a
training job must tell a missing file from one that is neither a picture nor a video, in the same vocabulary of
reasons as video decoding (:data:`cxatlas.media.video.REASONS`), so both land in ``quarantine`` alike.
"""
from __future__ import annotations

import cv2
import fsspec
import numpy as np

from cxatlas.media.video import (VideoError, _file_size, _is_local, _local_path, _looks_like_video_container,
                                 _read_head)


def read_image(uri: str, max_side: int | None = None) -> np.ndarray | None:
    """RGB pixels of a still image (see :func:`decode_image`), or None when the file is not an image (a clip, or
    bytes no decoder knows: the caller then tries it as a video, which names the reason).

    Raises :class:`VideoError` ``missing_file`` / ``unreadable`` when the file cannot be had.
    """
    _file_size(uri)  # raises missing_file / unreadable with the same rules as videos
    try:
        if _looks_like_video_container(_read_head(uri)):
            return None  # a clip: never read a whole video into memory just to learn it is not a picture
        if _is_local(uri):
            with open(_local_path(uri), "rb") as fh:
                data = fh.read()
        else:
            with fsspec.open(uri, "rb") as fh:
                data = fh.read()
    except OSError as exc:
        raise VideoError("unreadable", uri, f"{type(exc).__name__}: {exc}") from exc
    return decode_image(data, max_side)


def decode_image(data: bytes, max_side: int | None = None) -> np.ndarray | None:
    """RGB uint8 ``(H, W, 3)`` pixels of an encoded still (JPEG, PNG, BMP, WebP, TIFF; alpha dropped, grey
    expanded), downscaled so its longest side is at most ``max_side``; None when the bytes are not an image."""
    if not data:
        return None
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)  # BGR, 3 channels always
    if img is None or img.size == 0:
        return None
    height, width = img.shape[:2]
    if max_side and max(height, width) > max_side:
        scale = max_side / max(height, width)
        img = cv2.resize(img, (max(1, round(width * scale)), max(1, round(height * scale))),
                         interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
