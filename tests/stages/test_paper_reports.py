"""Issue #22: the Brooks and Inagaki sections of ``cxatlas report``, read back from the page, built from what the
real commands wrote (``cxatlas ppca``, ``cxatlas au-series``, ``cxatlas au-tuning`` on small inputs); the
universality classes on planted loadings; the AU-tuning command on two real fer7 models with a planted unit swap.
No Spark: the sections come from files, and ``render_html`` is the page ``cxatlas report`` writes."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cxatlas.cli.main import main
from cxatlas.core.config import load_config
from cxatlas.stages import brooks_report, inagaki_report
from cxatlas.stages.report import SECTION_PROVIDERS, render_html
from cxatlas.stats.ppca import universality_classes
from tests.html_tables import number, report_tables

COUNTRIES = ["CN", "ET", "US"]
LABELS = ["joy", "anger", "doubt", "contemplation"]


def test_universality_classes_on_planted_loadings():
    groups = [g for g in COUNTRIES for _ in LABELS]
    labels = [lab for _ in COUNTRIES for lab in LABELS]
    idx = {(g, lab): i for i, (g, lab) in enumerate(zip(groups, labels))}
    rot = np.zeros((len(groups), 4))
    sig = np.zeros_like(rot, dtype=bool)
    for g in COUNTRIES:  # dim 1: joy everywhere, significant everywhere -> same concept
        rot[idx[g, "joy"], 0], sig[idx[g, "joy"], 0] = 0.6, True
    for g, lab in zip(COUNTRIES, ["doubt", "contemplation", "doubt"]):  # dim 2: doubt / contemplation -> close
        rot[idx[g, lab], 1], sig[idx[g, lab], 1] = 0.5, True
        rot[idx[g, "joy"], 1] = 0.05
    for g in COUNTRIES:  # dim 3: anger everywhere, not significant in ET -> consistent but not significant
        rot[idx[g, "anger"], 2], sig[idx[g, "anger"], 2] = -0.5, g != "ET"  # negative: orientation is arbitrary
    for g, lab in zip(COUNTRIES, ["joy", "anger", "doubt"]):  # dim 4: three different concepts -> culture-specific
        rot[idx[g, lab], 3], sig[idx[g, lab], 3] = 0.5 + 0.1 * COUNTRIES.index(g), True
    out = universality_classes(rot, sig, groups, labels)
    assert [r["class"] for r in out] == ["same_concept", "close_concept", "consistent_not_significant",
                                         "culture_specific"]
    assert [r["universal"] for r in out] == [True, True, True, False]
    assert out[2]["not_significant"] == "ET" and out[2]["countries_significant"] == 2
    assert out[1]["concepts"] == "CN:doubt;ET:contemplation;US:doubt"
    # two countries not significant is beyond "not statistically significant in Ethiopia"
    sig[idx["US", "anger"], 2] = False
    assert universality_classes(rot, sig, groups, labels)[2]["class"] == "culture_specific"


def _brooks_inputs(tmp_path, n=150, seed=0):
    """DNN outputs and judgments on the same stimuli, attributes country:label, two planted shared dimensions."""
    rng = np.random.default_rng(seed)
    attrs = [f"{g}:{lab}" for g in COUNTRIES for lab in LABELS]
    w = np.zeros((2, len(attrs)))
    w[0, [attrs.index(f"{g}:joy") for g in COUNTRIES]] = 1.0
    w[1, [attrs.index(a) for a in ("CN:anger", "ET:doubt", "US:contemplation")]] = 1.0
    z = rng.normal(size=(n, 2)) * [3.0, 2.0]
    paths = []
    for name in ("dnn", "judgments"):
        x = z @ w + rng.normal(size=(n, len(attrs)))
        path = tmp_path / f"{name}.csv"
        pd.DataFrame(x, columns=attrs).assign(seed_id=[f"s{i}" for i in range(n)]).to_csv(path, index=False)
        paths.append(str(path))
    return paths


def test_report_brooks_section_from_a_real_ppca_run(tmp_path, capsys):
    data = tmp_path / "data"
    cfg = load_config(data_root=str(data))
    assert {brooks_report.__name__, inagaki_report.__name__} <= set(SECTION_PROVIDERS)  # what `cxatlas report` calls
    assert brooks_report.report_sections(None, cfg, None, {}) == []  # no results yet: no section
    paths = _brooks_inputs(tmp_path)
    out = data / "results" / "brooks"
    assert main(["--data", str(data), "--set", "ppca.resamples=60", "--set", "ppca.loading_resamples=30", "ppca",
                 "--input", paths[0], "--input", paths[1], "--id", "seed_id", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "universal in meaning:" in text
    run = json.loads((out / "ppca_run.json").read_text())
    sig = pd.read_csv(out / "significance.csv")
    uni = pd.read_csv(out / "universality.csv")
    assert run["n_kept"] == 2 == len(uni) and run["n_universal"] == int(uni["universal"].sum())
    assert set(uni["class"]) <= {"same_concept", "close_concept", "consistent_not_significant", "culture_specific"}

    sections = brooks_report.report_sections(None, cfg, None, {})
    assert [s.id for s in sections] == ["brooks-brooks"]
    page = render_html({"analysis_id": "a-1"}, {}, {}, sections)
    assert '<section id="brooks-brooks">' in page and "data:image/png;base64," in page
    assert "bh_forwardstop_snr" in page
    tables = report_tables(page)
    counts = tables["Brooks brooks: the paper's counts beside ours"].set_index("quantity")
    assert number(counts.loc["kept dimensions (PPCA, DNN outputs vs judgments)", "paper"]) == 28
    assert number(counts.loc["kept dimensions (PPCA, DNN outputs vs judgments)", "ours"]) == run["n_kept"]
    assert np.isnan(number(counts.loc["preserved dimensions (G-PPCA of judgments across countries)", "ours"]))
    assert number(counts.loc["preserved dimensions (G-PPCA of judgments across countries)", "paper"]) == 31
    assert number(counts.loc["dimensions universal in meaning", "paper"]) == 21
    assert number(counts.loc["dimensions universal in meaning", "ours"]) == run["n_universal"]
    assert number(counts.loc["% preserved (r^2)", "paper"]) == 0.63
    assert number(counts.loc["% preserved (r^2)", "ours"]) == pytest.approx(run["preservation_r"] ** 2, abs=1e-3)
    kept = tables["Brooks brooks: kept dimensions and the criteria of the rule (bh_forwardstop_snr)"]
    assert kept["component"].map(number).tolist() == sig.loc[sig["kept"], "component"].tolist()
    np.testing.assert_allclose(kept["snr"].map(number), sig.loc[sig["kept"], "snr"], rtol=1e-3)
    shown = tables["Brooks brooks: universality of the rotated dimensions"]
    assert shown["class"].tolist() == uni["class"].tolist() and shown["concepts"].tolist() == uni["concepts"].tolist()
    graph = tables["Brooks brooks: pair graph per dimension (significant positive country-pair links)"]
    assert len(graph) == len(sig)  # a two-dataset run has one pair per dimension
    top = tables["Brooks brooks: the 5 largest rotated loadings per dimension"]
    assert set(top[top["rotated"] == "1"]["attribute"].head(3)) in ({f"{g}:joy" for g in COUNTRIES},
                                                                    {"CN:anger", "ET:doubt", "US:contemplation"})


def _fer7_pair(tmp_path):
    """Two fer7 checkpoints of the shipped weights; in B the 'happy' and 'sad' output units are swapped."""
    import torch

    from cxatlas.models.checkpoint import save_checkpoint
    from cxatlas.models.fer7 import Fer7

    a = Fer7.from_package()
    labels = list(a.labels)
    state = {k: v.clone() for k, v in a.state_dict().items()}
    paths = [save_checkpoint(tmp_path / "A.pt", "fer7", state, labels, a.input_spec.to_dict(), a.architecture())]
    i, j = labels.index("happy"), labels.index("sad")
    perm = torch.arange(len(labels))
    perm[[i, j]] = perm[[j, i]]
    swapped = dict(state)
    swapped["classifier.weight"], swapped["classifier.bias"] = state["classifier.weight"][perm], \
        state["classifier.bias"][perm]
    paths.append(save_checkpoint(tmp_path / "B.pt", "fer7", swapped, labels, a.input_spec.to_dict(),
                                 a.architecture()))
    return paths, labels


def test_au_tuning_command_recovers_a_planted_unit_swap_and_reports_it(tmp_path, capsys):
    data = tmp_path / "data"
    series = tmp_path / "series"
    assert main(["--data", str(data), "au-series", "--out", str(series)]) == 0
    (ckpt_a, ckpt_b), labels = _fer7_pair(tmp_path)
    out = data / "results" / "au"

    # bad input first: a manifest row without its image -> one line, exit 2, nothing written
    bad = tmp_path / "bad.csv"
    manifest = pd.read_csv(series / "manifest.csv")
    manifest.assign(image=manifest["image"].where(manifest.index != 3)).to_csv(bad, index=False)
    capsys.readouterr()
    assert main(["--data", str(data), "au-tuning", "--manifest", str(bad), "--checkpoint-a", str(ckpt_a),
                 "--checkpoint-b", str(ckpt_b), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty au, level or image" in err[0] and not out.exists()

    # a confusion table whose choice rates follow the AU matrix (B tested on A: rows A's units): rho must be 1
    sim_guess = np.eye(len(labels))
    sim_guess[[labels.index("happy"), labels.index("sad")]] = sim_guess[[labels.index("sad"), labels.index("happy")]]
    conf = pd.DataFrame([{"train": "B", "test": "A", "condition": "swapped", "true_label": t, "predicted_label": p,
                          "count": 50 if sim_guess[i, j] else 1} for i, t in enumerate(labels)
                         for j, p in enumerate(labels)])
    conf.to_csv(tmp_path / "confusion.csv", index=False)
    assert main(["--data", str(data), "--set", "train.device=cpu", "au-tuning", "--manifest",
                 str(series / "manifest.csv"), "--checkpoint-a", str(ckpt_a), "--checkpoint-b", str(ckpt_b),
                 "--name", "A", "--name", "B", "--confusion", str(tmp_path / "confusion.csv"), "--out", str(out)]) == 0
    assert "AU tuning of models A and B" in capsys.readouterr().out
    sim = pd.read_csv(out / "au_similarity.csv").pivot(index="unit_a", columns="unit_b", values="spearman")
    assert sim.loc["sad", "happy"] == pytest.approx(1.0) and sim.loc["happy", "sad"] == pytest.approx(1.0)
    for u in labels:
        if u not in ("happy", "sad"):
            assert sim.loc[u, u] == pytest.approx(1.0), u
    assert sim.loc["happy", "happy"] < 0.999  # the swapped units are not the same units
    resp = pd.read_csv(out / "au_responses.csv")
    null = resp[resp.level == resp.level.min()]
    assert null["baseline_subtracted"].isna().all() and resp["response"].between(0, 1).all()
    vs = pd.read_csv(out / "au_vs_confusion.csv")
    assert vs[["train", "test"]].values.tolist() == [["B", "A"]] and vs["spearman"].iloc[0] > 0.4

    cfg = load_config(data_root=str(data))
    sections = inagaki_report.report_sections(None, cfg, None, {})
    assert [s.id for s in sections] == ["inagaki-au-au"]
    tables = report_tables(render_html({"analysis_id": "a-1"}, {}, {}, sections))
    matrix = tables[next(k for k in tables if "AU-profile similarity matrix" in k)].set_index("A \\ B")
    assert number(matrix.loc["sad", "happy"]) == pytest.approx(1.0) and number(matrix.loc["neutral", "neutral"]) == 1
    shown = tables[next(k for k in tables if "vs the swapped confusion" in k)]
    assert number(shown["spearman"].iloc[0]) == pytest.approx(vs["spearman"].iloc[0], abs=1e-3)


def test_pool_mimics_targets_are_seed_means_per_country_assigned_to_every_mimic(tmp_path, capsys):
    rows = [  # seed s1: mimics m1 (rated in US twice, CN once) and m2 (rated in US once); seed s2: mimic m3 (CN)
        ("m1", "US", "s1", 10.0, 0.0), ("m1", "US", "s1", 30.0, 4.0), ("m1", "CN", "s1", 50.0, 8.0),
        ("m2", "US", "s1", 50.0, 2.0), ("m3", "CN", "s2", 70.0, 1.0)]
    ratings = pd.DataFrame(rows, columns=["uri", "country", "seed_id", "joy", "anger"])
    ratings.to_csv(tmp_path / "r.csv", index=False)
    out, judg = tmp_path / "pooled.parquet", tmp_path / "judgments.csv"
    assert main(["--data", str(tmp_path / "d"), "pool-mimics", "--ratings", str(tmp_path / "r.csv"), "--out",
                 str(out), "--judgments", str(judg)]) == 0
    pooled = pd.read_parquet(out).set_index(["uri", "country"]).sort_index()
    # m2 was rated only in the US, yet carries its seed's CN mean too ("regardless of the country of the mimic")
    assert set(pooled.index) == {("m1", "US"), ("m1", "CN"), ("m2", "US"), ("m2", "CN"), ("m3", "CN")}
    assert pooled.loc[("m2", "US"), "joy"] == pytest.approx(30.0) == pooled.loc[("m1", "US"), "joy"]
    assert pooled.loc[("m2", "CN"), "anger"] == pytest.approx(8.0) and pooled.loc[("m3", "CN"), "joy"] == 70.0
    j = pd.read_csv(judg).set_index("seed_id")
    assert list(j.columns) == ["CN:joy", "CN:anger", "US:joy", "US:anger"]
    assert j.loc["s1", "US:anger"] == pytest.approx(2.0) and np.isnan(j.loc["s2", "US:joy"])
    # a mimic under two seeds is refused: one line, exit 2, nothing written
    ratings.loc[4, "uri"] = "m1"
    ratings.to_csv(tmp_path / "bad.csv", index=False)
    capsys.readouterr()
    assert main(["--data", str(tmp_path / "d"), "pool-mimics", "--ratings", str(tmp_path / "bad.csv"), "--out",
                 str(tmp_path / "no.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "more than one seed_id" in err[0] and not (tmp_path / "no.parquet").exists()


def test_predict_images_scores_stills_for_ppca(tmp_path, capsys):
    from PIL import Image
    from skimage import data as skdata

    from cxatlas.models.registry import load_expression_model

    Image.fromarray(skdata.astronaut()).save(tmp_path / "astronaut.png")
    Image.fromarray(np.full((120, 120, 3), 128, np.uint8)).save(tmp_path / "grey.png")
    pd.DataFrame({"stimulus_id": ["s1", "s2", "s3"], "image": ["astronaut.png", "grey.png", "astronaut.png"]}).to_csv(
        tmp_path / "images.csv", index=False)
    out = tmp_path / "outputs.csv"
    assert main(["--data", str(tmp_path / "d"), "--set", "train.device=cpu", "predict-images", "--model", "fer7",
                 "--images", str(tmp_path / "images.csv"), "--out", str(out)]) == 0
    assert "scored 2 of 3 images" in capsys.readouterr().out
    scores = pd.read_csv(out, dtype={"stimulus_id": str})
    model = load_expression_model("fer7", device="cpu")
    assert list(scores.columns) == ["stimulus_id", *model.labels] and scores["stimulus_id"].tolist() == ["s1", "s3"]
    assert scores.iloc[0, 1:].astype(float).idxmax() == "happy"  # she smiles
    np.testing.assert_allclose(scores.iloc[0, 1:].astype(float), scores.iloc[1, 1:].astype(float))
    assert pd.read_csv(tmp_path / "outputs_no_face.csv")["stimulus_id"].astype(str).tolist() == ["s2"]
    capsys.readouterr()
    assert main(["--data", str(tmp_path / "d"), "predict-images", "--model", "fer7", "--images",
                 str(tmp_path / "images.csv"), "--id", "seed", "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lacks column(s) ['seed']" in err[0] and not (tmp_path / "x.csv").exists()
