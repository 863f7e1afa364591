"""The run lease (``cxatlas.warehouse.lease``) on a real Delta table: who holds it is what the committed MERGEs say."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from cxatlas.core.run_schemas import LEASES
from cxatlas.warehouse.lease import Lease, LeaseLost


def _rows(store) -> list[dict]:
    return [r.asDict() for r in store.table(LEASES).read().collect()]


def test_one_holder_renewal_takeover_of_an_expired_or_dead_holder_and_release(spark, store):
    a = Lease(store, "nightly", "run-a", ttl_seconds=600)
    b = Lease(store, "nightly", "run-b", ttl_seconds=600)
    assert a.acquire() and a.held
    assert not b.acquire() and not b.held  # a live holder on this host: refused
    first = a.current().expires
    a.renew()
    assert a.current().holder == "run-a" and a.current().expires > first
    assert [r["holder"] for r in _rows(store)] == ["run-a"]

    # A lease whose holder stopped renewing expires; the next run takes it, and the old holder learns it lost it.
    a.ttl = 0.0
    a.renew()
    time.sleep(0.01)
    assert b.acquire() and b.displaced is not None and b.displaced.holder == "run-a"
    with pytest.raises(LeaseLost, match="run-a lost the lease 'nightly' to run-b"):
        a.renew()
    assert not a.held and a.current().holder == "run-b"
    a.release()  # not held: nothing deleted
    assert [r["holder"] for r in _rows(store)] == ["run-b"]

    # A holder on this host whose process is dead frees the lease at once, however long its lease had to run.
    b.release()
    assert _rows(store) == []
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    c = Lease(store, "nightly", "run-c", ttl_seconds=600)
    c.pid = dead.pid
    assert c.acquire()
    d = Lease(store, "nightly", "run-d", ttl_seconds=600)
    assert d.acquire() and d.displaced.holder == "run-c"
    assert [(r["holder"], r["pid"]) for r in _rows(store)] == [("run-d", d.pid)]


def test_renewal_between_steps_commits_only_once_its_share_of_the_ttl_passed(spark, store):
    """Issue #25: each renewal is a MERGE; one taken moments ago cannot have been lost, so it is not renewed yet."""
    a = Lease(store, "steps", "run-a", ttl_seconds=600)
    assert a.acquire()
    version, expires = store.table(LEASES).version(), a.current().expires
    assert a.renew_if_due(0.1) is False
    assert store.table(LEASES).version() == version and a.current().expires == expires  # no commit at all
    a.taken_at -= 61  # a tenth of the TTL (60 s) has passed since it was taken
    assert a.renew_if_due(0.1) is True
    assert store.table(LEASES).version() == version + 1 and a.current().expires > expires
    assert a.renew_if_due(0.0) is True  # share 0: every step renews
    assert store.table(LEASES).version() == version + 2
    # A lease taken over while not renewed is still found lost at the first renewal that is due.
    a.ttl, a.taken_at = 0.0, None
    a.renew()
    time.sleep(0.01)
    assert Lease(store, "steps", "run-b", ttl_seconds=600).acquire()
    with pytest.raises(LeaseLost, match="run-a lost the lease 'steps' to run-b"):
        a.renew_if_due(0.1)


def test_a_lease_of_another_name_is_independent(spark, store):
    assert Lease(store, "reprocess", "r1", 600).acquire()
    assert Lease(store, "optimize", "o1", 600).acquire()
    assert not Lease(store, "reprocess", "r2", 600).acquire()
    assert sorted(r["name"] for r in _rows(store)) == ["optimize", "reprocess"]
