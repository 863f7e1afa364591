"""The ``runs`` table: one row per scheduled run, written when it starts and completed when it ends.

Why two writes: a run killed with SIGKILL cannot write anything at its end, so its row is written first with status
``running``; the next run that takes over its lease marks it ``failed`` with the reason. Every row says what the
run did (counts), which input table versions it ended at, what it committed and under which configuration (a hash
of the resolved settings), so "what ran last night, on what, and with which settings" is one SQL query.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from typing import Any, Mapping

from cxatlas.core.config import Config
from cxatlas.core.run_schemas import RUNS
from cxatlas.core.runs import utc_timestamp
from cxatlas.core.schemas import spark_schema
from cxatlas.warehouse.tables import TableStore

COUNT_COLUMNS = ("manifests", "rows_in", "new", "updated", "withdrawn", "annotated", "quarantined", "remaining")


def config_hash(cfg: Config) -> str:
    """sha256 of the resolved configuration (every setting, sorted), so two runs' settings compare by one value."""
    return hashlib.sha256(json.dumps(cfg.data, sort_keys=True, default=str).encode()).hexdigest()


class RunLog:
    """The row of one run in ``runs``."""

    def __init__(self, store: TableStore, run_id: str, command: str, cfg: Config):
        self.store, self.run_id, self.command = store, run_id, command
        self.started = time.time()
        self.row: dict[str, Any] = dict(run_id=run_id, command=command, started=utc_timestamp(self.started),
                                        finished=None, status="running", error=None, host=socket.gethostname(),
                                        pid=os.getpid(), analysis_id=None, input_versions=None,
                                        output_versions=None, config_hash=config_hash(cfg), stage_seconds=None,
                                        **{c: None for c in COUNT_COLUMNS})

    def _write(self, rows: list[dict[str, Any]], *, new: bool = False) -> None:
        """Upsert ``rows`` (one per run id) into ``runs``; ``new``: their run ids cannot be there yet (a run's first
        row), so a blind append does it without MERGE's join."""
        from pyspark.sql import functions as F

        spark = self.store.spark
        schema = spark_schema(RUNS.schema)
        text = {f.name: ("string" if f.name in ("started", "finished") else f.dataType.simpleString()) for f in schema}
        df = spark.createDataFrame([tuple(r.get(n) for n in text) for r in rows],
                                   ", ".join(f"`{n}` {t}" for n, t in text.items()))
        df = df.select(*[F.col(n).cast("timestamp").alias(n) if n in ("started", "finished") else F.col(n)
                         for n in text])
        table = self.store.table(RUNS)
        if new:
            table.append(df, evolve_schema=True)  # a runs table from before a column gains it
        else:
            table.upsert(df, evolve_schema=True, keys_unique=len({r["run_id"] for r in rows}) == len(rows))

    def start(self) -> None:
        self._write([self.row], new=True)

    def finish(self, status: str, error: str | None = None, counts: Mapping[str, int] | None = None,
               analysis_id: str | None = None, input_versions: Mapping[str, int] | None = None,
               output_versions: Mapping[str, int] | None = None, stage_seconds: str | None = None) -> None:
        self.row.update(finished=utc_timestamp(time.time()), status=status, error=error, analysis_id=analysis_id,
                        stage_seconds=stage_seconds,
                        input_versions=json.dumps(dict(input_versions or {}), sort_keys=True),
                        output_versions=json.dumps(dict(output_versions or {}), sort_keys=True))
        for name in COUNT_COLUMNS:
            if counts is not None and name in counts:
                self.row[name] = int(counts[name])
        self._write([self.row])

    def mark_dead(self, run_id: str, why: str) -> None:
        """Complete the row of a run that died holding the lease (it could not write its own end)."""
        from pyspark.sql import functions as F

        table = self.store.table(RUNS)
        if not table.exists():
            return
        rows = table.read().filter((F.col("run_id") == run_id) & (F.col("status") == "running")).collect()
        if rows:
            dead = rows[0].asDict()
            dead.update(status="failed", error=why, finished=utc_timestamp(time.time()),
                        started=utc_timestamp(dead["started"].timestamp()))
            self._write([dead])


def recent_runs(store: TableStore, limit: int = 20):
    """The latest runs, newest first (a DataFrame)."""
    from pyspark.sql import functions as F

    table = store.table(RUNS)
    if not table.exists():
        return None
    return table.read().orderBy(F.col("started").desc(), F.col("run_id").desc()).limit(limit)
