"""The one heavy pass of ``cxatlas analyze``: executors turn annotated videos into additive partial sums.

Why this shape: every statistic of Cowen et al. (2021, Nature 589:251, Methods) depends on the videos only through
weighted sums per (region, bootstrap replicate) -- see :mod:`cxatlas.stats.moments`. So the whole data set is read
once, each ``mapInArrow`` task folds its rows into

* a :class:`~cxatlas.stats.Moments` (all regions x replicate 0..B, with Poisson bootstrap weights derived from
  ``xxhash64(video_id)``, so a video weighs the same whatever task, executor or retry sees it),
* per region, its candidates for the balanced CCA sample (:class:`SampleRows`: the task's ``k`` videos with the
  smallest ``_key``; or, when regions are re-weighted instead of subsampled, a :class:`~cxatlas.stats.CcaMoments`
  over all rows), and
* :class:`GeobinSums`: per 0.5-degree bin, the number of videos and the sum of their expression scores,

and emits them as a few binary rows ``(kind, key, payload)``: one per region for the moments and the CCA sample, one
per shard of bins for the geobins. :func:`combine_partials` merges the rows of one ``(kind, key)``
(``groupBy().applyInPandas``, on the executors): sums are added; the CCA candidates are cut to the global bottom-k,
the exact sample whatever the partitioning, and only then turned into sums. :func:`assemble` puts the combined rows
back together on the driver. Addition is the only operation after the pass, so the result is the same (to rounding,
~1e-16 relative) for any partitioning, task order or retry.

Input rows (the columns :data:`INPUT_COLUMNS` plus the expression columns) come from
:func:`cxatlas.stages.analyze.prepare_input`: ``_region`` (int code), ``_hash`` (``xxhash64(video_id)``), ``_key`` (a second,
independent hash that orders videos for the balanced CCA sample), ``lat_bin``/``lon_bin`` (nullable ints), the
expression floats and ``contexts`` (the video's sparse ``list<struct<label, score>>`` as stored in
``video_contexts``). Sparse contexts become a CSR matrix straight from the Arrow list offsets
(:func:`sparse_contexts`): no per-video Python loop and no dense video x context matrix.
"""
from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from typing import ClassVar, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from cxatlas.stats import CcaMoments, Moments, accumulate, accumulate_cca, poisson_weights
from cxatlas.stats.moments import prediction_folds

__all__ = ["GeobinSums", "SampleRows", "MomentsPass", "PARTIAL_SCHEMA", "INPUT_COLUMNS", "combine_partials",
           "assemble", "sparse_contexts", "KIND_MOMENTS", "KIND_CCA", "KIND_GEOBIN", "KIND_SAMPLE",
           "KIND_CANDIDATES"]

PARTIAL_SCHEMA = "kind string, key int, payload binary"
INPUT_COLUMNS = ("_region", "_hash", "_key", "lat_bin", "lon_bin", "contexts")
KIND_MOMENTS, KIND_CCA, KIND_GEOBIN, KIND_SAMPLE = "moments", "cca", "geobin", "cca_sample"
# The combined bottom-k rows themselves (not their CCA sums): incremental statistics keep them as candidates.
KIND_CANDIDATES = "cca_candidates"


def _encode_bins(lat_bin: np.ndarray, lon_bin: np.ndarray) -> np.ndarray:
    """(lat_bin, lon_bin) -> one int64 key (lat in the high 32 bits), so bins sort and group as plain integers."""
    return (lat_bin.astype(np.int64) << 32) | (lon_bin.astype(np.int64) & 0xFFFFFFFF)


