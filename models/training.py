"""Training expression models on rated faces: the torch half of ``cxatlas train`` (no Spark here).

The job (:mod:`cxatlas.stages.train`) prepares face crops and targets in a Delta table and hands this module two
callables that yield batches (petastorm's torch loader over that table); this module owns the networks, the recipe,
the loss, the per-epoch evaluation and the files that make a run resumable.

Recipes
-------
* ``brooks288`` (Brooks et al., iScience 2024): an InceptionResnetV1 trunk pretrained on faces (VGGFace2 in the
  paper; supplied by the user, nothing downloads) with everything but its last block (``block8``) frozen, then the
  Brooks head (average pool, dropout 0.6, linear to 512, BatchNorm, linear to countries x labels, sigmoid). MSE on
  targets in [0, 1], Adam (lr 1e-4, weight decay 1e-4), StepLR (step 20, gamma 0.1): the ``train:`` defaults.
* ``fer7``: fer's mini-Xception with its trained features frozen and a new head (the final 3x3 convolution, one
  sigmoid output per country and label) trained on top; small enough to train on a CPU in seconds.
* ``cowen16`` (Cowen et al., Nature 2021): the same user-supplied InceptionResnetV1 trunk, frozen but for
  ``block8``, embeds every crop of a window (a still image is a window of one crop); the two LSTM layers and the
  mixture-of-experts head train. Batches carry ``lengths`` (real crops per zero-padded window), which the model uses
  to ignore the padding. The loss is sigmoid cross-entropy on the model's probabilities against the soft targets
  (:func:`masked_bce`), as the paper's multi-label outputs call for; the optimiser and schedule are the same.

Targets may be NaN where a country did not rate a stimulus: the loss and the correlations leave those cells out.
Frozen BatchNorm layers stay in eval mode while training, so their running statistics (learned on faces) are kept.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from cxatlas.core.errors import UserError
from cxatlas.models.brooks288 import Brooks288
from cxatlas.models.checkpoint import CHECKPOINT_FORMAT, CheckpointError, InputSpec, save_checkpoint
from cxatlas.models.cowen16 import Cowen16
from cxatlas.models.fer7 import Fer7

TRAINABLE = ("brooks288", "cowen16", "fer7")
#: Models that train on a pretrained InceptionResnetV1 trunk (``train.trunk_checkpoint``).
TRUNK_MODELS = ("brooks288", "cowen16")
#: brooks288: the InceptionResnetV1 modules that train; everything before ``block8`` stays frozen.
BROOKS_TRAINABLE_PREFIXES = ("net.block8.", "net.last_linear.", "net.last_bn.", "net.logits.")
#: cowen16: the trunk's last block, the LSTM and the head train; the rest of the trunk, including its embedding
#: layers (``last_linear``, ``last_bn``) after ``block8``, keeps the pretrained weights.
COWEN_TRAINABLE_PREFIXES = ("trunk.block8.", "lstm.", "head.")


class TrainingError(UserError, ValueError):
    """A training request that cannot run as asked (a model that cannot be trained, a resume that does not fit)."""


@dataclass(frozen=True)
class Recipe:
    """Optimisation settings of one run (from ``train:``)."""

    epochs: int
    lr: float
    weight_decay: float
    step_size: int
    gamma: float
    amp: bool
    seed: int
    augment_flip: bool


@dataclass
class EpochResult:
    """What one epoch did: mean training loss, held-out loss and Pearson r per output label, learning rate, time."""

    epoch: int
    loss: float
    examples: int
    heldout_loss: float | None
    heldout_r: list[float]
    lr: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self, labels: Sequence[str], show: int = 6, unit: str = "crops") -> str:
        """One progress line: ``epoch 3/30  loss 0.0412  heldout loss 0.0398  mean r 0.71  (happy 0.93, ...)``."""
        valid = [r for r in self.heldout_r if r is not None and not math.isnan(r)]
        mean_r = f"{np.mean(valid):.3f}" if valid else "n/a"
        held = f"{self.heldout_loss:.4f}" if self.heldout_loss is not None else "n/a"
        per = ", ".join(f"{label} {r:.2f}" for label, r in list(zip(labels, self.heldout_r))[:show]
                        if r is not None and not math.isnan(r))
        more = f", ... {len(labels) - show} more" if len(labels) > show else ""
        return (f"epoch {self.epoch}  loss {self.loss:.4f} ({self.examples} {unit})  heldout loss {held}  "
                f"heldout r per label: mean {mean_r} ({per}{more})  lr {self.lr:.2g}  {self.seconds:.1f}s")


# -- networks --------------------------------------------------------------------------------------------------------
def build_trainable(model_name: str, labels: Sequence[str], trunk_checkpoint: str | None, seed: int,
                    device: torch.device) -> nn.Module:
    """The network to train for ``labels`` outputs, with its frozen parts frozen (see the module docstring).

    Raises
    ------
    TrainingError
        A model that cannot be trained here.
    CheckpointError
        brooks288 or cowen16 without usable trunk weights.
    """
    check_trainable(model_name, trunk_checkpoint)
    torch.manual_seed(seed)  # the new head's initialisation is part of the run's reproducibility
    if model_name == "fer7":
        model = Fer7.from_package()
        model.classifier = nn.Conv2d(model.classifier.in_channels, len(labels), 3, padding=1, bias=True)
        model.num_classes, model.output_activation = len(labels), "sigmoid"
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith("classifier.")
    elif model_name == "brooks288":
        model = Brooks288(num_labels=len(labels))
        load_trunk(model.net, trunk_checkpoint, model_name)
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith(BROOKS_TRAINABLE_PREFIXES)
    else:  # cowen16
        model = Cowen16(num_labels=len(labels))
        load_trunk(model.trunk, trunk_checkpoint, model_name)
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith(COWEN_TRAINABLE_PREFIXES)
    model.labels = tuple(labels)
    model.version = f"{model_name}-training"
    model.device = device
    return model.to(device)


_TRUNK_EXPECTED = ("InceptionResnetV1 weights pretrained on faces (Brooks et al. used VGGFace2: facenet-pytorch's "
                   "20180402-114759-vggface2.pt state dict), given with --set train.trunk_checkpoint=PATH")


def check_trainable(model_name: str, trunk_checkpoint: str | None) -> None:
    """The refusals that need no work, so a job can give them before it prepares any data: an unknown model, or a
    trunk model without an existing trunk file (:class:`TrainingError`, :class:`CheckpointError`)."""
    if model_name not in TRAINABLE:
        raise TrainingError(f"unknown model '{model_name}'; trainable models: {', '.join(TRAINABLE)}")
    if model_name in TRUNK_MODELS and not trunk_checkpoint:
        raise CheckpointError(f"{model_name} trains on a pretrained face trunk and nothing is downloaded: "
                              f"supply {_TRUNK_EXPECTED}")
    if model_name in TRUNK_MODELS and not Path(trunk_checkpoint).is_file():
        raise CheckpointError(f"trunk weights '{trunk_checkpoint}' do not exist; expected {_TRUNK_EXPECTED}")


def load_trunk(net: nn.Module, path: str | None, model_name: str = "brooks288") -> None:
    """Load pretrained InceptionResnetV1 weights into ``net`` (all but its ``logits`` layer, which classified the
    pretraining identities) for ``model_name``.

    Accepts a plain state dict (facenet-pytorch's ``20180402-114759-vggface2.pt``, keys optionally prefixed ``net.``,
    ``trunk.`` or ``module.``) or a cxatlas checkpoint of brooks288 / cowen16. Loaded with ``weights_only``.
    """
    expected = _TRUNK_EXPECTED
    check_trainable(model_name, path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load fails in many ways on foreign files
        raise CheckpointError(f"'{path}' is not a readable torch file ({type(exc).__name__}); expected {expected}") \
            from exc
    if isinstance(payload, Mapping) and payload.get("format") == CHECKPOINT_FORMAT:  # only its trunk: not a cowen16
        payload = {k: v for k, v in payload["state_dict"].items() if k.startswith(("net.", "trunk."))}  # LSTM/head
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"'{path}' does not hold a state dict; expected {expected}")
    state = {}
    for key, value in payload.items():
        for prefix in ("module.", "net.", "trunk."):
            key = key.removeprefix(prefix)
        if not key.startswith("logits."):
            state[key] = value
    target = {k for k in net.state_dict() if not k.startswith("logits.")}
    missing, unexpected = sorted(target - set(state)), sorted(set(state) - target)
    if missing or unexpected:
        raise CheckpointError(f"'{path}' does not fit InceptionResnetV1 (missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}); expected {expected}")
    try:
        net.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"'{path}' does not fit InceptionResnetV1 ({str(exc).splitlines()[0][:300]}); "
                              f"expected {expected}") from exc


def set_train_mode(module: nn.Module) -> None:
    """Training mode for what trains; frozen BatchNorm layers stay in eval mode (their statistics are kept)."""
    module.train()
    for sub in module.modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in sub.parameters()):
            sub.eval()


# -- targets, loss, correlations -------------------------------------------------------------------------------------
class TargetView:
    """Which stored target columns each output learns: output j = mean of the non-NaN columns ``groups[j]``.

    The identity (every country x label of the training set) is what ``cxatlas train`` uses; ``cxatlas transfer``
    trains on one country's columns, or on the mean over a dataset's countries.
    """

    def __init__(self, groups: Sequence[Sequence[int]], n_columns: int):
        self.groups = [list(g) for g in groups]
        weights = torch.zeros((n_columns, len(self.groups)))
        for j, group in enumerate(self.groups):
            weights[group, j] = 1.0
        self.weights = weights

    @classmethod
    def identity(cls, n_columns: int) -> "TargetView":
        return cls([[i] for i in range(n_columns)], n_columns)

    def __call__(self, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.float()
        seen = ~torch.isnan(targets)
        weights = self.weights.to(targets.device)
        sums = torch.where(seen, targets, torch.zeros_like(targets)) @ weights
        counts = seen.float() @ weights
        return torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, float("nan")))


def masked_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the cells with a target (NaN: that country did not rate the stimulus)."""
    seen = ~torch.isnan(target)
    diff = torch.where(seen, pred.float() - torch.nan_to_num(target), torch.zeros_like(pred, dtype=torch.float32))
    return (diff ** 2).sum() / seen.sum().clamp(min=1)


