"""Writing one analysis' result tables: every table in one commit of its own, all of them at the same time.

The result rows are small and already on the driver, so what a sequential write costs is latency, not work: each
table's commit waits for its Delta log, a tiny Spark job and the commit protocol, one after the other (19 s for the
nine tables of issue #25, whatever their size). The commits touch different tables, so they cannot conflict, and
Spark runs jobs submitted from several driver threads side by side: the tables are written by a thread each.

Visibility is unchanged: every reader and view joins on the ``analyses`` row, which the caller commits only after
all of these have returned (and not at all when one of them raised).

Creating a table that does not exist yet (the first analysis of a data root: a Delta commit and catalog round trips
to the metastore for each) costs more than writing it, and needs nothing from the statistics: it starts in the
background once the inputs are known (:func:`create_in_background`) and the writers wait for it.
"""
from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable, Sequence

import pandas as pd

from cxatlas.core.schemas import TableSpec
from cxatlas.stages.analyze.background import in_background
from cxatlas.stages.analyze.results import _to_spark
from cxatlas.warehouse.tables.table import sql_string

log = logging.getLogger(__name__)

__all__ = ["create_in_background", "write_result_tables"]


def create_in_background(store, specs: Sequence[TableSpec]) -> Future:
    """Create and register the tables of ``specs`` that are missing (the database first, then the tables all at
    once) in the background (:func:`~cxatlas.stages.analyze.background.in_background`)."""
    def create() -> list:
        store.ensure_database()
        with ThreadPoolExecutor(max_workers=max(1, len(specs)), thread_name_prefix="cxatlas-create") as pool:
            return list(pool.map(lambda spec: store.table(spec).create_if_missing(), specs))

    return in_background("cxatlas-create", create)


def write_result_tables(spark, store, analysis_id: str, frames: Iterable[tuple[TableSpec, pd.DataFrame]],
                        id_column: str = "analysis_id") -> dict:
    """Write each ``(spec, rows)`` as the rows of ``analysis_id`` in its table, concurrently; the commits by table name.

    One commit per table REPLACES this id's rows: rows left by a killed run of the same id (invisible, having no
    ``analyses`` row) are replaced, never doubled. ``evolve_schema``: tables made by an older cxatlas gain the newer
    columns. The first failure is raised after every thread has finished (none is left writing behind the caller).
    """
    only_this = f"{id_column} = {sql_string(analysis_id)}"
    jobs = [(spec, _to_spark(spark, spec, pdf, analysis_id, id_column), len(pdf)) for spec, pdf in frames]

    def write(spec, df, n_rows: int):
        table = store.table(spec).create_if_missing()
        return table.replace_where(df, only_this, evolve_schema=True, n_rows=n_rows)

    with ThreadPoolExecutor(max_workers=max(1, len(jobs)), thread_name_prefix="cxatlas-results") as pool:
        futures = {spec.name: pool.submit(write, spec, df, n_rows) for spec, df, n_rows in jobs}
        errors = [f.exception() for f in futures.values() if f.exception() is not None]
    if errors:
        raise errors[0]
    commits = {name: f.result() for name, f in futures.items()}
    log.info("wrote %d result tables of %s", len(commits), analysis_id)
    return commits