@dataclass(eq=False)
class GeobinSums:
    """Per geographic bin: number of videos, sums and sums of squares of their expression scores, and sums of their
    context scores (additive, sorted by key).

    Why the context side: the paper maps the canonical variates of both sides per 0.5-degree bin (Fig. 4), and the
    share of expression variance between bins needs the sums of squares.

    Attributes
    ----------
    key : ndarray of int64, shape (G,)
        ``(lat_bin << 32) | (lon_bin & 0xffffffff)``, sorted, unique.
    n : ndarray of float64, shape (G,)
    sx : ndarray of float64, shape (G, E)
    sxx : ndarray of float64, shape (G, E)
        Sum of squared expression scores.
    sc : ndarray of float64, shape (G, K)
        Sum of context scores.
    """

    key: np.ndarray
    n: np.ndarray
    sx: np.ndarray
    sxx: np.ndarray
    sc: np.ndarray

    _SUMS: ClassVar[tuple[str, ...]] = ("n", "sx", "sxx", "sc")

    @classmethod
    def empty(cls, n_expr: int, n_ctx: int = 0) -> "GeobinSums":
        return cls(np.zeros(0, np.int64), np.zeros(0), np.zeros((0, n_expr)), np.zeros((0, n_expr)),
                   np.zeros((0, n_ctx)))

    @classmethod
    def from_rows(cls, lat_bin: np.ndarray, lon_bin: np.ndarray, X: np.ndarray,
                  C: sp.spmatrix | np.ndarray | None = None) -> "GeobinSums":
        """Sums of the rows of ``X`` (and of the context matrix ``C``, if given) per bin (rows are videos with a
        bin)."""
        keys = _encode_bins(np.asarray(lat_bin), np.asarray(lon_bin))
        uniq, inverse = np.unique(keys, return_inverse=True)
        G = uniq.size
        member = sp.csr_matrix((np.ones(inverse.size), (inverse, np.arange(inverse.size))), shape=(G, inverse.size))
        X = np.asarray(X, dtype=np.float64)
        n = np.bincount(inverse, minlength=G).astype(np.float64)
        sc = np.zeros((G, 0)) if C is None else (member @ sp.csr_matrix(C, dtype=np.float64)).toarray()
        return cls(uniq, n, member @ X, member @ (X * X), sc)

    @property
    def lat_bin(self) -> np.ndarray:
        return (self.key >> 32).astype(np.int32)

    @property
    def lon_bin(self) -> np.ndarray:
        return (self.key & 0xFFFFFFFF).astype(np.uint32).view(np.int32)

    def __add__(self, other: "GeobinSums") -> "GeobinSums":
        return GeobinSums.total([self, other])

    def __neg__(self) -> "GeobinSums":
        """Every sum negated (the keys stay): adding it removes these videos again."""
        return GeobinSums(self.key.copy(), *[-getattr(self, f) for f in self._SUMS])

    @classmethod
    def total(cls, parts: Iterable["GeobinSums"]) -> "GeobinSums":
        parts = list(parts)
        if not parts:
            raise ValueError("GeobinSums.total needs at least one part")
        keys = np.concatenate([p.key for p in parts])
        uniq, inverse = np.unique(keys, return_inverse=True)
        # rows -> bins as a sparse indicator: one sparse x dense product per field (np.add.at is slow on wide rows)
        member = sp.csr_matrix((np.ones(inverse.size), (inverse, np.arange(inverse.size))),
                               shape=(uniq.size, inverse.size))
        out = [np.asarray(member @ np.concatenate([getattr(p, f) for p in parts]), dtype=np.float64)
               for f in cls._SUMS]
        return cls(uniq, *out)

    def select(self, mask: np.ndarray) -> "GeobinSums":
        """The bins where ``mask`` is true."""
        return GeobinSums(self.key[mask], *[getattr(self, f)[mask] for f in self._SUMS])

    def shard(self, n_shards: int) -> list["GeobinSums"]:
        """Split by ``key mod n_shards`` so several executors can combine the bins in parallel."""
        which = np.mod(self.key, n_shards)
        return [self.select(which == s) for s in range(n_shards)]

    def to_bytes(self) -> bytes:
        """Serialise; the context sums go as CSR (their exact non-zero values): a bin holds few videos, each with a
        few contexts (at 1M videos and 653 contexts, 30% of the bins' context sums are non-zero: 38 MB instead of
        84 MB in the stored state of incremental statistics)."""
        buf = io.BytesIO()
        np.savez(buf, key=self.key, **{f: getattr(self, f) for f in self._SUMS if f != "sc"},
                 **_csr_arrays(sp.csr_matrix(self.sc), prefix="sc_"))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "GeobinSums":
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            if "sc" in z.files:  # written before the context sums went as CSR
                return cls(z["key"], *[z[f] for f in cls._SUMS])
            return cls(z["key"], *[z[f] for f in cls._SUMS if f != "sc"], _csr_from(z, prefix="sc_").toarray())


