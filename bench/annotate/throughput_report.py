"""The ``annotate`` part's tables: throughput per run, the ratios, where the time goes, the fixed costs.

Every number comes from the child of :mod:`bench.annotate.throughput`, which calls :func:`report_annotate` once all
runs are done.
"""
from __future__ import annotations

import math
import statistics
from typing import Sequence

import numpy as np

from bench.annotate.common import PHASE_NAMES, PHASES, REPO, load_label, verdict
from bench.tables import print_table

ANNOTATE_TARGET = 0.8


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


def _covered(intervals: Sequence[tuple[float, float]]) -> float:
    """Length of the union of the intervals."""
    total, end = 0.0, -math.inf
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total
