"""``cxatlas predict-images``: a trained expression model's outputs on still images, one row per image, in the form
``cxatlas ppca`` reads (an id column and one numeric column per output, e.g. brooks288's 288 ``country:label``).

Why: Brooks et al. (2024) "applied PPCA between the 288 outputs of the DNN applied to the seed images, which directly
measure facial movement in the seed images, and the 288 averaged perceptual judgments of the seed images". ``cxatlas
annotate`` scores videos (it refuses stills: windows of face tracks are its unit); this step scores the seed images
themselves. Each image gets the face crop the model was trained on: "All images were cropped, resized to a 160x160
pixel square centered around the face using MTCNN" -- the most probable MTCNN face (the ``annotate.faces`` settings,
as ``cxatlas train`` crops rated photos), cut out at ``train.crop_size`` with ``annotate.faces.margin``.
``--whole-image`` skips detection (images that are already face crops, e.g. FaceGen renders).

Input: a CSV of ``<id column>, image`` (relative paths from the CSV's folder). Output: ``--out`` (CSV) with the id
column and the model's labels as columns, and beside it ``<out stem>_no_face.csv`` listing images without a face
(left out of the outputs; drop them from the judgments too, or ``cxatlas ppca`` names them as missing). Bad input
(missing file or column, unreadable image, duplicated id) is refused before anything is written.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxatlas.core.config import Config
from cxatlas.core.errors import UserError

__all__ = ["ImagesInputError", "PredictImagesReport", "run_predict_images"]


class ImagesInputError(UserError, ValueError):
    """An image list that cannot be scored; the message names the file and what to change."""


@dataclass
class PredictImagesReport:
    out: str
    model_version: str
    images: int
    scored: int
    no_face: int
    labels: int
    seconds: float

    def summary(self) -> str:
        return (f"scored {self.scored} of {self.images} images with {self.model_version} ({self.labels} outputs) in "
                f"{self.seconds:.1f}s; {self.no_face} without a face (listed beside the output): {self.out}")


def _read_list(path: str, id_column: str) -> pd.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise ImagesInputError(f"image list {p} does not exist")
    try:
        df = pd.read_csv(p, dtype=str)
    except Exception as exc:  # noqa: BLE001 - any parser error is bad input
        raise ImagesInputError(f"cannot read image list {p} as CSV: {exc}") from None
    missing = [c for c in (id_column, "image") if c not in df.columns]
    if missing:
        raise ImagesInputError(f"image list {p} lacks column(s) {missing} (its columns: {list(df.columns)})")
    if df[[id_column, "image"]].isna().any().any():
        row = int(df[[id_column, "image"]].isna().any(axis=1).to_numpy().argmax())
        raise ImagesInputError(f"image list {p} row {row + 2} has an empty {id_column} or image")
    dup = df[id_column][df[id_column].duplicated()].unique()
    if dup.size:
        raise ImagesInputError(f"image list {p} has duplicated {id_column} {list(dup[:5])}")
    df["image"] = [x if Path(x).is_absolute() else str(p.parent / x) for x in df["image"]]
    absent = [x for x in df["image"] if not Path(x).is_file()]
    if absent:
        raise ImagesInputError(f"image list {p}: {len(absent)} image(s) do not exist, first {absent[0]}")
    return df


def run_predict_images(cfg: Config, model: str, images: str, out: str, *, checkpoint: str | None = None,
                       id_column: str = "stimulus_id", whole_image: bool = False) -> PredictImagesReport:
    """Score every image of ``images`` with ``model`` (``checkpoint`` its weights) and write ``out``."""
    from cxatlas.media.image import read_image
    from cxatlas.models.annotation import build_face_detector
    from cxatlas.models.faces import FaceTrack, crop_track
    from cxatlas.models.registry import load_expression_model

    t0 = time.perf_counter()
    listing = _read_list(images, id_column)
    expr = load_expression_model(model, checkpoint, device=cfg.settings.train.device)
    pixels = []
    for uri in listing["image"]:
        img = read_image(uri, cfg.settings.train.image_max_side)
        if img is None:
            raise ImagesInputError(f"{uri} is not a still image (a clip or an unknown format)")
        pixels.append(img)
    faces = cfg.settings.annotate.faces
    crops, no_face = [], []
    detector = None if whole_image else build_face_detector(faces, str(expr.device))
    for sid, img in zip(listing[id_column], pixels):
        if detector is None:
            crops.append((sid, img))
            continue
        found = detector.detect(img[None])[0]
        if len(found) == 0:
            no_face.append(sid)
            continue
        best = found[int(np.argmax(found[:, 4]))]
        track = FaceTrack(start=0, boxes=best[None, :4], probs=best[None, 4])
        crops.append((sid, crop_track(img[None], track, cfg.settings.train.crop_size, faces.margin,
                                      smooth_frames=1)[0]))
    scores = expr.predict_windows([c[None] for _, c in crops]) if crops else np.zeros((0, len(expr.labels)))
    table = pd.DataFrame(scores, columns=list(expr.labels))
    table.insert(0, id_column, [sid for sid, _ in crops])
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    pd.DataFrame({id_column: no_face}).to_csv(path.with_name(f"{path.stem}_no_face.csv"), index=False)
    return PredictImagesReport(str(path), expr.version, len(listing), len(crops), len(no_face), len(expr.labels),
                               time.perf_counter() - t0)