def _csr_arrays(m: sp.csr_matrix, data: np.ndarray | None = None, prefix: str = "") -> dict[str, np.ndarray]:
    """A CSR matrix as the arrays of an ``np.savez`` payload (``data``: its values in another dtype, when lossless);
    read back with :func:`_csr_from`."""
    return {f"{prefix}data": m.data if data is None else data, f"{prefix}indices": m.indices.astype(np.int32),
            f"{prefix}indptr": m.indptr.astype(np.int64), f"{prefix}shape": np.array(m.shape, dtype=np.int64)}


def _csr_from(z, prefix: str = "") -> sp.csr_matrix:
    return sp.csr_matrix((z[f"{prefix}data"].astype(np.float64), z[f"{prefix}indices"], z[f"{prefix}indptr"]),
                         shape=tuple(z[f"{prefix}shape"]))


def _region_part(obj, r: int):
    """Region ``r`` of a Moments/CcaMoments as a one-region object of the same type (views, no copy)."""
    return type(obj)(**{f.name: getattr(obj, f.name)[r:r + 1] for f in dataclasses.fields(obj)})


def sparse_contexts(contexts: pa.Array | pa.ChunkedArray, labels: pa.Array) -> sp.csr_matrix:
    """CSR matrix (videos x contexts) from an Arrow ``list<struct<label, score>>`` column, without a Python loop.

    Arrow list arrays are already CSR: their offsets are the row pointer. Labels become column indices by a hash
    lookup in Arrow (``pyarrow.compute.index_in``), which beats a Spark map lookup (a linear scan per label).
    Entries that are null, whose label is not in ``labels`` or whose score is null are dropped; null lists are
    empty rows.

    Parameters
    ----------
    contexts : list<struct<label: string, score: float>> array, one row per video.
    labels : string array, the taxonomy in column order (K).
    """
    import pyarrow.compute as pc

    arr = contexts.combine_chunks() if isinstance(contexts, pa.ChunkedArray) else contexts
    n = len(arr)
    lengths = arr.value_lengths().fill_null(0).to_numpy().astype(np.int64)
    flat = arr.flatten()  # respects slicing and skips null lists
    if len(flat) != lengths.sum():
        raise ValueError("context list offsets and values disagree")
    idx = pc.index_in(flat.field("label"), value_set=labels)
    score = flat.field("score")
    keep = ~(idx.is_null().to_numpy(zero_copy_only=False) | score.is_null().to_numpy(zero_copy_only=False)
             | flat.is_null().to_numpy(zero_copy_only=False))
    idx_np = idx.fill_null(0).to_numpy().astype(np.int64)
    score_np = score.fill_null(0).to_numpy().astype(np.float64)
    if not keep.all():
        row = np.repeat(np.arange(n), lengths)
        lengths = np.bincount(row[keep], minlength=n).astype(np.int64)
        idx_np, score_np = idx_np[keep], score_np[keep]
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    return sp.csr_matrix((score_np, idx_np, indptr), shape=(n, len(labels)))


def _compact(values: np.ndarray) -> np.ndarray:
    """``values`` as float32 if that round-trips exactly, else unchanged (float64)."""
    small = values.astype(np.float32)
    return small if np.array_equal(small.astype(values.dtype), values, equal_nan=True) else values


