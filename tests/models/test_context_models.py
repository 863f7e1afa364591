"""Context taxonomies and context models, with the real bundled MiniLM (offline) and the paper's released CSVs."""
from __future__ import annotations

import csv
import os
import socket
from importlib import resources
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from cxatlas.core.taxonomies import (  # noqa: E402
    EXPRESSIONS_2021, Taxonomy, disambiguate_duplicates, load_published_correlations, load_taxonomy,
)
from cxatlas.models.checkpoint import CheckpointError  # noqa: E402
from cxatlas.models.context import (  # noqa: E402
    ContextCheckpointError, MixtureOfExpertsContext, TextContextModel, VisualContextExpert, load_sentence_model,
    save_gate_checkpoint, save_text_head, save_visual_checkpoint, to_sparse,
)

from cxatlas.core.taxonomies import published_data_dir

NATURE_DIR = Path(os.environ.get("CXATLAS_NATURE_DATA", str(published_data_dir())))

WEDDING = "Our wedding day: the bride walks down the aisle"
ARREST = "Police arrest protesters downtown"
UNRELATED = ("Police", "Fireworks")


@pytest.fixture(scope="module")
def offline_sentence_model(monkeypatch_module):
    """Load MiniLM with every socket connection refused, proving the load needs no network."""

    def refuse(*_args, **_kwargs):
        raise OSError("network access attempted while loading the context model")

    monkeypatch_module.setattr(socket.socket, "connect", refuse)
    monkeypatch_module.setattr(socket, "create_connection", refuse)
    return load_sentence_model(device="cpu")


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def exp1():
    return load_taxonomy("nature2021_exp1")


@pytest.fixture(scope="module")
def exp2():
    return load_taxonomy("nature2021_exp2")


@pytest.fixture(scope="module")
def text1(exp1, offline_sentence_model):
    return TextContextModel(exp1.labels, label_texts=exp1.source_names, device="cpu", batch_size=128)


@pytest.fixture(scope="module")
def text2(exp2, offline_sentence_model):
    return TextContextModel(exp2.labels, label_texts=exp2.source_names, device="cpu", batch_size=128)


# --------------------------------------------------------------------------------------------------------- taxonomies


