"""``cxatlas train``: rated stimuli in, a trained expression-model checkpoint out, the data never on the driver.

Flow:

1. **Ratings** (Parquet, CSV or Delta; one row per rating: ``uri``, ``country`` and one numeric column per label)
   are averaged per stimulus and rater country, as Brooks et al. (2024) did, and each label's means are scaled to
   [0, 1] per country (min-max over that country's stimuli). A stimulus' targets are laid out country-major, NaN
   where a country did not rate it. Rows without a uri or country are quarantined.
2. **Faces**: the stimuli go through ``mapInPandas(cxatlas.udfs.training.StimulusCrops)`` on the executors (MTCNN,
   the ``annotate.faces`` settings); the output is staged as Parquet, then written to the Delta table
   ``training_examples`` (one row per crop: uint8 bytes, targets, countries, split) and stimuli that are missing,
   unreadable or show no face go to ``quarantine`` (stage ``train``) with their reason. Counts reconcile: stimuli
   rated = stimuli with crops + quarantined. The held-out split is by hash of the stimulus id and ``train.seed``, so
   every crop of a stimulus is on the same side and a rerun gives the same split. A set (ratings content + crop and
   split settings) is prepared once: a rerun or a resumed run reuses its crops (``training_sets``).
3. **Training**: petastorm reads the table at the version just written (``make_spark_converter`` ->
   ``make_torch_dataloader``, cache under ``<data_root>/_petastorm``) and feeds the torch
   :class:`cxatlas.models.training.Trainer`, which saves a checkpoint after every epoch (the registry loads it: ``cxatlas annotate --set
   annotate.expression.model=<model> --set annotate.expression.checkpoint=<file>``) with its labels, countries, input
   spec, training-table version and metrics, plus the state ``--resume`` continues from.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from cxatlas.compat import petastorm as petastorm_compat
from cxatlas.core.config import Config, join_uri
from cxatlas.core.errors import UserError
from cxatlas.core.runs import RunReport
from cxatlas.core.settings import TrainSettings, fingerprint
from cxatlas.core.train_schemas import TRAINING_EXAMPLES, TRAINING_SETS
from cxatlas.warehouse.quarantine import to_quarantine_rows, write_quarantine
from cxatlas.warehouse.spark import ARROW_BATCH, remove_path, scoped_conf
from cxatlas.warehouse.tables import TableStore

log = logging.getLogger(__name__)
STAGE = "train"
URI, COUNTRY = "uri", "country"
STAGING_DIR = "_staging"
PETASTORM_DIR = "_petastorm"
_FORMATS = ("parquet", "csv", "delta")
#: Version of what a set's rows hold, part of its id: 2 added ``window_index``, so sets prepared before (whose rows
#: lack it) are prepared again rather than misread as one window per stimulus.
EXAMPLES_LAYOUT = 2


class RatingsError(UserError, ValueError):
    """A ratings table that cannot be used; the message names it and what to change."""


# -- ratings -----------------------------------------------------------------------------------------------------------
def ratings_format(path: str) -> str:
    """Delta when the folder has a ``_delta_log``, CSV for ``.csv``/``.tsv``, else Parquet."""
    local = path.removeprefix("file://")
    if "://" not in path or path.startswith("file://"):
        if not os.path.exists(local):
            raise RatingsError(f"ratings '{path}' does not exist")
        if os.path.isdir(os.path.join(local, "_delta_log")):
            return "delta"
    return "csv" if path.lower().endswith((".csv", ".tsv", ".csv.gz")) else "parquet"


def read_ratings(spark, path: str, group_by: str | None = None) -> tuple[Any, list[str], list[str]]:
    """(DataFrame, label columns, ignored columns) of a ratings table; every numeric column other than ``uri``,
    ``country`` and the ``group_by`` column is a label. Refuses (one line) a table without ``uri``/``country``, without
    the ``group_by`` column when one is given, or without a numeric column."""
    from pyspark.errors import AnalysisException
    from pyspark.sql.types import NumericType

    fmt = ratings_format(path)
    try:
        reader = spark.read.format(fmt)
        if fmt == "csv":
            reader = reader.option("header", "true").option("inferSchema", "true").option(
                "sep", "\t" if path.lower().endswith(".tsv") else ",")
        df = reader.load(path)
        fields = df.schema.fields
    except AnalysisException as exc:
        raise RatingsError(f"cannot read ratings '{path}' as {fmt}: {str(exc).splitlines()[0][:300]}") from None
    names = [f.name for f in fields]
    missing = [c for c in (URI, COUNTRY) if c not in names]
    if missing:
        raise RatingsError(f"ratings '{path}' lack column(s) {missing}; expected {URI!r} (the rated image or clip), "
                           f"{COUNTRY!r} (the rater's country) and one numeric column per label; found {names}")
    if group_by and group_by not in names:
        raise RatingsError(f"ratings '{path}' have no group column {group_by!r} (--group-by: the person, e.g. the "
                           f"poser id, whose stimuli must all fall on one side of the split); found {names}")
    keys = (URI, COUNTRY) + ((group_by,) if group_by else ())
    labels = [f.name for f in fields if f.name not in keys and isinstance(f.dataType, NumericType)]
    ignored = [f.name for f in fields if f.name not in (*keys, *labels)]
    if not labels:
        raise RatingsError(f"ratings '{path}' have no numeric label column (columns: {names})")
    return df, labels, ignored


def stimulus_targets(ratings, labels: Sequence[str], countries: Sequence[str]):
    """One row per stimulus: ``uri``, ``countries`` (sorted) and ``targets`` (country-major, scaled to [0, 1] per
    label and country, NaN where a country did not rate it). Pure Spark: nothing is collected."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    means = ratings.groupBy(URI, COUNTRY).agg(*[F.avg(F.col(f"`{label}`")).alias(f"m{i}")
                                                for i, label in enumerate(labels)])
    by_country = Window.partitionBy(COUNTRY)
    scaled = means.select(URI, COUNTRY, *[
        F.when(F.max(f"m{i}").over(by_country) > F.min(f"m{i}").over(by_country),
               (F.col(f"m{i}") - F.min(f"m{i}").over(by_country))
               / (F.max(f"m{i}").over(by_country) - F.min(f"m{i}").over(by_country)))
        .when(F.col(f"m{i}").isNotNull(), F.lit(0.0)).alias(f"s{i}")  # a label constant within a country carries
        for i in range(len(labels))])                                   # no information: 0
    cells = [F.max(F.when(F.col(COUNTRY) == country, F.col(f"s{i}"))).alias(f"c{c}_{i}")
             for c, country in enumerate(countries) for i in range(len(labels))]
    wide = scaled.groupBy(URI).agg(F.array_sort(F.collect_set(COUNTRY)).alias("countries"), *cells)
    nan = F.lit(float("nan")).cast("float")
    targets = F.array(*[F.coalesce(F.col(f"c{c}_{i}").cast("float"), nan)
                        for c in range(len(countries)) for i in range(len(labels))])
    return wide.select(URI, "countries", targets.alias("targets"))