@dataclass(eq=False)
class SampleRows:
    """Candidate rows for the balanced CCA sample of one region: the ``k`` smallest ``(key, hash)`` seen so far.

    Why rows and not sums: which videos form the sample ("the 25,000 with the smallest hash") is only known once
    every task has seen its rows. Each task keeps its own bottom-k (a video outside it cannot be in the global
    bottom-k), the combine step merges the tasks' candidates and keeps the global bottom-k, and only then are the
    CCA sums formed. Exact, independent of partitioning, and one pass over the data.

    Attributes
    ----------
    key, hash : int64 arrays (n,)
        The ordering key (``xxhash64(salt, video_id)``) and the video hash that breaks (improbable) ties.
    X : float64 array (n, E)
    C : CSR matrix (n, K)
    """

    key: np.ndarray
    hash: np.ndarray
    X: np.ndarray
    C: sp.csr_matrix
    k: int = 0  # the sample size wanted (travels with the candidates to the combine step)

    def __len__(self) -> int:
        return int(self.key.size)

    @classmethod
    def concat(cls, parts: Sequence["SampleRows"]) -> "SampleRows":
        return cls(np.concatenate([p.key for p in parts]), np.concatenate([p.hash for p in parts]),
                   np.concatenate([p.X for p in parts]), sp.vstack([p.C for p in parts], format="csr"),
                   max(p.k for p in parts))

    def bottom(self, k: int) -> "SampleRows":
        """The ``k`` rows with the smallest ``(key, hash)``, in that order."""
        order = np.lexsort((self.hash, self.key))[:k]
        return SampleRows(self.key[order], self.hash[order], self.X[order], self.C[order], self.k)

    def to_bytes(self) -> bytes:
        """Serialise; scores go as float32 when that is lossless (they come from float32 columns), halving the
        bytes the combine step shuffles."""
        buf = io.BytesIO()
        np.savez(buf, key=self.key, hash=self.hash, X=_compact(self.X), **_csr_arrays(self.C, _compact(self.C.data)),
                 k=np.array(self.k))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "SampleRows":
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls(z["key"], z["hash"], z["X"].astype(np.float64), _csr_from(z), int(z["k"]))


class _BottomK:
    """Per-region bottom-k buffer of a task: rows arrive batch by batch, rows that cannot make the cut are dropped
    on arrival, and the buffer is trimmed back to ``k`` when it has grown past ``2 k``."""

    def __init__(self, k: int):
        self.k = k
        self.parts: list[SampleRows] = []
        self.n = 0
        self.cut: int | None = None  # the k-th smallest key once k rows were seen: larger keys cannot enter

    def add(self, rows: SampleRows) -> None:
        if self.cut is not None:
            keep = rows.key <= self.cut
            if not keep.any():
                return
            rows = SampleRows(rows.key[keep], rows.hash[keep], rows.X[keep], rows.C[keep], rows.k)
        self.parts.append(rows)
        self.n += len(rows)
        if self.n > 2 * self.k:
            self._trim()

    def _trim(self) -> None:
        merged = SampleRows.concat(self.parts).bottom(self.k)
        self.parts, self.n = [merged], len(merged)
        if self.n >= self.k:
            self.cut = int(merged.key[-1])

    def result(self) -> SampleRows | None:
        if not self.parts:
            return None
        self._trim()
        return self.parts[0]