def masked_bce(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sigmoid cross-entropy of predicted probabilities against soft targets in [0, 1], over the cells with a target
    (NaN: unrated), in float32 whatever the autocast state: the model's outputs are already probabilities (a gated
    mixture, so there are no logits to hand to ``binary_cross_entropy_with_logits``), and torch refuses
    ``binary_cross_entropy`` under autocast. Log terms are clamped at -100 as ``binary_cross_entropy`` does."""
    with torch.autocast(device_type=pred.device.type, enabled=False):
        seen = ~torch.isnan(target)
        p, t = pred.float(), torch.nan_to_num(target.float())
        cells = -(t * torch.log(p).clamp(min=-100) + (1 - t) * torch.log1p(-p).clamp(min=-100))
        return torch.where(seen, cells, torch.zeros_like(cells)).sum() / seen.sum().clamp(min=1)


#: The training loss of each model (MSE unless listed): cowen16's outputs are independent sigmoids per label.
LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"cowen16": masked_bce}


def loss_for(model_name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss ``model_name`` trains with (and its held-out loss is reported in)."""
    return LOSSES.get(model_name, masked_mse)


def pearson_per_label(pred: np.ndarray, target: np.ndarray, min_rows: int = 3) -> np.ndarray:
    """Pearson r between predictions and targets, per column, over rows with a target; NaN for a column with fewer
    than ``min_rows`` rated rows or no variance."""
    out = np.full(pred.shape[1], np.nan)
    for j in range(pred.shape[1]):
        seen = ~np.isnan(target[:, j])
        p, t = pred[seen, j].astype(np.float64), target[seen, j].astype(np.float64)
        if seen.sum() >= min_rows and p.std() > 0 and t.std() > 0:
            out[j] = float(np.corrcoef(p, t)[0, 1])
    return out