# -- preparing a training set -----------------------------------------------------------------------------------------
@dataclass
class TrainingSet:
    """A prepared set: its id, the training table version holding it, and what its targets mean."""

    training_set: str
    version: int
    labels: list[str]
    countries: list[str]
    ratings: str
    rating_rows: int
    stimuli: int
    stimuli_with_crops: int
    quarantined: int
    crops: int
    heldout_stimuli: int
    reused: bool = False
    reasons: dict[str, int] = field(default_factory=dict)
    #: rating rows quarantined before averaging, by reason (missing_uri, missing_country, non_finite_rating)
    rows_quarantined: dict[str, int] = field(default_factory=dict)

    @property
    def target_labels(self) -> list[str]:
        """``country:label`` for every target column, country-major (the brooks288 label convention)."""
        return [f"{country}:{label}" for country in self.countries for label in self.labels]

    def lines(self) -> list[str]:
        how = "reused (prepared before)" if self.reused else "prepared"
        return [f"  training set {self.training_set} {how}: {len(self.labels)} labels x {len(self.countries)} "
                f"countries ({', '.join(self.countries)}), {self.rating_rows} rating rows",
                f"  stimuli rated {self.stimuli} = with face crops {self.stimuli_with_crops} + quarantined "
                f"{self.quarantined}  [{'reconciles' if self.reconciles else 'DOES NOT RECONCILE'}]",
                f"  {self.crops} crops in training_examples version {self.version}; {self.heldout_stimuli} stimuli "
                f"held out"] + (["  rating rows quarantined: " + ", ".join(
                    f"{n} {reason}" for reason, n in sorted(self.rows_quarantined.items()))]
                    if self.rows_quarantined else [])

    @property
    def reconciles(self) -> bool:
        return self.stimuli == self.stimuli_with_crops + self.quarantined