@dataclass
class MomentsPass:
    """Picklable ``mapInArrow`` function: fold a task's rows into partial sums, emit them as binary rows.

    Parameters
    ----------
    expr_columns : expression columns, in the analysis' order (E).
    labels : context labels of the taxonomy, in column order (K).
    n_regions : R; ``_region`` holds codes in ``[0, R)``.
    n_replicates : bootstrap replicates B (replicate 0, the observed data, comes on top).
    seed : bootstrap seed (:func:`cxatlas.stats.poisson_weights`).
    cca_per_region : size of the balanced CCA sample per region: the videos with the smallest ``_key``. Tasks emit
        their candidate rows (:class:`SampleRows`), the combine step keeps the global bottom-k and forms the sums.
        ``None``: every video goes into the CCA sums (regions are then re-weighted to equal mass on the driver
        instead of subsampled).
    cca_all_regions : regions whose every video also goes into the CCA's ``*_all`` sums (the region a one-region
        CCA is fitted on: the paper fits its USA/Canada CCA on all US/Canada videos). Only used with a balanced
        sample (``cca_per_region`` set); without one every video is in the CCA sums already.
    occur_threshold : a context "occurred" in a video when its score is >= this.
    batch_rows : rows folded per :func:`cxatlas.stats.accumulate` call. Arrow batches are small (Spark's
        maxRecordsPerBatch); buffering them amortises the per-call cost of the (R, B1, E, K) result.
    chunk_rows : rows per sparse-dense product inside ``accumulate`` (bounds its temporary).
    geobin_shards : number of key shards the bin sums are emitted in.
    emit_candidates : emit the bottom-k rows under :data:`KIND_CANDIDATES` so the combine step returns the rows
        themselves (incremental statistics keep them, with a margin, to update the sample without a rescan).
    """

    expr_columns: Sequence[str]
    labels: Sequence[str]
    n_regions: int
    n_replicates: int
    seed: int = 0
    cca_per_region: int | None = 25_000
    cca_all_regions: Sequence[int] = ()
    occur_threshold: float = 0.5
    batch_rows: int = 20_000
    chunk_rows: int = 4_096
    geobin_shards: int = 4
    emit_candidates: bool = False  # combine keeps the bottom-k ROWS (KIND_CANDIDATES), not their CCA sums

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        label_set = pa.array(list(self.labels), pa.string())
        state: dict = {"moments": None, "cca": None, "geobins": [], "cca_all": {},
                       "sample": None if self.cca_per_region is None else
                       [_BottomK(self.cca_per_region) for _ in range(self.n_regions)]}
        pending: list[pa.RecordBatch] = []
        n_pending = 0
        for batch in batches:
            if batch.num_rows:
                pending.append(batch)
                n_pending += batch.num_rows
            if n_pending >= self.batch_rows:
                self._fold(pa.Table.from_batches(pending), label_set, state)
                pending, n_pending = [], 0
        if pending:
            self._fold(pa.Table.from_batches(pending), label_set, state)
        moments, cca, geobins, sample = state["moments"], state["cca"], state["geobins"], state["sample"]
        cca_all = state["cca_all"]
        if moments is None:
            return
        rows = []
        for r in np.flatnonzero(moments.n[:, 0] > 0):
            rows.append((KIND_MOMENTS, int(r), _region_part(moments, int(r)).to_bytes()))
        if cca is not None:
            for r in np.flatnonzero(cca.n > 0):
                rows.append((KIND_CCA, int(r), _region_part(cca, int(r)).to_bytes()))
        for r, part in sorted(cca_all.items()):
            rows.append((KIND_CCA, int(r), part.to_bytes()))
        if sample is not None:
            for r, buf in enumerate(sample):
                cand = buf.result()
                if cand is not None and len(cand):
                    rows.append((KIND_CANDIDATES if self.emit_candidates else KIND_SAMPLE, r, cand.to_bytes()))
        if geobins:
            for s, part in enumerate(GeobinSums.total(geobins).shard(self.geobin_shards)):
                if part.key.size:
                    rows.append((KIND_GEOBIN, s, part.to_bytes()))
        state.clear()
        yield pa.RecordBatch.from_arrays(
            [pa.array([k for k, _, _ in rows], pa.string()), pa.array([k for _, k, _ in rows], pa.int32()),
             pa.array([p for _, _, p in rows], pa.binary())], names=["kind", "key", "payload"])

    def _fold(self, table: pa.Table, label_set: pa.Array, state: dict) -> None:
        X = np.column_stack([table.column(c).to_numpy().astype(np.float64) for c in self.expr_columns])
        region = table.column("_region").to_numpy().astype(np.int64)
        C = sparse_contexts(table.column("contexts"), label_set)
        hashes = table.column("_hash").to_numpy()
        weights = poisson_weights(hashes, self.n_replicates, self.seed)
        part = accumulate(X, C, region, weights, self.n_regions, self.occur_threshold, self.chunk_rows)
        del weights
        if state["moments"] is None:
            state["moments"] = part
        else:
            state["moments"] += part
        del part
        if state["sample"] is None:
            cpart = accumulate_cca(X, C, region, self.n_regions)
            if state["cca"] is None:
                state["cca"] = cpart
            else:
                state["cca"] += cpart
        else:
            keys = table.column("_key").to_numpy()
            for r in np.unique(region):
                sel = np.flatnonzero(region == r)
                state["sample"][r].add(SampleRows(keys[sel], hashes[sel], X[sel], C[sel], self.cca_per_region))
                if int(r) in self.cca_all_regions:  # one-region sums, emitted under the region's key
                    part = accumulate_cca(X[sel], C[sel], np.zeros(sel.size, dtype=np.int64), 1, all_videos=True)
                    if int(r) in state["cca_all"]:
                        state["cca_all"][int(r)] += part
                    else:
                        state["cca_all"][int(r)] = part
        lat, lon = table.column("lat_bin"), table.column("lon_bin")
        has_bin = ~(lat.is_null().to_numpy() | lon.is_null().to_numpy())
        if has_bin.any():
            geobins = state["geobins"]
            geobins.append(GeobinSums.from_rows(lat.to_numpy()[has_bin].astype(np.int64),
                                                lon.to_numpy()[has_bin].astype(np.int64), X[has_bin],
                                                C[np.flatnonzero(has_bin)]))
            if len(geobins) > 8:  # keep the list short: the same bins recur batch after batch
                geobins[:] = [GeobinSums.total(geobins)]


