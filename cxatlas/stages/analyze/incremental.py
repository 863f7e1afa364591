"""Incremental statistics: keep the heavy pass's sums current at a cost proportional to what changed.

Why this works: every statistic depends on the videos only through additive sums per region and bootstrap
replicate (:mod:`cxatlas.stats.moments`), geobin sums are additive too, and the balanced CCA sample is "the k videos
of each region with the smallest sample key". So the state of an analysis configuration is

* the additive sums (moments, the additive part of the CCA sums, geobin sums) over the videos analysed, and
* per region, the sample's *candidates*: every analysed video whose key is at most a cut, at least k of them and up
  to ``k * (1 + incremental.candidate_margin)``, with their scores (the sample is their bottom k),

stored in the ``stat_sums`` table with the input table versions it is exact for. An update reads which videos
changed between those versions and now from Delta's change data feed (uploads, video_expressions, video_contexts),
runs the heavy pass over the changed videos' rows as they were (subtracted) and as they are (added), both taken from
the feed itself (its first pre-image and last image of each changed row; no time travel, no scan of a whole table
unless a changed video has a row that did not change, see :func:`changed_rows`), and updates the candidates:
changed videos leave, their new rows enter when their key is under the cut. Withdrawals and re-annotations are
changes like any other; a new upload is a change whose old rows do not exist.

When the state cannot be updated exactly it is rebuilt by one full pass, and the reason is logged: no stored state,
a change feed that does not reach back to the stored versions (it was switched on later, or the old versions were
vacuumed), more than ``incremental.max_changed_fraction`` of the videos changed (a full pass is cheaper), or a
region whose candidates ran out (more sample videos withdrawn than the margin holds).

The result equals a full recomputation up to floating-point rounding of the sums (tested over random sequences of
additions, withdrawals and re-annotations).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa

from cxatlas.core.regions import REGION_IDS
from cxatlas.core.run_schemas import STAT_SUMS
from cxatlas.core.schemas import UPLOADS, VIDEO_CONTEXTS, VIDEO_EXPRESSIONS
from cxatlas.core.settings import AnalyzeSettings, IncrementalSettings
from cxatlas.stages.analyze.sums import Inputs, combined_partials, local_partials, prepare_input
from cxatlas.stats import CcaMoments, Moments, accumulate_cca
from cxatlas.stats.moments import prediction_folds
from cxatlas.udfs.moments import KIND_CANDIDATES, GeobinSums, SampleRows, assemble
from cxatlas.warehouse.tables import TableStore

log = logging.getLogger(__name__)

INPUT_TABLES = (UPLOADS, VIDEO_EXPRESSIONS, VIDEO_CONTEXTS)
KIND_META = "meta"
NO_CUT = -1  # stored cut of a region whose candidates are all its videos


@dataclass(frozen=True)
class Selection:
    """What an analysis analyses: the model versions, taxonomy, expression columns and context labels."""

    expr_version: str
    ctx_version: str
    taxonomy: str
    expr_columns: tuple[str, ...]
    labels: tuple[str, ...]
    exclude_labels: tuple[str, ...] = ()  # the video filter (sums.video_filter_labels)


def sums_key(sel: Selection, settings: AnalyzeSettings) -> str:
    """Hash of everything the stored sums depend on (the inputs chosen and the heavy pass's settings), so sums made
    under other settings are never reused."""
    heavy = dict(replicates=settings.replicates, seed=settings.seed, occur_threshold=settings.occur_threshold,
                 cca=dataclasses.asdict(settings.cca), prediction_per_region=settings.prediction_per_region)
    text = json.dumps(dict(sel=dataclasses.asdict(sel), heavy=heavy), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class SumsState:
    """The stored sums of one configuration, exact for the input table ``versions``."""

    versions: dict[str, int]
    moments: Moments
    cca: CcaMoments                          # the additive part of the CCA sums (all of them when reweighting)
    geobins: GeobinSums
    candidates: list[SampleRows | None] | None  # per region (subsample mode); None when reweighting
    cuts: list[int] | None                   # per region: candidates hold every video with key <= cut (NO_CUT: all)

    def sums(self, k: int, prediction_per_region: int = 0) -> tuple[Moments, CcaMoments, GeobinSums]:
        """The sums the statistics need: the CCA sums of each region's sample (bottom k of its candidates) added to
        the additive part, with the per-fold sums of its first ``prediction_per_region`` videos (as the full pass
        forms them in :func:`cxatlas.udfs.moments.combine_partials`)."""
        cm = self.cca.copy()
        for r, cand in enumerate(self.candidates or []):
            if cand is not None and len(cand):
                rows = cand.bottom(k)
                cm += accumulate_cca(rows.X, rows.C, np.full(len(rows), r, dtype=np.int64), len(REGION_IDS),
                                     folds=prediction_folds(len(rows), prediction_per_region))
        return self.moments, cm, _occupied(self.geobins)

    @property
    def n_videos(self) -> int:
        return int(self.moments.n[:, 0].sum())


def _occupied(geo: GeobinSums) -> GeobinSums:
    """The bins that still hold a video (subtracting withdrawn videos can empty a bin)."""
    return geo.select(geo.n != 0)


# --------------------------------------------------------------------------------------------------------------------
# The heavy pass, as a state
# --------------------------------------------------------------------------------------------------------------------
def _pass(prepared, sel: Selection, settings: AnalyzeSettings, candidates_k: int | None
          ) -> tuple[Moments, CcaMoments, GeobinSums, list[SampleRows | None] | None]:
    """One pass over prepared rows: a DataFrame (distributed) or an Arrow table already collected (this process).
    With ``candidates_k`` the bottom-``candidates_k`` rows per region come back as rows."""
    run = local_partials if isinstance(prepared, pa.Table) else combined_partials
    rows = run(prepared, sel.expr_columns, sel.labels, settings, candidates_k, emit_candidates=candidates_k is not None)
    cand_rows = [r for r in rows if r[0] == KIND_CANDIDATES]
    m, cm, geo = assemble([r for r in rows if r[0] != KIND_CANDIDATES], len(REGION_IDS), settings.replicates + 1,
                          len(sel.expr_columns), len(sel.labels))
    if candidates_k is None:
        return m, cm, geo, None
    candidates: list[SampleRows | None] = [None] * len(REGION_IDS)
    for _, key, payload in cand_rows:
        candidates[key] = SampleRows.from_bytes(payload)
    return m, cm, geo, candidates


def _subsample(settings: AnalyzeSettings) -> bool:
    return settings.cca.balance == "subsample"


def _capacity(settings: AnalyzeSettings, inc: IncrementalSettings) -> int:
    return int(np.ceil(settings.cca.per_region * (1.0 + inc.candidate_margin)))


def _cuts(candidates: list[SampleRows | None], capacity: int) -> list[int]:
    """A region whose candidates filled the capacity holds every video up to its largest key; else all of them."""
    return [int(c.key[-1]) if c is not None and len(c) >= capacity else NO_CUT for c in candidates]


def full_state(prepared, sel: Selection, settings: AnalyzeSettings, inc: IncrementalSettings,
               versions: dict[str, int]) -> SumsState:
    """The state from scratch: one pass over every analysed video."""
    capacity = _capacity(settings, inc) if _subsample(settings) else None
    m, cm, geo, candidates = _pass(prepared, sel, settings, capacity)
    return SumsState(dict(versions), m, cm, geo, candidates,
                     _cuts(candidates, capacity) if candidates is not None else None)


# --------------------------------------------------------------------------------------------------------------------
# Storing the state
# --------------------------------------------------------------------------------------------------------------------
#: The state this process saved last, as (stat_sums path, sums key, (version, tag) of that commit, a private copy).
#: An analysis that follows in the same process (the next scheduled step of a long-lived driver, the reprocess loop,
#: a bench's incremental run after the run that stored the sums) takes it from here instead of reading the payloads
#: back through Spark (about 90 MB at 653 contexts x 50 replicates: 5-8 s at 1M videos, issue #25) when the table is
#: still at that commit (its version and tag), i.e. no commit since could have replaced those rows. One entry:
#: bounded driver memory.
_SAVED: list[tuple[str, str, tuple[int, str | None], SumsState]] = []


def save_state(store: TableStore, key: str, state: SumsState, run_id: str):
    """Replace the stored state of ``key`` in one commit (a run killed before it leaves the previous state), and keep
    a copy for a later :func:`load_state` of this process."""
    import pandas as pd

    from cxatlas.core.schemas import spark_schema

    versions = json.dumps(state.versions, sort_keys=True)
    meta = json.dumps(dict(cuts=state.cuts), sort_keys=True).encode()
    rows = [("moments", 0, state.moments.to_bytes()), ("cca", 0, state.cca.to_bytes()),
            ("geobin", 0, state.geobins.to_bytes()), (KIND_META, 0, meta)]
    rows += [(KIND_CANDIDATES, r, c.to_bytes()) for r, c in enumerate(state.candidates or []) if c is not None]
    pdf = pd.DataFrame(dict(sums_key=key, kind=[k for k, _, _ in rows], key=[r for _, r, _ in rows],
                            payload=[p for _, _, p in rows], input_versions=versions, n_videos=state.n_videos,
                            run_id=run_id, updated=pd.Timestamp.now(tz="UTC").floor("us")))
    df = store.spark.createDataFrame(pdf, schema=spark_schema(STAT_SUMS.schema))
    table = store.table(STAT_SUMS)
    commit = table.replace_where(df, f"sums_key = '{key}'", n_rows=len(pdf))
    _SAVED.clear()
    if commit.version is not None:
        _SAVED.append((table.path, key, (commit.version, commit.tag), copy.deepcopy(state)))
    return commit


def load_state(store: TableStore, key: str, sel: Selection, settings: AnalyzeSettings) -> SumsState | None:
    """The stored state of ``key``: the copy this process saved when that commit is still ``stat_sums``'s latest (a
    copy of it: updates change a state in place), else :func:`read_state`."""
    table = store.table(STAT_SUMS)
    if not table.exists():
        return None
    for path, saved_key, commit, state in _SAVED:
        if (path, saved_key) == (table.path, key) and table.latest_commit() == commit:
            log.debug("statistics: stored sums %s taken from this process's save (stat_sums version %d)", key,
                      commit[0])
            return copy.deepcopy(state)
    return read_state(store, key, sel, settings)


def read_state(store: TableStore, key: str, sel: Selection, settings: AnalyzeSettings) -> SumsState | None:
    """The state of ``key`` as ``stat_sums`` stores it (None: none stored)."""
    from pyspark.sql import functions as F

    table = store.table(STAT_SUMS)
    if not table.exists():
        return None
    # Arrow, not Row objects: the payloads (about 90 MB at 653 contexts and 50 replicates) come over as Arrow
    # buffers instead of being pickled in the JVM and unpickled here.
    rows = table.read().filter(F.col("sums_key") == key).select("kind", "key", "payload", "input_versions").toArrow()
    if not rows.num_rows:
        return None
    by_kind = {(k, i): p for k, i, p in zip(*(rows.column(c).to_pylist() for c in ("kind", "key", "payload")))}
    versions = json.loads(rows.column("input_versions")[0].as_py())
    cuts = json.loads(by_kind[(KIND_META, 0)].decode())["cuts"]
    candidates = None
    if _subsample(settings):
        candidates = [SampleRows.from_bytes(by_kind[(KIND_CANDIDATES, r)]) if (KIND_CANDIDATES, r) in by_kind
                      else None for r in range(len(REGION_IDS))]
    return SumsState(versions, Moments.from_bytes(by_kind[("moments", 0)]), CcaMoments.from_bytes(by_kind[("cca", 0)]),
                     GeobinSums.from_bytes(by_kind[("geobin", 0)]), candidates, cuts)


# --------------------------------------------------------------------------------------------------------------------
# Updating the state
# --------------------------------------------------------------------------------------------------------------------
def _selected(spec, frame, sel: Selection):
    """The rows of ``frame`` (a table of ``spec`` or its change feed) that the analysis reads: the chosen model
    version and taxonomy, so each video has at most one row per table."""
    from pyspark.sql import functions as F

    if spec is VIDEO_EXPRESSIONS:
        return frame.filter(F.col("model_version") == sel.expr_version)
    if spec is VIDEO_CONTEXTS:
        return frame.filter((F.col("model_version") == sel.ctx_version) & (F.col("taxonomy") == sel.taxonomy))
    return frame


def _feeds(store: TableStore, old: dict[str, int], new: dict[str, int], sel: Selection):
    """Each input table's change feed of versions ``(old, new]``, restricted to the analysis's selection (None: the
    table did not change), or a string saying why the stored versions cannot be brought forward."""
    feeds = {}
    for spec in INPUT_TABLES:
        before, now = old.get(spec.name), new[spec.name]
        if before is None:
            return f"the stored sums do not record a version of {spec.name}"
        if now < before:
            return f"{spec.name} is at version {now}, older than the stored sums' {before} (restored?)"
        feeds[spec.name] = _selected(spec, store.table(spec).changes(before, now), sel) if now > before else None
    return feeds


def _feed_gap(store: TableStore, old: dict[str, int], new: dict[str, int], exc: BaseException) -> str:
    """Why a change feed read failed, in words (a feed that was never on is switched on, for next time)."""
    for spec in INPUT_TABLES:
        if new[spec.name] > old[spec.name]:
            why = store.table(spec).feed_gap(old[spec.name], new[spec.name])
            if why:
                return f"the change feed does not cover the stored sums' versions: {why}"
    return f"the stored versions cannot be read any more ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"


def changed_videos(feeds: dict):
    """The video_ids any input table changed, with ``_tables``: the indexes (in :data:`INPUT_TABLES`) of the tables
    whose feed has the video (a DataFrame; None when no table changed)."""
    from pyspark.sql import functions as F

    frames = [feed.select("video_id", F.lit(i).alias("_table")) for i, feed in enumerate(feeds.values())
              if feed is not None]
    if not frames:
        return None
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out.groupBy("video_id").agg(F.collect_set("_table").alias("_tables"))


def changed_rows(store: TableStore, inputs: Inputs, feeds: dict, sel: Selection, ids, unfed: dict | None
                 ) -> tuple[Inputs, Inputs, list]:
    """The selected input rows of the changed videos ``ids`` as they were at the stored versions and as they are,
    from the change feeds: where a table's feed has a video, its row before is the feed's pre-image and its row now
    the feed's last image (:meth:`~cxatlas.warehouse.tables.Table.rows_before`, ``rows_after``); only a changed
    video that a table's feed does not have (an upload moved, whose annotations did not change) needs that table's
    row, the same before and now, from a scan. ``unfed``: per table, those video ids when the caller knows them
    (an empty list: no scan of that table at all); None: found by a join.

    Time travel and a scan of every table would rebuild three old snapshots and read each table twice; the feeds
    hold only what changed. Returns (old rows, new rows, the cached frames to unpersist)."""
    from pyspark.sql import functions as F

    old, new, cached = [], [], []
    for i, (spec, now) in enumerate(zip(INPUT_TABLES, (inputs.uploads, inputs.expressions, inputs.contexts))):
        feed = feeds[spec.name]
        if feed is None:
            rest_ids = ids
        elif unfed is None:
            rest_ids = ids.join(feed.select("video_id").distinct(), "video_id", "left_anti")
        elif unfed[i]:
            rest_ids = F.broadcast(store.spark.createDataFrame([(v,) for v in unfed[i]], "video_id string"))
        else:
            rest_ids = None
        rest = None
        if rest_ids is not None:  # unchanged rows: read once for both sides
            rest = _selected(spec, now, sel).join(rest_ids, "video_id", "left_semi").cache()
            cached.append(rest)
        if feed is None:
            old.append(rest)
            new.append(rest)
            continue
        table = store.table(spec)
        before, after = table.rows_before(feed), table.rows_after(feed)
        if rest is not None:
            before = before.unionByName(rest, allowMissingColumns=True)
            after = after.unionByName(rest, allowMissingColumns=True)
        old.append(before)
        new.append(after)
    return Inputs({}, *old), Inputs({}, *new), cached


def _update_candidates(state: SumsState, changed_hashes: np.ndarray, added: list[SampleRows | None], capacity: int,
                       k: int) -> str | None:
    """Changed videos leave the candidates; their new rows enter when under the region's cut. Returns why the
    candidates can no longer give the exact sample (then the caller rebuilds), or None."""
    assert state.candidates is not None and state.cuts is not None
    for r in range(len(REGION_IDS)):
        cand, cut = state.candidates[r], state.cuts[r]
        parts = []
        if cand is not None and len(cand):
            stay = ~np.isin(cand.hash, changed_hashes)
            parts.append(SampleRows(cand.key[stay], cand.hash[stay], cand.X[stay], cand.C[stay], capacity))
        new = added[r]
        if new is not None and len(new):
            sel = np.flatnonzero(new.key <= cut) if cut != NO_CUT else np.arange(len(new))
            if sel.size:
                parts.append(SampleRows(new.key[sel], new.hash[sel], new.X[sel], new.C[sel], capacity))
        merged = SampleRows.concat(parts).bottom(capacity) if parts else None
        if merged is not None and len(merged) >= capacity:
            cut = int(merged.key[-1])
        n_region = int(round(state.moments.n[r, 0]))
        held = 0 if merged is None else len(merged)
        if cut != NO_CUT and held < min(k, n_region):
            return (f"region {REGION_IDS[r]}: only {held} sample candidates left under the cut for a sample of "
                    f"{min(k, n_region)} (incremental.candidate_margin)")
        state.candidates[r], state.cuts[r] = merged, cut
    return None


def update_state(store: TableStore, state: SumsState, inputs: Inputs, sel: Selection, settings: AnalyzeSettings,
                 inc: IncrementalSettings) -> tuple[SumsState | None, int, str]:
    """Bring ``state`` to ``inputs.versions``. Returns (new state or None when a full pass is needed, number of
    changed videos, what happened)."""
    from pyspark.sql import functions as F

    from cxatlas.warehouse.tables.change_feed import is_feed_gap

    limit = int(inc.max_changed_fraction * max(state.n_videos, 1))
    cached = []
    try:
        feeds = _feeds(store, state.versions, inputs.versions, sel)
        if isinstance(feeds, str):
            return None, -1, feeds
        changed = changed_videos(feeds)
        if changed is None:
            state.versions = dict(inputs.versions)
            return state, 0, "no video changed"
        # The usual case (few changes) needs one small collect: the ids, their hashes and which feeds have them, at
        # most ``limit`` + 1 rows.
        few = changed.select("video_id", F.xxhash64("video_id").alias("h"), "_tables").limit(
            min(limit, inc.driver_max_videos) + 1)
        collected = few.collect()
        local = len(collected) <= inc.driver_max_videos
        n_changed = len(collected) if len(collected) <= limit else changed.count()
        if n_changed == 0:
            state.versions = dict(inputs.versions)
            return state, 0, "no video changed"
        if n_changed > limit:
            return None, n_changed, (f"{n_changed} videos changed, more than incremental.max_changed_fraction="
                                     f"{inc.max_changed_fraction} of {state.n_videos}")
        if local:
            ids = F.broadcast(store.spark.createDataFrame([(r[0],) for r in collected], "video_id string"))
            hashes = np.array([r[1] for r in collected], dtype=np.int64)
            unfed = {i: [r[0] for r in collected if i not in r[2]] for i in range(len(INPUT_TABLES))}
        else:
            ids = changed.select("video_id")
            hashes = np.array([r[0] for r in changed.select(F.xxhash64("video_id")).collect()], dtype=np.int64)
            unfed = None
        old_inputs, new_inputs, cached = changed_rows(store, inputs, feeds, sel, ids, unfed)
        prepared = [prepare_input(i, sel.expr_version, sel.ctx_version, sel.taxonomy, sel.expr_columns,
                                  settings.cca.sample_seed, broadcast=True, exclude_labels=sel.exclude_labels,
                                  occur_threshold=settings.occur_threshold)
                    for i in (old_inputs, new_inputs)]
        # With a sample size the passes' CCA sums hold only the parts that add across videos (a sample's sums come
        # from its candidates below); the new rows' own bottom-k come back as rows.
        capacity = _capacity(settings, inc) if _subsample(settings) else None
        if local:  # few rows: one collect of the old and new rows together, summed in this process
            both = prepared[0].withColumn("_new", F.lit(False)).unionByName(
                prepared[1].withColumn("_new", F.lit(True))).toArrow()
            new_mask = both.column("_new").to_numpy(zero_copy_only=False)
            both = both.drop(["_new"])
            prepared = [both.filter(pa.array(~new_mask)), both.filter(pa.array(new_mask))]
        removed = _pass(prepared[0], sel, settings, capacity)
        added = _pass(prepared[1], sel, settings, capacity)
    except Exception as exc:  # a version written with the feed off, vacuumed away: rebuild rather than guess
        if is_feed_gap(exc):
            return None, -1, _feed_gap(store, state.versions, inputs.versions, exc)
        raise
    finally:
        for frame in cached:
            frame.unpersist()
    m = state.moments + added[0] - removed[0]
    geo = _occupied(GeobinSums.total([state.geobins, added[2], -removed[2]]))
    new = SumsState(dict(inputs.versions), m, state.cca + added[1] - removed[1], geo, state.candidates, state.cuts)
    if _subsample(settings):
        why = _update_candidates(new, hashes, added[3], capacity, settings.cca.per_region)
        if why:
            return None, n_changed, why
    return new, n_changed, f"{n_changed} videos changed"


def current_sums(store: TableStore, inputs: Inputs, sel: Selection, settings: AnalyzeSettings,
                 inc: IncrementalSettings, run_id: str, full_prepared=None
                 ) -> tuple[Moments, CcaMoments, GeobinSums, dict]:
    """The sums for ``inputs`` from the stored state, updated (or rebuilt) and stored again.

    Returns (moments, cca_moments, geobins, info) where info says ``mode`` (current | incremental | full), the
    number of changed videos and why a full pass was needed.
    """
    key = sums_key(sel, settings)
    state = load_state(store, key, sel, settings)
    info: dict = dict(sums_key=key, changed=None)
    new = None
    if state is None:
        info["reason"] = "no stored sums for this configuration"
    else:
        new, info["changed"], info["reason"] = update_state(store, state, inputs, sel, settings, inc)
    if new is None:
        log.info("statistics: full pass (%s)", info["reason"])
        prepared = full_prepared if full_prepared is not None else prepare_input(
            inputs, sel.expr_version, sel.ctx_version, sel.taxonomy, sel.expr_columns, settings.cca.sample_seed,
            exclude_labels=sel.exclude_labels, occur_threshold=settings.occur_threshold)
        new = full_state(prepared, sel, settings, inc, inputs.versions)
        info["mode"] = "full"
    else:
        info["mode"] = "incremental" if info["changed"] else "current"
        log.info("statistics: %s (%s)", info["mode"], info["reason"])
    if info["mode"] != "current":  # unchanged sums are not written again
        save_state(store, key, new, run_id)
    m, cm, geo = new.sums(settings.cca.per_region, settings.prediction_per_region)
    return m, cm, geo, info


def selection(expr_version: str, ctx_version: str, taxonomy: str, expr_columns: Sequence[str],
              labels: Sequence[str], exclude_labels: Sequence[str] = ()) -> Selection:
    return Selection(expr_version, ctx_version, taxonomy, tuple(expr_columns), tuple(labels), tuple(exclude_labels))