def _set_settings(cfg: Config) -> dict:
    """Every setting that changes the crops or the split: part of the set's id."""
    t, a = cfg.settings.train, cfg.settings.annotate
    return {"layout": EXAMPLES_LAYOUT, "faces": fingerprint(a.faces), "video": fingerprint(a.video),
            "crop_size": t.crop_size,
            "image_max_side": t.image_max_side, "windows_per_clip": t.windows_per_clip,
            "crops_per_window": t.crops_per_window, "heldout_fraction": t.heldout_fraction, "seed": t.seed}


def _split(seed: int, heldout_fraction: float, key: str = "stimulus_id"):
    """``train``/``heldout`` by hash of ``key`` (the stimulus, or its group: the person) and the seed."""
    from pyspark.sql import functions as F

    bucket = F.pmod(F.xxhash64(F.col(key), F.lit(seed)), F.lit(10_000))
    return F.when(bucket < int(round(heldout_fraction * 10_000)), "heldout").otherwise("train")


class LeakingSplitError(RatingsError):
    """A split by group would put one group (a person) on both sides: refused before anything is written."""


def _finite(column):
    """A rating that is a number: not null, not NaN, not infinite."""
    from pyspark.sql import functions as F

    value = column.cast("double")
    return value.isNotNull() & ~F.isnan(value) & (F.abs(value) != F.lit(float("inf")))


def _non_finite(label: str):
    """A rating given but not a number (NaN, +-inf): such a row is quarantined, never averaged. A null is a rating
    not given (a country that did not rate that label), which the averages skip."""
    return _label_col(label).isNotNull() & ~_finite(_label_col(label))


def _label_col(label: str):
    from pyspark.sql import functions as F

    return F.col(f"`{label}`")


def labels_without_ratings(ratings, labels: Sequence[str], ratings_path: str) -> None:
    """Refuse (:class:`RatingsError`, before any table is touched) ratings where a label has no finite rating at all:
    a model would train on nothing for it and ship its untrained outputs in the checkpoint. One aggregation."""
    from pyspark.sql import functions as F

    counts = ratings.select(*[F.count(F.when(_finite(_label_col(label)), 1)).alias(f"n{i}")
                              for i, label in enumerate(labels)]).collect()[0]
    empty = [label for i, label in enumerate(labels) if counts[f"n{i}"] == 0]
    if empty:
        raise RatingsError(f"ratings '{ratings_path}': label(s) {empty} have no rating (every value missing, NaN or "
                           f"infinite); drop the column(s) or supply ratings")


def group_split_check(spark, ratings, group_by: str, ratings_path: str) -> None:
    """Refuse ratings whose split by ``group_by`` cannot be clean: a stimulus with no group value, or with two.

    Inagaki et al. (2022) split by person: "In each run, we randomly divided the images of 60 individuals into a
    training dataset (40), validation dataset (8), and test dataset (12)." A stimulus rated under two group values
    (two posers for one image) would have to go to one side while its other person is on the other: a leak, so the
    whole input is refused (one line naming stimuli), before any crop or table is written.
    """
    from pyspark.sql import functions as F

    per = ratings.groupBy(URI).agg(F.countDistinct(F.col(f"`{group_by}`")).alias("n"),
                                   F.sum(F.col(f"`{group_by}`").isNull().cast("int")).alias("nulls"))
    bad = per.filter((F.col("n") != 1) | (F.col("nulls") > 0)).limit(5).collect()
    if bad:
        shown = ", ".join(f"{r[URI]} ({r['n']} values{', some missing' if r['nulls'] else ''})" for r in bad)
        raise LeakingSplitError(f"ratings '{ratings_path}': group column {group_by!r} must hold exactly one value per "
                                f"stimulus for a split by person that does not leak; offending stimuli: {shown}")