def combine_partials(pdf: pd.DataFrame, prediction_per_region: int = 0) -> pd.DataFrame:
    """``applyInPandas`` function: add all partial payloads of one ``(kind, key)`` group into one row.

    ``prediction_per_region``: the first this many videos of each region's balanced sample also fill the per-fold
    sums of Extended Data Fig. 7's tenfold prediction (bind it with :func:`functools.partial`)."""
    kind = str(pdf["kind"].iloc[0])
    key = int(pdf["key"].iloc[0])
    payloads = pdf["payload"]
    if kind == KIND_MOMENTS:
        total = Moments.total(Moments.from_bytes(bytes(p)) for p in payloads).to_bytes()
    elif kind == KIND_CCA:
        total = CcaMoments.total(CcaMoments.from_bytes(bytes(p)) for p in payloads).to_bytes()
    elif kind == KIND_GEOBIN:
        total = GeobinSums.total(GeobinSums.from_bytes(bytes(p)) for p in payloads).to_bytes()
    elif kind == KIND_CANDIDATES:
        merged = SampleRows.concat([SampleRows.from_bytes(bytes(p)) for p in payloads])
        total = merged.bottom(merged.k).to_bytes()
    elif kind == KIND_SAMPLE:
        # The global bottom-k of one region from the tasks' candidates, then its CCA sums (as a one-region
        # CcaMoments, emitted under KIND_CCA with the region as key).
        merged = SampleRows.concat([SampleRows.from_bytes(bytes(p)) for p in payloads])
        rows = merged.bottom(merged.k)
        cm = accumulate_cca(rows.X, rows.C, np.zeros(len(rows), dtype=np.int64), 1,
                            folds=prediction_folds(len(rows), prediction_per_region))
        return pd.DataFrame({"kind": [KIND_CCA], "key": [key], "payload": [cm.to_bytes()]})
    else:
        raise ValueError(f"unknown partial kind {kind!r}")
    return pd.DataFrame({"kind": [kind], "key": [key], "payload": [total]})


def assemble(rows: Iterable[tuple[str, int, bytes]], n_regions: int, n_boot1: int, n_expr: int,
             n_ctx: int) -> tuple[Moments, CcaMoments, GeobinSums]:
    """Driver side: the combined ``(kind, key, payload)`` rows -> full Moments, CcaMoments and GeobinSums.

    Rows of the same ``(kind, key)`` are added, so un-combined partials are accepted too.
    """
    moments = Moments.zeros(n_regions, n_boot1, n_expr, n_ctx)
    cca = CcaMoments.zeros(n_regions, n_expr, n_ctx)
    bins: list[GeobinSums] = []
    for kind, key, payload in rows:
        if kind == KIND_MOMENTS:
            part = Moments.from_bytes(bytes(payload))
            for f in dataclasses.fields(moments):
                getattr(moments, f.name)[key] += getattr(part, f.name)[0]
        elif kind == KIND_CCA:
            part = CcaMoments.from_bytes(bytes(payload))
            for f in dataclasses.fields(cca):
                getattr(cca, f.name)[key] += getattr(part, f.name)[0]
        elif kind == KIND_GEOBIN:
            bins.append(GeobinSums.from_bytes(bytes(payload)))
        else:
            raise ValueError(f"unknown partial kind {kind!r}")
    geobins = GeobinSums.total(bins) if bins else GeobinSums.empty(n_expr, n_ctx)
    return moments, cca, geobins
