"""Committing: Delta's commit conflicts retried, each commit tagged and reported from the table's history.

A write that loses the commit race raises one of delta-spark's conflict exceptions (:mod:`delta.exceptions`,
converted from the JVM's by :mod:`delta.exceptions.captured`); only those are retried. Every commit of ours carries a
unique tag in its commit info (``userMetadata``): on the DataFrameWriter as its ``userMetadata`` option, and around a
MERGE or DELETE (which take no writer option) as the session's ``spark.databricks.delta.commitInfo.userMetadata``,
set for that one operation and then restored, never left in the session. The tag finds OUR commit in the history
(other writers' commits in between are not counted).
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from cxatlas.warehouse.spark import scoped_conf
from cxatlas.warehouse.tables.errors import ConcurrentCommitError

log = logging.getLogger(__name__)

USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"  # the session's tag for commits without a writer
# The session's tag is one setting for every thread of the process: MERGEs and DELETEs from several driver threads
# (a writer's own option needs no lock) take their tagged commits one at a time, so none commits under another's tag.
_SESSION_TAG = threading.Lock()


@dataclass
class CommitResult:
    """What one commit did. ``version`` is None when there was nothing to commit (the table is unchanged)."""

    table: str
    version: int | None
    files_added: int = 0
    files_removed: int = 0
    rows_written: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_deleted: int = 0
    tag: str | None = None  # the commit's userMetadata: tells this commit from any other at the same version number

    def describe(self) -> str:
        """One line for a job's summary: what this commit changed in its table."""
        if self.version is None:
            return f"  {self.table}: unchanged (nothing to commit)"
        return (f"  {self.table}: committed version {self.version} (+{self.files_added} files, "
                f"-{self.files_removed} files, {self.rows_written} rows written)")


# Every commit this process made, in order: when a command fails, the command line says what it committed (exit 1)
# and whether it touched no table at all (a refusal, exit 2). Read with :func:`commits_made`.
_JOURNAL: list[CommitResult] = []


def commits_made(since: int = 0) -> list[CommitResult]:
    """The commits this process made (those after the first ``since``), oldest first."""
    return list(_JOURNAL[since:])


def conflicts() -> tuple[type[BaseException], ...]:
    """delta-spark's exceptions that mean "another writer committed first": retrying from a fresh read is correct.

    Imported here, not at module level, so that importing the tables costs no pyspark import; importing
    :mod:`delta.exceptions.captured` installs delta-spark's conversion of the JVM's conflicts into these classes.
    """
    import delta.exceptions.captured  # noqa: F401
    from delta.exceptions import (ConcurrentAppendException, ConcurrentDeleteDeleteException,
                                  ConcurrentDeleteReadException, ConcurrentTransactionException,
                                  ConcurrentWriteException, DeltaConcurrentModificationException,
                                  MetadataChangedException, ProtocolChangedException)

    return (ConcurrentAppendException, ConcurrentDeleteReadException, ConcurrentDeleteDeleteException,
            ConcurrentTransactionException, MetadataChangedException, ProtocolChangedException,
            ConcurrentWriteException, DeltaConcurrentModificationException)


def is_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is Delta's "another writer committed first" (one of :func:`conflicts`)."""
    return isinstance(exc, conflicts())


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def new_tag(op: str) -> str:
    """A tag no other commit carries, for the ``userMetadata`` of one write."""
    return f"cxatlas-{op}-{uuid.uuid4().hex}"


class CommitMixin:
    """Committing for :class:`~cxatlas.warehouse.tables.Table`: retries, the tag, what the commit changed."""

    def _commit(self, op: str, action: Callable[[str], Any], *, session_tag: bool) -> CommitResult:
        """Run a write (retrying lost commit races) with a unique tag in its commit info, then report what OUR
        commit changed, read from the table's history.

        ``action(tag)`` performs the write. A writer's write puts ``tag`` on itself (``.option("userMetadata",
        tag)``, ``session_tag=False``); a MERGE or DELETE cannot, so ``session_tag=True`` sets the session's
        ``USER_METADATA`` to the tag around the action only and restores what it was (or unsets it), one such
        commit of the process at a time.
        """
        tag = new_tag(op)
        if session_tag:
            with _SESSION_TAG, scoped_conf(self.spark, {USER_METADATA: tag}):
                self._retry(op, lambda: action(tag))
        else:
            self._retry(op, lambda: action(tag))
        ours = self._tagged_commits(tag)
        if not ours:
            return CommitResult(self.spec.name, None)
        m = {k: _int(v) for k, v in (ours[0]["operationMetrics"] or {}).items()}
        inserted, updated = m.get("numTargetRowsInserted", 0), m.get("numTargetRowsUpdated", 0)
        merged = "numTargetRowsInserted" in m
        version = int(ours[0]["version"])
        _JOURNAL.append(CommitResult(self.spec.name, version))
        self._unique_after_commit(op, version, ours[0]["readVersion"])
        return CommitResult(
            self.spec.name, version,
            files_added=m.get("numTargetFilesAdded", 0) + m.get("numFiles", 0) + m.get("numAddedFiles", 0),
            files_removed=m.get("numTargetFilesRemoved", 0) + m.get("numRemovedFiles", 0),
            rows_deleted=m.get("numTargetRowsDeleted", 0) + m.get("numDeletedRows", 0),
            rows_written=inserted + updated if merged else m.get("numOutputRows", 0),
            rows_inserted=inserted if merged else m.get("numOutputRows", 0), rows_updated=updated, tag=tag)

    def _tagged_commits(self, tag: str, windows: tuple[int, ...] = (16, 256)) -> list:
        """The history rows carrying ``tag``, looked for among the latest commits only: one history read per
        write (issue #25), where reading the version before and after cost two more. A write that committed nothing
        is told by a short history or by ``windows[-1]`` commits none of which is ours (other writers' commits in
        between beyond that are not expected)."""
        for n in windows:
            rows = self._delta().history(n).collect()
            ours = [row for row in rows if row["userMetadata"] == tag]
            if ours or len(rows) < n:
                return ours
        return []

    def _retry(self, op: str, action: Callable[[], Any]) -> Any:
        attempts = self.store.conflict_retries + 1
        lost_race = conflicts()  # before the first action: a conflict it raises must already arrive as Delta's class
        for attempt in range(1, attempts + 1):
            try:
                return action()
            except lost_race as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                if attempt == attempts:
                    raise ConcurrentCommitError(
                        f"{op} into '{self.spec.name}' lost the commit race to another writer {attempts} times "
                        f"({first[:300]}). Nothing of this {op} was committed; rerun the job when the other writer "
                        f"has finished, or raise tables.conflict_retries.") from exc
                wait = 0.5 * attempt
                log.warning("%s into %s conflicted with a concurrent commit (attempt %d of %d: %s); retrying in "
                            "%.1fs", op, self.spec.name, attempt, attempts, first[:200], wait)
                time.sleep(wait)
        return None