def prepare_training_set(spark, cfg: Config, store: TableStore, ratings_path: str, run_id: str, *,
                         group_by: str | None = None) -> TrainingSet:
    """Ratings -> targets -> face crops in ``training_examples`` (+ quarantine), or the stored set when these
    ratings were prepared with these settings before.

    ``group_by`` (a ratings column, e.g. the poser id) splits by person instead of by stimulus: every stimulus of one
    group falls on the same side (hash of the group value and ``train.seed``). Why (Inagaki et al. 2022, who split
    "the images of 60 individuals" into training, validation and test sets): with a split by stimulus a poser's
    other expressions are in the training set and inflate the "matched" accuracy. A group on both sides is refused
    (:class:`LeakingSplitError`)."""
    from pyspark.sql import functions as F

    t = cfg.settings.train
    ratings, labels, ignored = read_ratings(spark, ratings_path, group_by)
    labels_without_ratings(ratings, labels, ratings_path)
    if group_by:
        group_split_check(spark, ratings, group_by, ratings_path)
    if ignored:
        log.info("ratings %s: non-numeric columns ignored: %s", ratings_path, ignored)
    # An order-independent fingerprint of the ratings' content: row count, sum of row hashes (mod a prime, so the
    # sum cannot overflow) and their XOR. Changed ratings give a new set; the same ratings reuse the stored crops.
    row_hash = F.xxhash64(*[F.col(f"`{c}`") for c in ratings.columns])
    content = ratings.select(F.count(F.lit(1)).alias("n"), F.sum(F.pmod(row_hash, F.lit(2_147_483_647))).alias("h"),
                             F.bit_xor(row_hash).alias("x")).collect()[0]
    settings = _set_settings(cfg)
    if group_by:  # only when given, so sets prepared before keep their ids
        settings["group_by"] = group_by
    set_id = "ts-" + fingerprint(int(content["n"]), int(content["h"] or 0), int(content["x"] or 0), labels,
                                 settings)
    examples = store.table(TRAINING_EXAMPLES).create_if_missing()
    sets = store.table(TRAINING_SETS).create_if_missing()
    known = sets.read().filter(F.col("training_set") == set_id).collect()
    if known:
        row = known[0]
        return TrainingSet(set_id, examples.version(), list(row["labels"]), list(row["countries"]), row["ratings"],
                           row["rating_rows"], row["stimuli"], row["stimuli_with_crops"], row["quarantined"],
                           row["crops"], row["heldout_stimuli"], reused=True)

    source = str(ratings_path)
    valid = (F.col(URI).isNotNull() & (F.trim(F.col(URI)) != "") & F.col(COUNTRY).isNotNull()
             & (F.trim(F.col(COUNTRY).cast("string")) != ""))
    non_finite = [_non_finite(label) for label in labels]
    any_non_finite = non_finite[0]
    for cond in non_finite[1:]:
        any_non_finite = any_non_finite | cond
    bad = (ratings.filter(~valid | any_non_finite)
           .withColumn("_reason", F.when(F.col(URI).isNull() | (F.trim(F.col(URI)) == ""), "missing_uri")
                       .when(F.col(COUNTRY).isNull() | (F.trim(F.col(COUNTRY).cast("string")) == ""),
                             "missing_country").otherwise("non_finite_rating"))
           .withColumn("_detail", F.concat(F.lit("not a finite number: "), F.concat_ws(", ", *[
               F.when(cond, F.lit(label)) for label, cond in zip(labels, non_finite)]))))
    rows_quarantined = {r["_reason"]: int(r["count"]) for r in bad.groupBy("_reason").count().collect()}
    n_bad = sum(rows_quarantined.values())
    good = ratings.filter(valid & ~any_non_finite).withColumn(COUNTRY, F.trim(F.col(COUNTRY).cast("string")))
    countries = sorted(r[0] for r in good.select(COUNTRY).distinct().collect())
    if not countries:
        raise RatingsError(f"ratings '{ratings_path}' have no row with both a uri and a country")
    stimuli = (stimulus_targets(good, labels, countries)
               .withColumn("stimulus_id", F.substring(F.sha2(F.col(URI), 256), 1, 16)))
    if group_by:
        group_of = good.groupBy(URI).agg(F.first(F.col(f"`{group_by}`").cast("string")).alias("split_group"))
        stimuli = stimuli.join(group_of, URI).withColumn("split", _split(t.seed, t.heldout_fraction, "split_group"))
        leaked = stimuli.groupBy("split_group").agg(F.countDistinct("split").alias("sides")).filter("sides > 1")
        if leaked.limit(1).count():  # cannot happen with a hash of the group; checked, not assumed
            raise LeakingSplitError(f"ratings '{ratings_path}': the split puts group(s) "
                                    f"{[r[0] for r in leaked.limit(5).collect()]} on both sides")
        stimuli = stimuli.drop("split_group")
    else:
        stimuli = stimuli.withColumn("split", _split(t.seed, t.heldout_fraction))

    from cxatlas.udfs.training import CROPPED, OUTPUT_SCHEMA, QUARANTINED, StimulusCrops

    staging = join_uri(cfg.data_root, STAGING_DIR, f"train-{run_id}")
    try:
        stimuli.write.mode("overwrite").parquet(staging + "/stimuli")  # targets computed once, read twice below
        staged_stimuli = spark.read.parquet(staging + "/stimuli")
        with scoped_conf(spark, {ARROW_BATCH: t.stimuli_per_batch}):  # the UDF's batches, for this write only
            (staged_stimuli.select("stimulus_id", URI).repartition(t.partitions, "stimulus_id")
             .mapInPandas(StimulusCrops(cfg.settings.annotate, t), OUTPUT_SCHEMA)
             .write.mode("overwrite").parquet(staging + "/crops"))
        crops = spark.read.parquet(staging + "/crops").join(staged_stimuli, "stimulus_id")
        # one pass for every count: stimuli per outcome and reason, their crops, and the held-out ones
        tally = crops.groupBy("status", "reason", "split").agg(
            F.count("*").alias("n"), F.sum(F.coalesce(F.size("crops"), F.lit(0))).alias("crops")).collect()
        counts: dict[tuple, int] = {}
        for r in tally:
            counts[(r["status"], r["reason"])] = counts.get((r["status"], r["reason"]), 0) + r["n"]
        n_crops = sum(r["crops"] for r in tally if r["status"] == CROPPED)
        heldout = sum(r["n"] for r in tally if r["status"] == CROPPED and r["split"] == "heldout")
        rows = (crops.filter(F.col("status") == CROPPED).select("*", F.explode("crops").alias("c"))
                .select(F.lit(set_id).alias("training_set"), "stimulus_id", F.col("c.crop_index").alias("crop_index"),
                        F.col("c.window_index").alias("window_index"), URI, "split", "countries", "targets",
                        F.col("c.crop").alias("crop"), F.lit(t.crop_size).alias("crop_size"),
                        F.col("c.frame_time").alias("frame_time"),
                        F.col("c.face_prob").alias("face_prob"), F.lit(run_id).alias("run_id")))
        examples.insert_new(rows, evolve_schema=True)  # a table from before window_index gains the column
        source_row = F.to_json(F.struct(F.col("stimulus_id"), F.col(URI), F.lit(set_id).alias("training_set")))
        rejects = [to_quarantine_rows(
            crops.filter(F.col("status") == QUARANTINED).withColumn("_row", source_row)
            .withColumn("_from", F.lit(source)),
            stage=STAGE, reason_col="reason", detail_col="detail", source_row_col="_row", source_col="_from",
            run_id=run_id, video_id_col="stimulus_id")]
        if n_bad:
            rejects.append(to_quarantine_rows(
                bad.withColumn("_detail", F.when(F.col("_reason") == "non_finite_rating", F.col("_detail")))
                .withColumn("_row", F.to_json(F.struct(*[F.col(f"`{c}`") for c in ratings.columns])))
                .withColumn("_from", F.lit(source)).withColumn("_id", F.lit(None).cast("string")),
                stage=STAGE, reason_col="_reason", detail_col="_detail", source_row_col="_row", source_col="_from",
                run_id=run_id, video_id_col="_id"))
        all_rejects = rejects[0] if len(rejects) == 1 else rejects[0].unionByName(rejects[1])
        write_quarantine(store, all_rejects)
    finally:
        remove_path(spark, staging)

    reasons = {reason: n for (status, reason), n in counts.items() if status == QUARANTINED}
    if n_bad:
        log.warning("ratings %s: %d rating rows quarantined (%s)", ratings_path, n_bad, rows_quarantined)
    n_cropped = counts.get((CROPPED, None), 0)
    n_stimuli = sum(counts.values())
    prepared = TrainingSet(set_id, examples.version(), list(labels), countries, source, int(content["n"]), n_stimuli,
                           n_cropped, sum(reasons.values()), n_crops, heldout, reasons=reasons,
                           rows_quarantined=rows_quarantined)
    sets.insert_new(spark.createDataFrame(
        [(set_id, source, list(labels), countries, int(content["n"]), n_stimuli, n_cropped, prepared.quarantined,
          n_crops, heldout, json.dumps(settings, sort_keys=True), run_id)],
        "training_set string, ratings string, labels array<string>, countries array<string>, rating_rows long, "
        "stimuli long, stimuli_with_crops long, quarantined long, crops long, heldout_stimuli long, settings string, "
        "run_id string").withColumn("created", F.current_timestamp()))
    return prepared


