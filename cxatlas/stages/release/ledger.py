"""The privacy budget of a data root: a Delta ledger every release is charged to before any noise is drawn.

Releases of the same data compose sequentially: their epsilons add up and so do their deltas. ``privacy_ledger``
holds one row per charge with the running totals; a release is charged only if what was spent plus what it asks stays
within ``release.total_epsilon`` and ``release.total_delta``.

Races: a charge is the row with the next ``seq`` (the key), written by a ``MERGE ... WHEN NOT MATCHED INSERT``. Two
releases that read the same spent total both try to insert the same ``seq``: Delta's optimistic concurrency makes the
second commit conflict (its retry, or a later run, finds the number taken and inserts nothing). The winner is read back
from the committed table, never assumed; the loser re-reads what was spent, checks the budget again and either takes
the next number or is refused. So every committed charge was checked against every charge before it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from cxatlas.core.errors import UserError
from cxatlas.core.release_schemas import PRIVACY_LEDGER
from cxatlas.core.runs import utc_timestamp
from cxatlas.warehouse.tables import ConcurrentCommitError, TableStore

log = logging.getLogger(__name__)

_REL = 1e-9  # float slack on the budget comparison (sums of decimal epsilons)


class BudgetExceeded(UserError):
    """The release would take the data root over its privacy budget; the message says what has been spent."""


@dataclass
class Spent:
    epsilon: float = 0.0
    delta: float = 0.0
    releases: list[str] = field(default_factory=list)
    next_seq: int = 1

    def describe(self) -> str:
        shown = ", ".join(self.releases[-5:]) + (" ..." if len(self.releases) > 5 else "")
        return (f"spent epsilon {self.epsilon:g} and delta {self.delta:g} in {len(self.releases)} release(s)"
                + (f" ({shown})" if self.releases else ""))


def spent(store: TableStore) -> Spent:
    """What the ledger says has been spent (zero when there is no ledger yet)."""
    table = store.table(PRIVACY_LEDGER)
    if not table.exists():
        return Spent()
    rows = table.read().select("seq", "release_id", "epsilon", "delta").orderBy("seq").collect()
    if not rows:
        return Spent()
    return Spent(epsilon=float(sum(r["epsilon"] for r in rows)), delta=float(sum(r["delta"] for r in rows)),
                 releases=[r["release_id"] for r in rows], next_seq=int(rows[-1]["seq"]) + 1)


def check_budget(current: Spent, epsilon: float, delta: float, total_epsilon: float, total_delta: float) -> None:
    """Raise :class:`BudgetExceeded` naming what was spent when (epsilon, delta) does not fit."""
    if (current.epsilon + epsilon > total_epsilon * (1 + _REL)
            or current.delta + delta > total_delta * (1 + _REL)):
        raise BudgetExceeded(
            f"this release (epsilon {epsilon:g}, delta {delta:g}) would exceed the privacy budget of this data root "
            f"(release.total_epsilon={total_epsilon:g}, release.total_delta={total_delta:g}): {current.describe()}; "
            f"left: epsilon {max(total_epsilon - current.epsilon, 0.0):g}, delta "
            f"{max(total_delta - current.delta, 0.0):g}. Nothing was released or charged")


def charge(store: TableStore, release_id: str, analysis_id: str, epsilon: float, delta: float,
           total_epsilon: float, total_delta: float, attempts: int = 5) -> Spent:
    """Charge (epsilon, delta) for ``release_id``, or raise :class:`BudgetExceeded`.

    Returns what is spent including this charge. See the module docstring for how races are decided.
    """
    spark = store.spark
    table = store.table(PRIVACY_LEDGER)
    for attempt in range(1, attempts + 1):
        current = spent(store)
        check_budget(current, epsilon, delta, total_epsilon, total_delta)
        row = [(current.next_seq, release_id, analysis_id, float(epsilon), float(delta),
                current.epsilon + epsilon, current.delta + delta, float(total_epsilon), float(total_delta),
                utc_timestamp(time.time()))]
        source = spark.createDataFrame(
            row, "seq long, release_id string, analysis_id string, epsilon double, delta double, "
                 "spent_epsilon double, spent_delta double, total_epsilon double, total_delta double, "
                 "charged string").selectExpr(
            "seq", "release_id", "analysis_id", "epsilon", "delta", "spent_epsilon", "spent_delta",
            "total_epsilon", "total_delta", "cast(charged as timestamp) AS charged")
        table.create_if_missing()
        table.insert_new(source)
        winner = table.read().filter(f"seq = {current.next_seq}").select("release_id").collect()
        if winner and winner[0][0] == release_id:
            log.info("privacy ledger: charged release %s epsilon %g delta %g as charge %d", release_id, epsilon,
                     delta, current.next_seq)
            return Spent(current.epsilon + epsilon, current.delta + delta, current.releases + [release_id],
                         current.next_seq + 1)
        log.warning("privacy ledger: charge %d went to release %s first (attempt %d of %d); re-reading the budget",
                    current.next_seq, winner[0][0] if winner else "?", attempt, attempts)
    raise ConcurrentCommitError(f"privacy ledger: release {release_id} lost the race for a charge {attempts} times; "
                                f"nothing was charged or released; rerun it")
