"""The per-face model of Brooks et al., "Deep learning reveals what facial expressions mean to people in different
cultures", iScience 27 (2024), as a plain torch module.

Architecture: an Inception-ResNet-v1 trunk up to its last convolutional block, adaptive average pooling, dropout 0.6,
a linear layer to 512, BatchNorm1d, and a linear layer to 48 x 6 = 288 outputs: how strongly raters in each of six
countries would judge each of 48 emotions to be expressed. facenet-pytorch's ``InceptionResnetV1(classify=True)`` is
exactly that stack, so it is reused (``pretrained=None``: nothing is downloaded).

Like :mod:`cxatlas.models.cowen16`, the trained weights are not public: the model is built only from a checkpoint, and the
checkpoint's own label list decides what each output means.
"""
from __future__ import annotations

import torch
from facenet_pytorch import InceptionResnetV1
from torch import nn

from cxatlas.models.device import place
from cxatlas.models.checkpoint import CheckpointedModel, InputSpec

#: The six countries of the rating study. NOTE: names and order are ours; they must match the order the user's
#: checkpoint was trained with. A checkpoint always carries its own labels, and those win over this list.
COUNTRIES: tuple[str, ...] = ("China", "Ethiopia", "India", "South Africa", "United States", "Venezuela")

#: The 48 emotion concepts raters judged. Same caveat as COUNTRIES: the checkpoint's labels win.
EMOTIONS: tuple[str, ...] = (
    "Admiration", "Adoration", "Aesthetic Appreciation", "Amusement", "Anger", "Anxiety", "Awe", "Awkwardness",
    "Boredom", "Calmness", "Concentration", "Confusion", "Contemplation", "Contempt", "Contentment", "Craving",
    "Desire", "Determination", "Disappointment", "Disgust", "Distress", "Doubt", "Ecstasy", "Embarrassment",
    "Empathic Pain", "Entrancement", "Envy", "Excitement", "Fear", "Guilt", "Horror", "Interest",
    "Joy", "Love", "Nostalgia", "Pain", "Pride", "Realization", "Relief", "Romance",
    "Sadness", "Satisfaction", "Shame", "Surprise (negative)", "Surprise (positive)", "Sympathy", "Tiredness", "Triumph",
)

#: Country-major label list: output ``c * 48 + e`` is ``f"{COUNTRIES[c]}:{EMOTIONS[e]}"``.
LABELS: tuple[str, ...] = tuple(f"{country}:{emotion}" for country in COUNTRIES for emotion in EMOTIONS)

#: One RGB face per sample, FaceNet scaling; a checkpoint's own input spec replaces this.
INPUT_SPEC = InputSpec(kind="face_rgb160", size=160, pixel_mean=127.5, pixel_scale=128.0, interpolation="area")

OUTPUT_ACTIVATIONS = ("sigmoid", "identity")


class Brooks288(CheckpointedModel, nn.Module):
    """Faces (N, 3, 160, 160) -> (N, 288) country x emotion scores.

    Parameters
    ----------
    num_labels : int
        Outputs (288 in the paper; a checkpoint's label list decides).
    dropout : float
        Dropout before the 512-d projection (0.6; inactive at inference).
    output_activation : str
        'sigmoid' (default, for ratings scaled to [0, 1]) or 'identity' (raw regression outputs); recorded in the
        checkpoint, since only its author knows how the targets were scaled.
    device : torch.device or str, optional
        Where to place the module.

    Constructing it directly gives random weights (training code and tests only); inference uses
    :meth:`from_checkpoint`.
    """

    MODEL_NAME = "brooks288"
    ARCHITECTURE_KEYS = ("dropout", "output_activation")
    DEFAULT_INPUT_SPEC = INPUT_SPEC

    def __init__(
        self,
        num_labels: int = len(LABELS),
        dropout: float = 0.6,
        output_activation: str = "sigmoid",
        device: torch.device | str | None = None,
    ):
        super().__init__()
        if output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(f"output_activation must be one of {OUTPUT_ACTIVATIONS}, got {output_activation!r}")
        self.dropout, self.output_activation = float(dropout), output_activation
        # conv blocks -> AdaptiveAvgPool2d(1) -> Dropout -> Linear(1792, 512) -> BatchNorm1d(512) -> Linear(512, n)
        self.net = InceptionResnetV1(pretrained=None, classify=True, num_classes=num_labels, dropout_prob=self.dropout)
        self.labels: tuple[str, ...] = LABELS if num_labels == len(LABELS) else tuple(f"label_{i}" for i in range(num_labels))
        self.input_spec = INPUT_SPEC
        self.version = "brooks288-untrained"

        place(self, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) standardised faces -> (N, num_labels) scores."""
        out = self.net(x)
        return torch.sigmoid(out) if self.output_activation == "sigmoid" else out
