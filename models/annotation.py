"""The one factory of the models an annotation run needs: expression model, face detector and context model.

Why one place: the annotate job builds these on the driver (to refuse a bad checkpoint before any task starts and to
learn the versions it will record), the UDF builds them on every executor, and the benchmark builds them for its bare
loop. All three call :func:`build_annotation_models`, so they can never disagree about what "these settings" mean,
and :func:`annotation_versions` derives the version tags from the loaded models plus every setting that changes
their outputs (the lineage rule: change a face threshold and the videos are annotated again).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cxatlas.core.settings import AnnotateSettings, ContextSettings, FaceSettings, fingerprint
from cxatlas.core.taxonomies import load_taxonomy
from cxatlas.models.context import MixtureOfExpertsContext, TextContextModel
from cxatlas.models.faces import FaceDetector
from cxatlas.models.registry import ExpressionModel, load_expression_model

TEXT_MODEL_NAME = "minilm-l6-v2"


@dataclass
class AnnotationModels:
    """The models one process keeps for an annotation configuration."""

    expression: ExpressionModel
    detector: FaceDetector
    context: MixtureOfExpertsContext
    labels: tuple[str, ...]
    device: torch.device


def build_face_detector(f: FaceSettings, device: str | torch.device) -> FaceDetector:
    """MTCNN detection and tracking with the ``annotate.faces`` settings: annotation and the training job
    (:mod:`cxatlas.udfs.training`) crop faces the same way, so a model trained on those crops sees at inference the
    kind of crop it was trained on."""
    return FaceDetector(min_face_size=f.min_face_size, min_prob=f.min_prob, device=device,
                        batch_size=f.detect_batch_size, thresholds=f.mtcnn_thresholds, factor=f.mtcnn_factor,
                        detect_stride=f.detect_stride, iou_threshold=f.iou_threshold, max_missed=f.max_missed,
                        min_track_frames=f.min_track_frames, refine_stride=f.refine_stride)


def build_annotation_models(settings: AnnotateSettings, device: str | torch.device) -> AnnotationModels:
    """Load the expression model, MTCNN face detector/tracker and context model for ``settings`` on ``device``."""
    e, f, c = settings.expression, settings.faces, settings.context
    expression = load_expression_model(e.model, e.checkpoint, device=device, batch_size=e.batch_size)
    detector = build_face_detector(f, device)
    labels, label_texts = scored_labels(c)
    text = TextContextModel(labels, label_texts=label_texts, head_checkpoint=c.head_checkpoint,
                            cosine_threshold=c.cosine_threshold, temperature=c.temperature,
                            batch_size=c.batch_size, device=device, label_cache_dir=c.label_cache_dir)
    context = MixtureOfExpertsContext(text, mode=c.mode, visual_checkpoint=c.visual_checkpoint,
                                      gate_checkpoint=c.gate_checkpoint, device=device)
    return AnnotationModels(expression, detector, context, labels, torch.device(device))


def scored_labels(c: ContextSettings) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The labels the context model scores (and the texts it embeds for them): the taxonomy's, followed by the
    video-filter labels when the taxonomy is one of ``filter_taxonomies``.

    Cowen et al. (2021), Methods, experiment 1: "to focus on naturalistic footage, we filtered out videos predicted by
    the video topic annotations to include video games and other animated content". Those topics are not among the
    653 analysed contexts, so they are scored in addition; their scores are stored with the others (the analysis
    never maps them to a context column) and ``analyze.video_filter`` leaves such videos out. A trained text head for
    a filtered taxonomy must cover these labels too (its labels are checked against this list).
    """
    taxonomy = load_taxonomy(c.taxonomy)
    if c.taxonomy not in c.filter_taxonomies:
        return taxonomy.labels, taxonomy.source_names
    extra = tuple(label for label in dict.fromkeys(c.filter_labels) if label not in set(taxonomy.labels))
    return taxonomy.labels + extra, taxonomy.source_names + extra


def file_tag(path: str | None) -> str:
    """First 12 hex digits of a file's SHA-256 ("none" without a file): weights are versioned by content."""
    if not path:
        return "none"
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def annotation_versions(settings: AnnotateSettings, models: AnnotationModels) -> tuple[str, str]:
    """(expression version, context version): the loaded weights' own versions plus a hash of everything else that
    changes the stored outputs.

    * Expression rows depend on the weights and labels, and on how frames become face windows: the video settings
      (fps, windows, downscaling, seeking) and the face settings (MTCNN thresholds, tracking, crops).
    * Context rows depend on the text model and its calibration or trained head, the taxonomy's labels, what is
      stored (threshold, top-k) and, when a visual expert is used, the video settings that pick its frames.
    """
    expr = models.expression
    expression_version = f"{expr.version}+{fingerprint(expr.labels, settings.video, settings.faces)}"
    c = settings.context
    text_part = (f"head-{file_tag(c.head_checkpoint)}" if c.head_checkpoint
                 else f"zeroshot-c{c.cosine_threshold:g}-t{c.temperature:g}")
    context_version = f"{TEXT_MODEL_NAME}-{text_part}"
    inputs: list[Any] = [models.labels, c.store_threshold, c.store_top_k]
    if c.mode != "text_only":
        context_version += f"+moe-visual-{file_tag(c.visual_checkpoint)}-gate-{file_tag(c.gate_checkpoint)}"
        inputs += [settings.video, c.frame_size]
    return expression_version, f"{context_version}+{fingerprint(*inputs)}"
