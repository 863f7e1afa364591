"""The one package that touches Delta tables: Delta Lake on Spark (delta-spark), registered in the Hive catalog.

Every table lives at ``<data_root>/<tables.dir>/<name>`` and is registered by name as ``<catalog.database>.<name>``
(a Hive metastore that survives restarts, see :mod:`cxatlas.warehouse.metastore`), with its table and column
comments. All writing and committing is Delta's own: appends use Delta's writer, upserts are ``MERGE INTO`` (with
schema evolution when asked), ``optimize`` (Z-ORDER on the geobin columns of the annotation tables), ``vacuum``,
history, time travel and checkpoints are Delta's. The project writes no Delta log entry itself.

Concurrency: Delta's optimistic concurrency control decides. Writes of keyed rows go through ``MERGE`` (not blind
appends), so two jobs inserting the same keys conflict instead of duplicating them; a write that loses a commit race
(one of delta-spark's conflict exceptions, :mod:`delta.exceptions`) is retried ``tables.conflict_retries`` times
(re-reading the table, logged), then fails with a message naming the conflict and what to do. A job killed mid-write
leaves the table at its previous version: its files are never committed, and ``vacuum`` removes them later.

One module per concern: :mod:`.table` (location, catalog, reading, writing), :mod:`.commit` (conflicts, the commit
tag, what a commit changed), :mod:`.checks` (input and key checks), :mod:`.change_feed`, :mod:`.maintenance`
(history, vacuum, optimize), :mod:`.store` (all tables of one root) and :mod:`.errors`.

Modelled on delta-io/delta ``python/delta/tables.py``: a facade per table, factories, argument checks at the boundary.
"""
from cxatlas.warehouse.tables.change_feed import CHANGE_FEED
from cxatlas.warehouse.tables.commit import USER_METADATA, CommitResult, commits_made, conflicts, is_conflict
from cxatlas.warehouse.tables.errors import ConcurrentCommitError, DuplicateKeyError, TableError
from cxatlas.warehouse.tables.maintenance import SAFE_RETENTION_HOURS
from cxatlas.warehouse.tables.store import TableStore
from cxatlas.warehouse.tables.table import Table, with_columns_of

__all__ = ["CHANGE_FEED", "SAFE_RETENTION_HOURS", "USER_METADATA", "CommitResult", "ConcurrentCommitError",
           "DuplicateKeyError", "Table", "TableError", "TableStore", "commits_made", "conflicts", "is_conflict",
           "with_columns_of"]