def _csv_first_column(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as fh:
        return [row[0] for row in list(csv.reader(fh))[1:]]


def test_builtin_files_have_exactly_the_published_row_counts():
    pkg = resources.files("cxatlas.core.taxonomies")
    for name, n in (("nature2021_exp1", 653), ("nature2021_exp2", 1953)):
        text = pkg.joinpath(f"{name}.txt").read_text(encoding="utf-8")
        assert text.endswith("\n") and len(text.splitlines()) == n
        assert len(load_taxonomy(name)) == n
    assert pkg.joinpath("ATTRIBUTION.md").read_text(encoding="utf-8").count("CC BY 4.0") >= 1


@pytest.mark.parametrize("experiment", [1, 2])
def test_taxonomy_matches_every_region_csv(experiment):
    tax = load_taxonomy(f"nature2021_exp{experiment}")
    files = sorted(NATURE_DIR.glob(f"Exp{experiment}_*.csv"))
    assert len(files) == 12
    published = [_csv_first_column(f) for f in files]
    assert all(names == published[0] for names in published)  # identical across regions
    assert list(tax.source_names) == published[0]
    assert tax.labels == disambiguate_duplicates(published[0])


def test_exp1_duplicates_are_disambiguated_in_place(exp1, exp2):
    dups = [label for label in exp1.labels if label.endswith(" (2)")]
    assert sorted(dups) == ["Cream (2)", "Fish (2)", "Football (2)", "Goal (2)"]
    assert len(set(exp1.source_names)) == 649
    assert exp1.labels.index("Football") < exp1.labels.index("Football (2)")
    assert exp2.source_names == exp2.labels  # no repeats in experiment 2
    assert "Java (Programming Language)" in exp2.labels  # a real parenthesis is not mistaken for a suffix


def test_published_correlations_load_as_k_by_16_frames(exp1):
    frames = load_published_correlations(1, NATURE_DIR)
    assert len(frames) == 12 and "USCanada" in frames and "SoutheastAsia(Mainland)" in frames
    us = frames["USCanada"]
    assert us.shape == (653, 16) and tuple(us.columns) == EXPRESSIONS_2021
    assert tuple(us.index) == exp1.labels
    with (NATURE_DIR / "Exp1_USCanada.csv").open(newline="", encoding="utf-8") as fh:
        row = list(csv.reader(fh))[1]
    assert us.iloc[0].tolist() == pytest.approx([float(v) for v in row[1:]])
    assert frames["Africa"].loc["Pocket Billiards"].isna().all()
    assert len(load_published_correlations(2, NATURE_DIR)["Brazil"]) == 1953
    with pytest.raises(FileNotFoundError):
        load_published_correlations(1, NATURE_DIR / "nope")


def test_user_taxonomy_file_and_duplicate_error(tmp_path):
    good = tmp_path / "my_contexts.txt"
    good.write_text("# party contexts\n\nWedding\n  Birthday  \nC#\n# trailing comment\nFuneral\n", encoding="utf-8")
    tax = load_taxonomy(good)
    assert tax == Taxonomy("my_contexts", ("Wedding", "Birthday", "C#", "Funeral"))
    bad = tmp_path / "dup.txt"
    bad.write_text("Wedding\nDog\nWedding\nCat\nDog\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"duplicate taxonomy labels: \['Dog', 'Wedding'\]"):
        load_taxonomy(bad)
    with pytest.raises(FileNotFoundError, match="nature2021_exp1"):
        load_taxonomy(tmp_path / "missing.txt")


# --------------------------------------------------------------------------------------------------------- text model


def test_embeddings_are_normalised(text1):
    emb = text1.embed([WEDDING, ARREST, ""])
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert text1.label_embeddings.shape == (653, 384)
    assert text1.label_embeddings is text1.label_embeddings  # cached, not recomputed


def _cache_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.npy"))


def test_label_embedding_cache_returns_what_the_model_computes(tmp_path, exp1, text1):
    """The first model of a cache folder computes the prompts' embeddings and stores them; a second model (a later
    process: nothing in memory) reads them and scores exactly as a model without the cache does."""
    first = TextContextModel(exp1.labels, label_texts=exp1.source_names, device="cpu", batch_size=128,
                             label_cache_dir=tmp_path)
    computed = first.label_embeddings.numpy().copy()
    [stored] = _cache_files(tmp_path)
    np.testing.assert_array_equal(np.load(stored), computed)
    np.testing.assert_allclose(computed, text1.label_embeddings.numpy(), atol=1e-6)  # text1: no cache

    second = TextContextModel(exp1.labels, label_texts=exp1.source_names, device="cpu", batch_size=128,
                              label_cache_dir=tmp_path)
    np.testing.assert_array_equal(second.label_embeddings.numpy(), computed)
    np.testing.assert_allclose(second.score([WEDDING, ARREST]), text1.score([WEDDING, ARREST]), atol=1e-5)


def test_label_embedding_cache_is_read_and_keyed_on_the_prompts(tmp_path, exp1):
    """A stored file is what a later model uses (planted unit rows come back as its label embeddings), another prompt
    or label list is another key, and an unusable file is computed again and replaced."""
    labels, texts = exp1.labels[:5], exp1.source_names[:5]
    model = TextContextModel(labels, label_texts=texts, device="cpu", label_cache_dir=tmp_path)
    computed = model.label_embeddings.numpy().copy()
    [stored] = _cache_files(tmp_path)

    planted = np.roll(computed, 1, axis=0)  # other unit rows of the right shape: only a read can return them
    np.save(stored, planted)
    again = TextContextModel(labels, label_texts=texts, device="cpu", label_cache_dir=tmp_path)
    np.testing.assert_array_equal(again.label_embeddings.numpy(), planted)

    TextContextModel(labels, label_texts=texts, device="cpu", label_cache_dir=tmp_path,
                     prompt="footage of {}").label_embeddings
    TextContextModel(labels[:4], label_texts=texts[:4], device="cpu", label_cache_dir=tmp_path).label_embeddings
    assert len(_cache_files(tmp_path)) == 3

    stored.write_bytes(stored.read_bytes()[:100])  # a truncated write
    repaired = TextContextModel(labels, label_texts=texts, device="cpu", label_cache_dir=tmp_path)
    np.testing.assert_allclose(repaired.label_embeddings.numpy(), computed, atol=1e-6)
    np.testing.assert_array_equal(np.load(stored), repaired.label_embeddings.numpy())
    np.save(stored, computed * 2)  # not unit rows: not an embedding this model could have stored
    doubled = TextContextModel(labels, label_texts=texts, device="cpu", label_cache_dir=tmp_path)
    np.testing.assert_allclose(doubled.label_embeddings.numpy(), computed, atol=1e-6)


@pytest.mark.parametrize("model_name", ["text1", "text2"])
def test_zero_shot_scores_wedding_and_police(model_name, request):
    model: TextContextModel = request.getfixturevalue(model_name)
    labels = list(model.labels)
    assert "Wedding" in labels and "Police" in labels and "Fireworks" in labels
    scores = model.score([WEDDING, ARREST], ["", None])
    assert scores.shape == (2, len(labels)) and scores.dtype == np.float32
    assert scores.min() >= 0.0 and scores.max() <= 1.0
    wed = labels.index("Wedding")
    assert scores[0, wed] > 0.5
    assert wed in np.argsort(-scores[0])[:3]
    for other in UNRELATED:
        assert scores[0, wed] > scores[0, labels.index(other)] + 0.5
    police_like = [i for i, lab in enumerate(labels) if lab in ("Police", "Arrest", "Law Enforcement")]
    top = np.argsort(-scores[1])[:3]
    assert any(i in top for i in police_like)
    assert max(scores[1, i] for i in police_like) > 0.5
    assert scores[1, labels.index("Police")] > scores[1, wed] + 0.5


def test_linear_head_round_trip_changes_scores(tmp_path, exp1, text1):
    k = len(exp1)
    police, wedding = exp1.labels.index("Police"), exp1.labels.index("Wedding")
    weight = torch.zeros(k, 384)
    bias = torch.full((k,), -4.0)
    # A head that answers "Police" for wedding talk, and holds every other label at sigmoid(-4).
    weight[police] = torch.from_numpy(text1.embed(["a wedding ceremony with a bride"])[0]) * 12.0
    path = save_text_head(tmp_path / "head.pt", exp1.labels, weight, bias)
    headed = TextContextModel(exp1.labels, label_texts=exp1.source_names, head_checkpoint=path, device="cpu")
    titles = [WEDDING, "Fireworks over the harbour on New Year's Eve"]
    got = headed.score(titles)
    expected = 1.0 / (1.0 + np.exp(-(text1.embed(titles) @ weight.numpy().T + bias.numpy())))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    zero_shot = text1.score(titles)
    assert zero_shot[0, wedding] > 0.5 and got[0, wedding] < 0.05  # the head replaced the zero-shot scorer
    assert got[0, police] > 0.5 > zero_shot[0, police]
    assert got[0, police] > got[1, police]

    with pytest.raises(ContextCheckpointError, match="another taxonomy: label 0"):
        TextContextModel(tuple(reversed(exp1.labels)), head_checkpoint=path, device="cpu")
    with pytest.raises(CheckpointError, match="does not exist"):
        TextContextModel(exp1.labels, head_checkpoint=tmp_path / "absent.pt", device="cpu")


# ---------------------------------------------------------------------------------------------------- visual and MoE


def test_experiment1_without_visual_checkpoint_names_what_is_missing(text1, tmp_path):
    with pytest.raises(CheckpointError, match="visual_checkpoint and gate_checkpoint") as info:
        MixtureOfExpertsContext(text1, mode="experiment1")
    assert "text_only" in str(info.value)
    with pytest.raises(CheckpointError, match=f"visual_checkpoint: checkpoint file {tmp_path}/v.pt does not exist"):
        MixtureOfExpertsContext(text1, mode="experiment1", visual_checkpoint=tmp_path / "v.pt",
                                gate_checkpoint=tmp_path / "g.pt")
    text_only = MixtureOfExpertsContext(text1, mode="text_only")
    np.testing.assert_allclose(text_only.score([WEDDING]), text1.score([WEDDING]), atol=1e-6)


def _real_frames(*names: str) -> torch.Tensor:
    """Real photographs bundled with scikit-image, as (N, 3, 224, 224) float frames in [0, 1]."""
    import skimage.data

    imgs = [torch.from_numpy(getattr(skimage.data, n)()).permute(2, 0, 1).float() / 255.0 for n in names]
    return torch.stack([torch.nn.functional.interpolate(i[None], size=(224, 224), mode="bilinear")[0]
                        for i in imgs])


def test_moe_with_saved_visual_checkpoint(tmp_path, exp1, text1):
    torch.manual_seed(0)  # random weights FOR THE TEST: no trained visual context expert exists to ship
    expert = VisualContextExpert(exp1.labels)
    vpath = save_visual_checkpoint(tmp_path / "visual.pt", expert)
    gpath = save_gate_checkpoint(tmp_path / "gate.pt", exp1.labels, torch.randn(2, 384 + 512) * 0.05,
                                 torch.tensor([0.0, 0.5]))
    loaded = VisualContextExpert.from_checkpoint(vpath, exp1.labels, device="cpu")
    frames = _real_frames("astronaut", "coffee", "chelsea")
    np.testing.assert_allclose(loaded.score_frames(frames), expert.eval().score_frames(frames), atol=1e-5)
    uint8 = (frames * 255).round().to(torch.uint8)
    np.testing.assert_allclose(loaded.score_frames(uint8), loaded.score_frames(uint8.float() / 255), atol=1e-6)

    moe = MixtureOfExpertsContext(text1, mode="experiment1", visual_checkpoint=vpath, gate_checkpoint=gpath,
                                  frame_batch_size=2)
    videos = [frames[:2], frames[2:], frames[:0]]
    titles = [WEDDING, "My cat sleeps on the sofa", ARREST]
    scores = moe.score(titles, None, videos)
    assert scores.shape == (3, 653) and scores.dtype == np.float32
    assert np.isfinite(scores).all() and scores.min() >= 0.0 and scores.max() <= 1.0
    p_text = text1.score(titles)
    p_vis, _ = loaded.score_videos(videos)
    lo, hi = np.minimum(p_text[:2], p_vis[:2]), np.maximum(p_text[:2], p_vis[:2])
    assert (scores[:2] >= lo - 1e-6).all() and (scores[:2] <= hi + 1e-6).all()  # a convex mix of the experts
    assert not np.allclose(scores[:2], p_text[:2], atol=1e-3)  # the visual expert contributed
    np.testing.assert_allclose(scores[2], p_text[2], atol=1e-6)  # no frames: text expert alone

    other = tuple(exp1.labels[:10])
    with pytest.raises(ContextCheckpointError, match="another taxonomy"):
        VisualContextExpert.from_checkpoint(vpath, other)


# -------------------------------------------------------------------------------------------------------- to_sparse


def _reference_sparse(scores, labels, threshold, top_k):
    out = []
    for row in scores:
        items = sorted(((-v, j) for j, v in enumerate(row) if not np.isnan(v)))
        if top_k is not None:
            items = items[:top_k]
        out.append([(labels[j], float(-nv)) for nv, j in items if threshold is None or -nv >= threshold])
    return out


@pytest.mark.parametrize("threshold,top_k", [(0.5, None), (None, 3), (0.6, 4), (None, 50), (1.5, None)])
def test_to_sparse_matches_a_plain_reference(threshold, top_k):
    rng = np.random.default_rng(3)
    scores = rng.random((40, 25)).astype(np.float32).round(2)  # rounding forces ties
    scores[5, :] = np.nan
    scores[6, 3] = np.nan
    labels = [f"c{j}" for j in range(25)]
    assert to_sparse(scores, labels, threshold, top_k) == _reference_sparse(scores, labels, threshold, top_k)


def test_to_sparse_edge_cases():
    labels = ["a", "b", "c"]
    assert to_sparse(np.zeros((0, 3), np.float32), labels, threshold=0.5) == []
    with pytest.raises(ValueError, match="threshold, top_k"):
        to_sparse(np.zeros((1, 3)), labels)
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        to_sparse(np.zeros((1, 4)), labels, top_k=1)


def test_experiment1_annotations_also_score_the_video_filter_labels(exp1, offline_sentence_model):
    """Experiment 1's filter (video games, animated content) needs scores for labels outside the 653 contexts: they
    are scored in addition for the filtered taxonomy only, and the real model fires on them for such titles."""
    import dataclasses

    from cxatlas.models.annotation import scored_labels
    from tests.conftest import make_config

    c = make_config(Path("/tmp/unused")).settings.annotate.context
    labels, texts = scored_labels(c)
    extra = labels[len(exp1.labels):]
    assert labels[:len(exp1.labels)] == exp1.labels and set(extra) == set(c.filter_labels) - set(exp1.labels)
    assert extra and len(texts) == len(labels)
    other = dataclasses.replace(c, taxonomy="nature2021_exp2")
    assert scored_labels(other)[0] == load_taxonomy("nature2021_exp2").labels  # no filter for experiment 2
    model = TextContextModel(labels, label_texts=texts, device="cpu")
    scores = model.score(["Minecraft survival let's play episode 12 video game gameplay",
                          "Cartoon animation for kids: funny animated cats", "Our wedding day in Lisbon"])
    col = {label: i for i, label in enumerate(labels)}
    assert scores[0, col["video game"]] >= 0.5 and scores[1, col["animation"]] >= 0.5
    assert max(scores[2, col[x]] for x in extra) < 0.5