# -- petastorm ---------------------------------------------------------------------------------------------------------
def petastorm_cache_url(cfg: Config) -> str:
    """petastorm's converter cache (``petastorm.spark.converter.parentCacheDirUrl``) under the data root; a local
    root becomes a ``file://`` URL, as petastorm requires."""
    root = join_uri(cfg.data_root, PETASTORM_DIR)
    return root if "://" in root else "file://" + os.path.abspath(root)


def window_examples(crops, window: int, crop_size: int):
    """One row per window of a stimulus (a still is one window of one crop): ``window``, its crops' bytes in
    ``crop_index`` order zero-padded to ``window`` crops (a fixed shape, which petastorm batches need), ``length``,
    the number of real crops, and the stimulus' ``split`` and ``targets``. Grouped by Spark on the executors."""
    from pyspark.sql import functions as F

    grouped = crops.groupBy("stimulus_id", "window_index", "split").agg(
        F.array_sort(F.collect_list(F.struct("crop_index", "crop"))).alias("w"), F.first("targets").alias("targets"))
    joined = F.expr("aggregate(w, X'', (acc, c) -> concat(acc, c.crop))")
    padded = F.expr(f"rpad(joined, {window * crop_size * crop_size * 3}, X'00')")
    return (grouped.select("split", "targets", joined.alias("joined"), F.least(F.size("w"), F.lit(window))
                           .cast("int").alias("length"))
            .select("split", "targets", "length", padded.alias("window")))


