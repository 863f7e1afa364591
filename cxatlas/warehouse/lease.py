"""A run lease in a Delta table: at most one scheduled run works at a time, with no lock server.

Why Delta: the tables are the only thing every driver of a site shares (local disk, HDFS, S3 alike). Taking the
lease is one ``MERGE`` into ``leases`` conditioned on the lease being free; two runs that try at once both read the
same table version, Delta's optimistic concurrency lets one commit and makes the other conflict, and the loser's
retry re-reads the table and finds the lease held. Whether a run took the lease is the committed MERGE's own count
of rows it inserted or replaced (from the table's history), so the answer never rests on a local belief.

A lease is free when it expired (``expires`` passed: the holder is gone or stuck), or when its holder ran on this
host and its process is dead (a SIGKILLed run frees its lease at once for a restart on the same machine). A live
holder renews it between steps of its run (:meth:`Lease.renew_if_due`): only once a given share of its TTL has
passed since it was last taken, because each renewal is a MERGE (about 1.3 s here, issue #25) and a lease taken
moments ago cannot be lost: no other run may take it before it expires.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass

from cxatlas.core.errors import UserError
from cxatlas.core.run_schemas import LEASES
from cxatlas.core.runs import utc_timestamp
from cxatlas.warehouse.tables import TableStore

log = logging.getLogger(__name__)


class LeaseLost(UserError):
    """This run's lease expired or was taken over: it stops before writing anything more."""


@dataclass
class Holder:
    holder: str
    host: str
    pid: int
    expires: float


def pid_alive(pid: int) -> bool:
    """Whether a process of this host is alive (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


class Lease:
    """The lease ``name`` for run ``run_id``; ``ttl_seconds`` is how long it lasts without a renewal."""

    def __init__(self, store: TableStore, name: str, run_id: str, ttl_seconds: float):
        self.store, self.name, self.run_id, self.ttl = store, name, run_id, float(ttl_seconds)
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.table = store.table(LEASES)
        self.held = False
        self.taken_at: float | None = None  # when this run's last MERGE took or renewed the lease (time.time())
        self.displaced: Holder | None = None  # the dead or expired holder this run took the lease from

    def current(self) -> Holder | None:
        """The recorded holder (expired or not), or None."""
        from pyspark.sql import functions as F

        if not self.table.exists():
            return None
        rows = self.table.read().filter(F.col("name") == self.name).collect()
        if not rows:
            return None
        r = rows[0]
        return Holder(r["holder"], r["host"], int(r["pid"] or 0), r["expires"].timestamp())

    def is_free(self, holder: Holder | None, now: float) -> bool:
        if holder is None or holder.holder == self.run_id or holder.expires <= now:
            return True
        return holder.host == self.host and not pid_alive(holder.pid)

    def acquire(self, wait: bool = False, poll_seconds: float = 5.0, max_wait_seconds: float | None = None) -> bool:
        """Take the lease if it is free; ``wait`` polls until it is (or ``max_wait_seconds`` passed)."""
        started = time.time()
        while True:
            holder = self.current()
            if self.is_free(holder, time.time()) and self._take(holder.holder if holder else None):
                self.held = True
                if holder is not None and holder.holder != self.run_id:
                    self.displaced = holder
                return True
            if not wait or (max_wait_seconds is not None and time.time() - started > max_wait_seconds):
                return False
            log.info("lease %s is held by run %s; waiting", self.name, holder.holder if holder else "?")
            time.sleep(poll_seconds)

    def _take(self, seen: str | None) -> bool:
        """Compare-and-swap: replace exactly the row of holder ``seen`` (or insert when there was none). Whether it
        took is the committed MERGE's own count, read from the table's history: one row inserted or replaced (a
        retried MERGE, after another writer committed first, reports what the retry did), never a local belief."""
        now = time.time()
        spark = self.store.spark
        row = [(self.name, self.run_id, self.host, self.pid, utc_timestamp(now), utc_timestamp(now + self.ttl))]
        source = spark.createDataFrame(row, "name string, holder string, host string, pid long, acquired string, "
                                            "expires string").selectExpr(
            "name", "holder", "host", "pid", "cast(acquired as timestamp) acquired", "cast(expires as timestamp) expires")
        self.table.create_if_missing()
        expected = "t.holder IS NULL" if seen is None else f"t.holder = '{seen}'"
        commit = self.table.upsert(source, update_when=expected, keys_unique=True)  # one row: one key
        took = commit.rows_inserted + commit.rows_updated == 1
        if took:
            self.taken_at = now
        return took

    def holder_description(self) -> str:
        holder = self.current()
        if holder is None:
            return "nobody"
        return f"run {holder.holder} (host {holder.host}, pid {holder.pid}, until {utc_timestamp(holder.expires)} UTC)"

    def renew(self) -> None:
        """Extend the lease (one MERGE that replaces our own row only); raises :class:`LeaseLost` if another run
        holds it now."""
        if not self._take(self.run_id):
            self.held = False
            holder = self.current()
            raise LeaseLost(f"run {self.run_id} lost the lease '{self.name}' to "
                            f"{holder.holder if holder else 'nobody'}; stopping")

    def renew_if_due(self, share: float) -> bool:
        """Renew (:meth:`renew`) once ``share`` of the TTL has passed since this run last took the lease; before
        that, do nothing and say so (False). Why skipping is safe: the lease then still has more than ``1 - share``
        of its TTL to run, and another run may take it only when it expired or its holder's process is dead, so it
        cannot have been lost; the next step still starts with at least that much time held. ``share`` 0: always
        renew."""
        if self.taken_at is not None and time.time() - self.taken_at < share * self.ttl:
            log.debug("lease %s taken %.0f s ago (TTL %.0f s): not renewed yet", self.name,
                      time.time() - self.taken_at, self.ttl)
            return False
        self.renew()
        return True

    def release(self) -> None:
        """Give the lease back (delete our row; a row another run took over is left alone)."""
        if not self.held:
            return
        self.table.delete(f"name = '{self.name}' AND holder = '{self.run_id}'")
        self.held = False
