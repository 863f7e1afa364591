"""Simulated worlds with known ground truth, as files (``cxatlas simulate``) or straight into the tables.

Simulation is not part of the data path: the stages never import this module. It sits above them, writing a
world either in the import format (for ``cxatlas import-annotations``) or directly into ``uploads`` and the
annotation tables inside Spark tasks (for benchmarks and tests at scale).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from cxatlas.core.config import Config
from cxatlas.core.schemas import CONTEXT_SCORE, UPLOADS, VIDEO_CONTEXTS, VIDEO_EXPRESSIONS, spark_schema
from cxatlas.core.taxonomies import published_data_dir
from cxatlas.sim import simulate
from cxatlas.stages.import_annotations import shape_to_schema
from cxatlas.warehouse.tables import CommitResult, TableStore


@dataclass
class SimulateReport:
    out: str
    population_dir: str
    n_videos: int
    n_contexts: int
    seconds: float

    def summary(self) -> str:
        return (f"simulated {self.n_videos} videos x {self.n_contexts} contexts in {self.seconds:.1f}s -> {self.out} "
                f"(import it with `cxatlas import-annotations --input {self.out}`); population values (asymptotic, "
                f"and *_at_n: what the estimates converge to at this size) in {self.population_dir}")


def world_params_from_config(cfg: Config):
    """:func:`cxatlas.sim.simulate.make_world_params` with the ``simulate:`` settings."""
    s = cfg.settings.simulate
    lo, hi = s.prevalence_range
    return simulate.make_world_params(
        s.experiment, data_dir=s.data_dir or published_data_dir(), regions_csv=cfg.settings.regions.file,
        regional_share=s.regional_share, seed=s.seed, n_contexts=s.n_contexts,
        prevalence_range=(float(lo), float(hi)), prevalence_regional_sd=s.prevalence_regional_sd,
        effect_scale=s.effect_scale, region_weights=s.region_weights)


def run_simulate(cfg: Config, n_videos: int, out: str) -> SimulateReport:
    """Write an ``n_videos`` simulated world in the import format to folder ``out`` (Parquet parts) and its exact
    population statistics to ``out/_population`` (Spark and the importer skip ``_``-prefixed entries)."""
    started = time.time()
    params = world_params_from_config(cfg)
    simulate.write_import_dataset(params, n_videos, out, chunk_rows=cfg.settings.simulate.chunk_rows)
    pop = simulate.population_truth(params)
    expected = simulate.expected_at_size(pop, params.region_weights, n_videos)
    pop_dir = simulate.save_population(pop, Path(out) / "_population", expected)
    return SimulateReport(str(out), str(pop_dir), n_videos, len(params.contexts), time.time() - started)


@dataclass
class _GenerateRows:
    """``mapInArrow`` function: input row ``s`` makes simulated videos ``[s * slice_rows, (s + 1) * slice_rows)``
    from :func:`cxatlas.sim.simulate.iter_sparse_chunks` (the rows do not depend on the slicing), with contexts already
    in the sparse ``list<struct<label, score>>`` form built from the CSR arrays (no per-video loop)."""

    params: object
    n_videos: int
    slice_rows: int
    chunk_rows: int
    bin_deg: float
    first: int = 0           # rows [first, stop) of the n_videos world
    stop: int | None = None

    def __call__(self, batches):
        import numpy as np
        import pyarrow as pa

        labels = pa.array(list(self.params.contexts), pa.string())
        regions = np.asarray(self.params.region_ids, dtype=object)
        for batch in batches:
            for s in batch.column(0).to_numpy():
                start = self.first + int(s) * self.slice_rows
                stop = min(start + self.slice_rows, self.n_videos if self.stop is None else self.stop)
                for ch in simulate.iter_sparse_chunks(self.params, self.n_videos, chunk_rows=self.chunk_rows, start=start,
                                                      stop=stop):
                    C = ch.C.tocsr()
                    structs = pa.StructArray.from_arrays(
                        [labels.take(pa.array(C.indices.astype(np.int32))), pa.array(C.data.astype(np.float32))],
                        names=["label", "score"])
                    cols = {"video_id": pa.array(ch.video_id, pa.string()),
                            "region": pa.array(regions[ch.region], pa.string()),
                            "lat": pa.array(ch.lat), "lon": pa.array(ch.lon),
                            "lat_bin": pa.array(np.floor(ch.lat / self.bin_deg).astype(np.int32)),
                            "lon_bin": pa.array(np.floor(ch.lon / self.bin_deg).astype(np.int32))}
                    for j, col in enumerate(self.params.expression_columns):
                        cols[col] = pa.array(np.ascontiguousarray(ch.X[:, j]))
                    cols["contexts"] = pa.ListArray.from_arrays(pa.array(C.indptr.astype(np.int32)), structs)
                    yield pa.RecordBatch.from_arrays(list(cols.values()), names=list(cols))


def import_simulated(spark, cfg: Config, store: TableStore, params, n_videos: int, *,
                     model_version: str = "simulated", taxonomy: str = "simulated",
                     model_name: str = "simulator", row_range: tuple[int, int] | None = None) -> dict[str, CommitResult]:
    """Write an ``n_videos`` simulated world (:class:`cxatlas.sim.simulate.WorldParams`) into ``uploads``,
    ``video_expressions`` and ``video_contexts`` (one commit each), generated inside Spark tasks.

    The rows equal what :func:`run_import` makes of :func:`cxatlas.sim.simulate.write_import_dataset`'s files, without
    the wide file and its validation (the simulator's rows are valid by construction): the way to build large
    inputs for benchmarks and tests. Meant for fresh tables; it appends without checking for existing keys.
    ``row_range=(first, stop)`` writes only those rows of the ``n_videos`` world (a world that grows: the rest later).
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    import pyarrow as pa

    arrow = pa.schema([("video_id", pa.string()), ("region", pa.string()), ("lat", pa.float64()),
                       ("lon", pa.float64()), ("lat_bin", pa.int32()), ("lon_bin", pa.int32()),
                       *[(c, pa.float32()) for c in params.expression_columns],
                       ("contexts", pa.list_(CONTEXT_SCORE))])
    sim = cfg.settings.simulate
    first, stop = row_range or (0, n_videos)
    n_slices = max(1, -(-(stop - first) // sim.slice_rows))
    gen = _GenerateRows(params, n_videos, sim.slice_rows, sim.chunk_rows, cfg.settings.geo.bin_deg, first, stop)
    rows = (spark.range(n_slices, numPartitions=n_slices).mapInArrow(gen, spark_schema(arrow))
            .persist(StorageLevel.DISK_ONLY))
    now = F.current_timestamp()
    lineage = {"video_id": F.col("video_id"), "region": F.col("region"), "lat_bin": F.col("lat_bin"),
               "lon_bin": F.col("lon_bin"), "model_name": F.lit(model_name), "annotate_time": now,
               "run_id": F.lit("simulated")}
    commits = {}
    up = {**lineage, "lat": F.col("lat"), "lon": F.col("lon"), "source": F.lit("simulated"), "ingest_time": now}
    commits[UPLOADS.name] = store.table(UPLOADS).append(shape_to_schema(rows, UPLOADS.schema, up))
    ex = {**lineage, "model_version": F.lit(model_version), **{c: F.col(c) for c in params.expression_columns}}
    commits[VIDEO_EXPRESSIONS.name] = store.table(VIDEO_EXPRESSIONS).append(
        shape_to_schema(rows, VIDEO_EXPRESSIONS.schema, ex))
    cx = {**lineage, "model_version": F.lit(model_version), "taxonomy": F.lit(taxonomy), "contexts": F.col("contexts")}
    commits[VIDEO_CONTEXTS.name] = store.table(VIDEO_CONTEXTS).append(shape_to_schema(rows, VIDEO_CONTEXTS.schema, cx))
    rows.unpersist()
    return commits