class PetastormFeed:
    """The training and held-out examples of one set at one table version, as petastorm torch loaders.

    An example is a crop, or for a sequence model (cowen16) a window of crops (:func:`window_examples`, at most
    ``train.crops_per_window``). ``make_spark_converter`` materialises each DataFrame once into petastorm's cache
    (Parquet, written by the executors); every epoch then opens ``make_torch_dataloader`` over it, decoding crops
    into model input in petastorm's reader threads (:class:`cxatlas.udfs.training.DecodeExamples`). Nothing is
    collected to the driver.
    """

    def __init__(self, spark, cfg: Config, store: TableStore, prepared: TrainingSet, input_spec, batch_size: int):
        petastorm_compat.quiet_for_good()  # before the import: importing petastorm already warns
        petastorm_compat.fix_end_of_data_race()
        from petastorm import TransformSpec
        from petastorm.spark import SparkDatasetConverter, make_spark_converter
        from pyspark.sql import functions as F

        from cxatlas.udfs.training import DecodeExamples

        t = cfg.settings.train
        self.batch_size, self.workers, self.shuffle, self.seed = batch_size, t.loader_workers, t.shuffle_buffer, t.seed
        table = store.table(TRAINING_EXAMPLES).read(version=prepared.version).filter(
            F.col("training_set") == prepared.training_set)
        window = t.crops_per_window if input_spec.is_window else None
        decode = DecodeExamples(input_spec, t.crop_size, len(prepared.target_labels), window)
        self.unit = "crops" if window is None else "windows"
        self.transform = TransformSpec(decode, edit_fields=decode.fields,
                                       selected_fields=[name for name, *_ in decode.fields])
        examples = table if window is None else window_examples(table, window, t.crop_size)
        # petastorm reads its cache folder from the session conf inside make_spark_converter: set for those calls only
        with petastorm_compat.quiet(), scoped_conf(spark, {SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF:
                                                           petastorm_cache_url(cfg)}):
            self.train = make_spark_converter(examples.filter(F.col("split") == "train").select(*decode.columns))
            self.heldout = make_spark_converter(examples.filter(F.col("split") == "heldout").select(*decode.columns))
        if len(self.train) == 0:
            raise UserError(f"training set {prepared.training_set} has no training {self.unit} (every stimulus was "
                            f"held out or quarantined); rate more stimuli or lower train.heldout_fraction")

    def _batches(self, converter, shuffle: bool, epoch: int) -> Iterator[dict]:
        """One pass over ``converter``; a pass that reads fewer examples than the converter holds is an error, not a
        quietly shorter epoch."""
        if len(converter) == 0:
            return
        seen = 0
        with petastorm_compat.quiet(), converter.make_torch_dataloader(
                batch_size=self.batch_size, num_epochs=1, workers_count=self.workers,
                shuffling_queue_capacity=self.shuffle if shuffle else 0, transform_spec=self.transform,
                shuffle_row_groups=shuffle, seed=self.seed * 1_000 + epoch) as loader:
            for batch in loader:
                seen += len(batch["targets"])
                yield batch
        if seen != len(converter):
            raise RuntimeError(f"petastorm read {seen} of the {len(converter)} {self.unit} in "
                               f"{converter.cache_dir_url}: the pass was cut short")

    def train_batches(self, epoch: int) -> Iterator[dict]:
        return self._batches(self.train, True, epoch)

    def heldout_batches(self) -> Iterator[dict]:
        return self._batches(self.heldout, False, 0)

    def close(self) -> None:
        """Remove the converters' cached Parquet (the Delta table stays the source of truth)."""
        for converter in (self.train, self.heldout):
            try:
                converter.delete()
            except Exception as exc:  # noqa: BLE001 - a cache left behind is harmless; say so
                log.warning("could not remove petastorm cache %s: %s", converter.cache_dir_url, exc)


