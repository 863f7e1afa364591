"""What a table operation raises: the message always names the table and why."""
from __future__ import annotations

from cxatlas.core.errors import UserError


class TableError(RuntimeError):
    """A table operation that cannot proceed; the message says which table and why."""


class ConcurrentCommitError(TableError, UserError):
    """Another writer kept winning the commit race; the message names the table and what to do."""


class DuplicateKeyError(TableError, UserError):
    """A keyed table holds the same key twice: a job refuses to read it rather than multiply the duplicates."""
