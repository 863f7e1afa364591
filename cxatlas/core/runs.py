"""Run identity and run reports, shared by every stage.

Why one module: every stage stamps the rows it writes with a run id and ends by printing how its input reconciles
with its outputs. Before, each stage made its own id (with different clocks) and its own summary; now the id is
always UTC and every summary has the same shape, so logs, tables and the ``quarantine`` rows of one run line up.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any


def new_run_id(now: float | None = None) -> str:
    """``20261201T134501Z-1a2b3c4d``: a UTC timestamp (sortable) plus a random suffix (unique across processes)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{uuid.uuid4().hex[:8]}"


def utc_timestamp(epoch_seconds: float) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in UTC, the literal Spark casts to a timestamp under ``spark.sql.session.timeZone=UTC``."""
    return datetime.fromtimestamp(epoch_seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


log = logging.getLogger(__name__)

class StageClock:
    """Wall seconds per named step of one run, for the ``stage_seconds`` JSON column of ``runs`` and ``analyses``
    (issue #25: where every job's time goes, visible in SQL). Entering a step closes the one before; a step entered
    twice (one ingest per manifest) adds up; ``enter(None)`` closes the last. With a ``label`` each closed step is
    logged (``<label>: <step> done in 1.2s``), for the progress of long jobs."""

    def __init__(self, label: str | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self.label = label
        self._step: str | None = None
        self._since = time.time()

    def enter(self, step: str | None) -> None:
        now = time.time()
        if self._step is not None:
            self.seconds[self._step] = self.seconds.get(self._step, 0.0) + now - self._since
            if self.label:
                log.info("%s: %s done in %.1fs", self.label, self._step, now - self._since)
        self._step, self._since = step, now

    def as_json(self) -> str:
        import json

        self.enter(self._step)  # the running step counts up to now
        return json.dumps({k: round(v, 3) for k, v in self.seconds.items()}, sort_keys=True)


def describe_reasons(reasons: dict[str, int]) -> list[str]:
    """The summary line counting rejected rows by reason (none when nothing was rejected)."""
    if not reasons:
        return []
    return ["  quarantine reasons: " + ", ".join(f"{k}={v}" for k, v in sorted(reasons.items()))]


@dataclass
class RunReport:
    """What every stage reports: its run id, how long it took, the quarantine reasons and the commits it made.

    Subclasses add their counts and say how they reconcile (:meth:`balance`): the inputs on one side, the outcomes
    on the other. :meth:`summary` prints the headline, the reconciliation line, the reasons and the commits.
    """

    run_id: str = field(default_factory=new_run_id)
    started: float = field(default_factory=time.time)
    seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)
    commits: dict[str, Any] = field(default_factory=dict)

    # -- to override ---------------------------------------------------------------------------------------------
    def headline(self) -> str:
        return f"run {self.run_id}"

    def balance(self) -> tuple[tuple[str, int], list[tuple]] | None:
        """(label and count of what came in, [(label, count[, note]) of each outcome]); None: nothing to reconcile.
        A note is printed after the count, e.g. ``annotated 50 (of which no face: 21)``."""
        return None

    def details(self) -> list[str]:
        """Extra lines between the reconciliation line and the reasons."""
        return []

    # -- shared --------------------------------------------------------------------------------------------------
    def finish(self) -> "RunReport":
        self.seconds = time.time() - self.started
        return self

    def count(self, reason: str, n: int = 1) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + int(n)

    @property
    def reconciles(self) -> bool:
        balance = self.balance()
        return balance is None or balance[0][1] == sum(part[1] for part in balance[1])

    def systemic_failure(self, share: float, min_inputs: int, not_failures=()) -> str | None:
        """Why this run failed as a whole although it raised nothing, or None: its counts do not reconcile, or more
        than ``share`` of at least ``min_inputs`` inputs failed for one reason (settings ``failures.*``)."""
        if not self.reconciles:
            return "its counts do not reconcile"
        balance = self.balance()
        total = balance[0][1] if balance else 0
        if total < min_inputs:
            return None
        for reason, n in sorted(self.reasons.items(), key=lambda kv: -kv[1]):
            if reason not in not_failures and n > share * total:
                return (f"{n} of its {total} inputs failed for one reason ({reason}): more than "
                        f"failures.systemic_share = {share:g}, a systemic fault (a setting, storage, a model) rather "
                        f"than bad input; what it committed is kept")
        return None

    def reconcile_line(self) -> list[str]:
        balance = self.balance()
        if balance is None:
            return []
        (label, total), parts = balance
        verdict = "reconciles" if self.reconciles else "DOES NOT RECONCILE"
        shown = " + ".join(" ".join(str(x) for x in part) for part in parts)
        return [f"  {label} {total} = {shown}  [{verdict}]"]

    def summary(self) -> str:
        lines = [f"{self.headline()} in {self.seconds:.1f}s", *self.reconcile_line(), *self.details(),
                 *describe_reasons(self.reasons)]
        lines += [_describe_commit(name, commit) for name, commit in self.commits.items()]
        return "\n".join(lines)


def _describe_commit(name: str, commit: Any) -> str:
    describe = getattr(commit, "describe", None)
    return describe() if callable(describe) else f"  {name}: {commit}"