# -- the run -----------------------------------------------------------------------------------------------------------
@dataclass
class TrainReport(RunReport):
    """``stimuli == stimuli_with_crops + quarantined`` always; then what training did."""

    model: str = ""
    checkpoint: str = ""
    prepared: TrainingSet | None = None
    epochs_run: list[int] = field(default_factory=list)
    resumed_from: int = 0
    final: dict = field(default_factory=dict)

    def headline(self) -> str:
        return f"train {self.model} (run {self.run_id})"

    def balance(self):
        p = self.prepared
        if p is None:
            return None
        return ("stimuli rated", p.stimuli), [("with face crops", p.stimuli_with_crops), ("quarantined", p.quarantined)]

    def details(self) -> list[str]:
        lines = self.prepared.lines()[::2] if self.prepared else []
        if self.resumed_from:
            lines.append(f"  resumed after epoch {self.resumed_from}")
        if self.epochs_run:
            lines.append(f"  trained epochs {self.epochs_run[0]}..{self.epochs_run[-1]}")
        elif self.prepared:
            lines.append("  no epoch left to train (the checkpoint already has them all)")
        if self.final:
            r = self.final.get("heldout_mean_r")
            lines.append(f"  final: loss {self.final.get('loss', float('nan')):.4f}, held-out mean r "
                         f"{'n/a' if r is None else f'{r:.3f}'}")
        lines.append(f"  checkpoint {self.checkpoint} (annotate with --set annotate.expression.model={self.model} "
                     f"--set annotate.expression.checkpoint={self.checkpoint})")
        return lines


def recipe_of(t: TrainSettings, epochs: int | None = None):
    from cxatlas.models.training import Recipe

    return Recipe(epochs=t.epochs if epochs is None else epochs, lr=t.lr, weight_decay=t.weight_decay,
                  step_size=t.step_size, gamma=t.gamma, amp=t.amp, seed=t.seed, augment_flip=t.augment_flip)