# -- the loop ----------------------------------------------------------------------------------------------------------
def _autocast(device: torch.device, amp: bool):
    """CUDA autocast (float16 matmuls/convolutions, float32 loss) when asked and on a GPU; a no-op otherwise."""
    return torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp and device.type == "cuda")


def forward(module: nn.Module, batch: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``module`` on ``x``; a batch of windows (sequence models) carries ``lengths``, the real crops per window."""
    if "lengths" in batch:
        return module(x, batch["lengths"])
    return module(x)


def predict(module: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], view: TargetView,
            device: torch.device, amp: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, targets) over all batches, in eval mode: (N, outputs) float arrays, targets NaN where unrated."""
    module.eval()
    preds, targets = [], []
    with torch.inference_mode(), _autocast(device, amp):
        for batch in batches:
            preds.append(forward(module, batch, batch["x"].to(device, non_blocking=True)).float().cpu())
            targets.append(view(batch["targets"]))
    if not preds:
        n = len(view.groups)
        return np.zeros((0, n), np.float32), np.zeros((0, n), np.float32)
    return torch.cat(preds).numpy(), torch.cat(targets).numpy()


@dataclass
class Trainer:
    """Trains ``module`` with ``recipe`` on ``loss`` (:func:`loss_for` the model); :meth:`state` / :meth:`restore`
    make a run resumable epoch by epoch."""

    module: nn.Module
    recipe: Recipe
    view: TargetView
    device: torch.device
    history: list[dict] = field(default_factory=list)
    epoch: int = 0
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = masked_mse

    def __post_init__(self) -> None:
        params = [p for p in self.module.parameters() if p.requires_grad]
        if not params:
            raise TrainingError("the model has no trainable parameters")
        self.optimizer = torch.optim.Adam(params, lr=self.recipe.lr, weight_decay=self.recipe.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=self.recipe.step_size,
                                                         gamma=self.recipe.gamma)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.recipe.amp and self.device.type == "cuda")

    def state(self) -> dict[str, Any]:
        """Everything but the weights that a resumed run needs (tensors and primitives only: ``weights_only``)."""
        return {"epoch": self.epoch, "history": self.history, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "recipe": asdict(self.recipe)}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.history = int(state["epoch"]), list(state["history"])

    def train_epoch(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> tuple[float, int]:
        """One pass over ``batches``; returns (mean loss per example, examples seen: crops, or windows)."""
        set_train_mode(self.module)
        generator = torch.Generator().manual_seed(self.recipe.seed * 100_003 + self.epoch)
        total, seen = 0.0, 0
        for batch in batches:
            x = batch["x"].to(self.device, non_blocking=True)
            y = self.view(batch["targets"]).to(self.device, non_blocking=True)
            if self.recipe.augment_flip:
                flip = (torch.rand(len(x), generator=generator) < 0.5).to(self.device)
                x = torch.where(flip.view(-1, *[1] * (x.dim() - 1)), x.flip(-1), x)  # crops or whole windows
            self.optimizer.zero_grad(set_to_none=True)
            with _autocast(self.device, self.recipe.amp):
                pred = forward(self.module, batch, x)
            loss = self.loss(pred, y)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += float(loss.detach()) * len(x)
            seen += len(x)
        self.scheduler.step()
        return (total / seen if seen else float("nan")), seen

    def fit(self, train_batches: Callable[[int], Iterable[Mapping[str, torch.Tensor]]],
            heldout_batches: Callable[[], Iterable[Mapping[str, torch.Tensor]]],
            on_epoch: Callable[[EpochResult], None]) -> list[dict]:
        """Epochs ``self.epoch + 1 .. recipe.epochs``: train, evaluate on the held-out stimuli, call ``on_epoch``
        (which saves the checkpoint and prints progress). Returns the whole history, resumed epochs included."""
        while self.epoch < self.recipe.epochs:
            started = time.time()
            lr = self.optimizer.param_groups[0]["lr"]
            self.epoch += 1
            loss, examples = self.train_epoch(train_batches(self.epoch))
            pred, target = predict(self.module, heldout_batches(), self.view, self.device, self.recipe.amp)
            held = float(self.loss(torch.from_numpy(pred), torch.from_numpy(target))) if len(pred) else None
            r = [None if math.isnan(v) else float(v) for v in pearson_per_label(pred, target)]
            result = EpochResult(self.epoch, loss, examples, held, r, lr, time.time() - started)
            self.history.append(result.to_dict())
            on_epoch(result)
        return self.history


# -- files -------------------------------------------------------------------------------------------------------------
def state_path(checkpoint: str | Path) -> Path:
    """Where the resume state of a checkpoint lives: next to it, ``<name>.train-state``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + ".train-state")


def _atomic_save(write: Callable[[Path], Any], path: Path) -> None:
    """Write to a temporary file, then rename: a crash mid-save leaves the previous epoch's file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def save_epoch(path: str | Path, model_name: str, module: nn.Module, labels: Sequence[str], input_spec: InputSpec,
               extra: Mapping[str, Any], trainer_state: Mapping[str, Any]) -> Path:
    """Save the model as a cxatlas checkpoint (loadable by the registry, so ``cxatlas annotate`` can use it) and,
    beside it, the trainer state for ``--resume``. Both are replaced atomically every epoch."""
    path = Path(path)
    architecture = module.architecture() if hasattr(module, "architecture") else {}
    _atomic_save(lambda p: save_checkpoint(p, model_name, module.state_dict(), labels, input_spec.to_dict(),
                                           {**architecture, **extra}), path)
    _atomic_save(lambda p: torch.save(dict(trainer_state), p), state_path(path))
    return path


def load_state(path: str | Path) -> dict[str, Any] | None:
    """The resume state saved beside a checkpoint, or None when there is none."""
    target = state_path(path)
    if not target.is_file():
        return None
    return torch.load(target, map_location="cpu", weights_only=True)
