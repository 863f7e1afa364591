"""The 16-expression video model of Cowen et al., Nature 589:251 (2021), as a plain torch module.

Architecture as the paper's Methods describe it: a FaceNet (Inception-ResNet-v1) trunk embeds every face crop of a
window of frames into 512 dimensions; two LSTM layers of 64 cells read the window; a mixture-of-experts head (two
experts plus a dummy expert, gated by a softmax over three) gives one sigmoid output per expression, so several
expressions can be present at once.

The trained weights were never released, so this model is only ever built from a user-supplied checkpoint
(:meth:`Cowen16.from_checkpoint`); without one it raises :class:`~cxatlas.models.checkpoint.CheckpointError` instead of
producing scores from random weights. The trunk is created with ``pretrained=None``: nothing is downloaded.

Windows of different lengths are batched together: frames are passed concatenated with a ``lengths`` vector, only real
frames go through the trunk, and the LSTM runs on a packed sequence so padding never influences the output.
"""
from __future__ import annotations

import torch
from facenet_pytorch import InceptionResnetV1
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from cxatlas.models.device import place
from cxatlas.models.checkpoint import CheckpointedModel, InputSpec

#: The 16 expression categories, in the order of the published correlation tables.
LABELS: tuple[str, ...] = (
    "Amusement", "Anger", "Awe", "Concentration", "Confusion", "Contempt", "Contentment", "Desire",
    "Disappointment", "Doubt", "Elation", "Interest", "Pain", "Sadness", "Surprise", "Triumph",
)

#: FaceNet-style input: RGB 160x160, ``(x - 127.5) / 128`` (facenet-pytorch's fixed_image_standardization), area
#: resize as facenet-pytorch's MTCNN crops. A checkpoint's own input spec replaces this.
INPUT_SPEC = InputSpec(kind="face_rgb160_window", size=160, pixel_mean=127.5, pixel_scale=128.0, interpolation="area")

#: Size of the trunk's face embedding (InceptionResnetV1 with classify=False).
EMBEDDING_SIZE = 512

MIXTURES = ("logit", "probability")


class MixtureOfExpertsHead(nn.Module):
    """Per-label mixture of experts with a dummy expert.

    For each label, a gate (softmax over ``num_experts + 1``) weighs ``num_experts`` linear experts and one dummy
    expert whose output is fixed at zero; the dummy lets the gate pull a prediction towards "absent" without any
    expert having to learn that.

    ``mixture='logit'`` (default): experts output logits, the dummy outputs logit 0, the gated sum of logits goes
    through a sigmoid. ``mixture='probability'``: the YouTube-8M formulation, where experts output sigmoid
    probabilities, the dummy outputs probability 0, and the gated sum is the prediction. A checkpoint records which
    one it was trained with.
    """

    def __init__(self, in_features: int, num_labels: int, num_experts: int = 2, mixture: str = "logit"):
        super().__init__()
        if mixture not in MIXTURES:
            raise ValueError(f"mixture must be one of {MIXTURES}, got {mixture!r}")
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        self.num_labels, self.num_experts, self.mixture = num_labels, num_experts, mixture
        self.gates = nn.Linear(in_features, num_labels * (num_experts + 1))
        self.experts = nn.Linear(in_features, num_labels * num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_features) -> (N, num_labels) probabilities in [0, 1]."""
        n = x.shape[0]
        gate = F.softmax(self.gates(x).view(n, self.num_labels, self.num_experts + 1), dim=-1)
        real_gate = gate[..., : self.num_experts]  # the dummy expert's share multiplies its zero output
        expert = self.experts(x).view(n, self.num_labels, self.num_experts)
        if self.mixture == "logit":
            return torch.sigmoid((real_gate * expert).sum(dim=-1))
        return (real_gate * torch.sigmoid(expert)).sum(dim=-1)


class Cowen16(CheckpointedModel, nn.Module):
    """Face-crop windows (N, T, 3, 160, 160) -> (N, 16) expression probabilities.

    Parameters
    ----------
    num_labels : int
        Outputs (16 for the paper; a checkpoint's label list decides).
    lstm_hidden, lstm_layers : int
        LSTM cells per layer and layer count (paper: 64 and 2).
    num_experts : int
        Real experts in the mixture head (paper: 2, plus the dummy).
    mixture : str
        'logit' or 'probability', see :class:`MixtureOfExpertsHead`.
    device : torch.device or str, optional
        Where to place the module.

    Constructing it directly gives random weights, which is only for training code and tests; inference goes through
    :meth:`from_checkpoint`.
    """

    MODEL_NAME = "cowen16"
    ARCHITECTURE_KEYS = ("lstm_hidden", "lstm_layers", "num_experts", "mixture")
    DEFAULT_INPUT_SPEC = INPUT_SPEC

    def __init__(
        self,
        num_labels: int = len(LABELS),
        lstm_hidden: int = 64,
        lstm_layers: int = 2,
        num_experts: int = 2,
        mixture: str = "logit",
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.lstm_hidden, self.lstm_layers, self.num_experts, self.mixture = lstm_hidden, lstm_layers, num_experts, mixture
        self.trunk = InceptionResnetV1(pretrained=None, classify=False)  # never downloads: weights come from a checkpoint
        self.lstm = nn.LSTM(EMBEDDING_SIZE, lstm_hidden, num_layers=lstm_layers, batch_first=True)
        self.head = MixtureOfExpertsHead(lstm_hidden, num_labels, num_experts, mixture)
        self.labels: tuple[str, ...] = LABELS if num_labels == len(LABELS) else tuple(f"label_{i}" for i in range(num_labels))
        self.input_spec = INPUT_SPEC
        self.version = "cowen16-untrained"

        place(self, device)

    def forward_frames(self, frames: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Windows given as concatenated frames: ``frames`` (sum(lengths), 3, H, W), window i owning the next
        ``lengths[i]`` frames. Returns (len(lengths), num_labels). This is the form batch inference uses, since it
        never runs the (expensive) trunk on padding."""
        lengths = torch.as_tensor(lengths, dtype=torch.long).cpu()
        if lengths.numel() == 0:
            return frames.new_zeros((0, self.head.num_labels))
        if int(lengths.min()) < 1 or int(lengths.sum()) != frames.shape[0]:
            raise ValueError(f"window lengths {lengths.tolist()} must be >= 1 and sum to the {frames.shape[0]} frames")
        embeddings = self.trunk(frames)  # (sum T, 512)
        n, t_max = lengths.numel(), int(lengths.max())
        valid = torch.arange(t_max).unsqueeze(0) < lengths.unsqueeze(1)  # (N, T_max), frames fill each row's start
        padded = embeddings.new_zeros((n, t_max, embeddings.shape[1]))
        padded[valid.to(embeddings.device)] = embeddings
        packed = pack_padded_sequence(padded, lengths, batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)
        return self.head(h_n[-1])  # last layer's state at each window's own last frame

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(N, T, 3, H, W) windows -> (N, num_labels) probabilities. ``lengths`` (N,) marks how many leading frames
        of each window are real (default: all T); frames past a window's length are ignored."""
        n, t = x.shape[:2]
        if lengths is None:
            lengths = torch.full((n,), t, dtype=torch.long)
        lengths = torch.as_tensor(lengths, dtype=torch.long).cpu()
        valid = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
        return self.forward_frames(x[valid.to(x.device)], lengths)