def _mean_r(values: Sequence[float | None]) -> float | None:
    valid = [v for v in values if v is not None]
    return sum(valid) / len(valid) if valid else None


def run_train(spark, cfg: Config, store: TableStore, model: str, ratings: str, out: str | None = None,
              epochs: int | None = None, batch_size: int | None = None, resume: bool = False,
              group_by: str | None = None) -> TrainReport:
    """Prepare (or reuse) the training set of ``ratings`` and train ``model`` on it, saving ``out`` every epoch."""
    import torch

    from cxatlas.models.checkpoint import load_checkpoint
    from cxatlas.models.device import pick_device
    from cxatlas.models.registry import REGISTRY
    from cxatlas.models.training import TargetView, Trainer, build_trainable, check_trainable, load_state, loss_for, \
        save_epoch

    t = cfg.settings.train
    report = TrainReport(model=model)
    if model not in REGISTRY:
        raise UserError(f"unknown model '{model}'; models: {sorted(REGISTRY)}")
    device = pick_device(t.device)
    check_trainable(model, t.trunk_checkpoint)  # refuse before any Spark work
    prepared = prepare_training_set(spark, cfg, store, ratings, report.run_id, group_by=group_by)
    report.prepared = prepared
    out = out or join_uri(cfg.data_root, "models", f"{model}-{prepared.training_set}.pt")
    report.checkpoint = out
    labels = prepared.target_labels
    state = load_state(out)
    if state is not None and not resume:
        raise UserError(f"checkpoint '{out}' exists with its training state (after epoch {state['epoch']}): pass "
                        f"--resume to continue it, or --out a new file")
    if resume and state is not None and state.get("training_set") != prepared.training_set:
        raise UserError(f"cannot resume '{out}': it was trained on set {state.get('training_set')}, these ratings and "
                        f"settings give set {prepared.training_set}")

    module = build_trainable(model, labels, t.trunk_checkpoint, t.seed, device)
    input_spec = REGISTRY[model].input_spec
    trainer = Trainer(module, recipe_of(t, epochs), TargetView.identity(len(labels)), device, loss=loss_for(model))
    if resume and state is not None:
        module.load_state_dict(load_checkpoint(out, model).state_dict)
        trainer.restore(state)
        report.resumed_from = trainer.epoch
        print(f"[train] resuming {out} after epoch {trainer.epoch}", flush=True)
    elif resume:
        print(f"[train] nothing to resume at {out} (no saved training state): starting at epoch 1", flush=True)

    def on_epoch(result) -> None:
        extra = {"countries": prepared.countries, "rating_labels": prepared.labels,
                 "training_set": prepared.training_set, "training_table": TRAINING_EXAMPLES.name,
                 "training_table_version": prepared.version, "ratings": prepared.ratings,
                 "epoch": result.epoch, "recipe": trainer.state()["recipe"],
                 "metrics": {"loss": result.loss, "heldout_loss": result.heldout_loss,
                             "heldout_r": dict(zip(labels, result.heldout_r))}}
        save_epoch(out, model, module, labels, input_spec, extra,
                   {**trainer.state(), "training_set": prepared.training_set})
        report.epochs_run.append(result.epoch)
        report.final = {"loss": result.loss, "heldout_mean_r": _mean_r(result.heldout_r),
                        "heldout_r": dict(zip(labels, result.heldout_r))}
        print(f"[train] {result.line(labels, unit=feed.unit)}", flush=True)

    feed = PetastormFeed(spark, cfg, store, prepared, input_spec, batch_size or t.batch_size)
    try:
        amp = " (autocast fp16)" if t.amp and device.type == "cuda" else ""
        print(f"[train] {model} on {len(feed.train)} training / {len(feed.heldout)} held-out {feed.unit}, "
              f"{len(labels)} outputs, device {device}{amp}",
              flush=True)
        torch.manual_seed(t.seed)
        trainer.fit(feed.train_batches, feed.heldout_batches, on_epoch)
    finally:
        feed.close()
    if not report.epochs_run and trainer.history:
        last = trainer.history[-1]
        report.final = {"loss": last["loss"], "heldout_mean_r": _mean_r(last["heldout_r"])}
    report.reasons = dict(prepared.reasons)
    report.finish()
    return report
