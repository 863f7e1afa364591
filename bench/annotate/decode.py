"""The ``decode`` part: frames/s of the UDF's decoder against a bare PyAV loop on the same files.

:func:`cxatlas.media.video.sample_windows` (the annotate UDF's call, with the config's ``annotate.video`` settings
and every window, so every frame is decoded) against ``bare_all`` (PyAV decoding every frame and converting each to
RGB at the UDF's output size), ``bare_same`` (converting only the frames the UDF converted: the UDF's own overhead)
and ``codec`` (decoding without converting: the floor). Target: ratio >= 0.8.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from bench.annotate.common import annotate_settings, load_label, verdict
from bench.tables import print_table

DECODE_TARGET = 0.8
ALL_WINDOWS = 1_000_000  # max_windows large enough that sample_windows tiles (and so decodes) the whole video


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
