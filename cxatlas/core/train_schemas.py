"""Schemas of the tables ``cxatlas train`` writes: face crops with their rating targets, and what each set holds.

* ``training_examples``: one row per face crop of a rated stimulus (a photo gives one crop, a clip several), with
  the stimulus' targets: ratings averaged per stimulus and rater country, scaled to [0, 1] per label and country,
  laid out country-major (``targets[c * n_labels + l]`` is country ``c``, label ``l``; NaN where that country did not
  rate the stimulus). ``window_index`` says which window of a clip a crop comes from, so sequence models can read
  a window's crops in order. The crop is raw uint8 RGB bytes of ``crop_size`` x ``crop_size`` x 3, so readers need
  no image codec; petastorm decodes it for PyTorch (:mod:`cxatlas.udfs.training`).
* ``training_sets``: one row per prepared set: the ratings it came from, its labels and countries (the meaning of
  ``targets``), the face and split settings, and its counts. Written after the examples, so a set listed here is
  complete.

A set's id is a hash of the ratings' content and every setting that changes the crops or the split: preparing the
same ratings twice reuses the stored crops, and changed ratings or face settings make a new set.
"""
from __future__ import annotations

import pyarrow as pa

from cxatlas.core.schemas import TS, TableSpec, _f

SPLITS = ("train", "heldout")

TRAINING_EXAMPLES = TableSpec(
    name="training_examples",
    schema=pa.schema([
        _f("training_set", pa.string(), "id of the prepared set (training_sets.training_set)", nullable=False),
        _f("stimulus_id", pa.string(), "sha256 of the stimulus uri, first 16 hex digits", nullable=False),
        _f("crop_index", pa.int32(), "crop number within the stimulus (clips give several)", nullable=False),
        _f("window_index", pa.int32(), "window of the clip the crop belongs to (0 for a still image); a window's crops "
           "in crop_index order are one example of a sequence model (cowen16)"),
        _f("uri", pa.string(), "the rated image or clip"),
        _f("split", pa.string(), "train | heldout, by hash of the stimulus id and train.seed"),
        _f("countries", pa.list_(pa.string()), "rater countries that rated this stimulus"),
        _f("targets", pa.list_(pa.float32()),
           "country-major targets in [0, 1], NaN where a country did not rate the stimulus (labels and countries: "
           "training_sets)"),
        _f("crop", pa.binary(), "face crop: raw uint8 RGB bytes, crop_size x crop_size x 3"),
        _f("crop_size", pa.int32(), "side of the crop in pixels"),
        _f("frame_time", pa.float64(), "seconds into the clip (null for a still image)"),
        _f("face_prob", pa.float32(), "MTCNN probability of the face (null on interpolated clip frames)"),
        _f("run_id", pa.string(), "the train run that prepared the set"),
    ]),
    partition_by=("training_set",),
    key=("training_set", "stimulus_id", "crop_index"),
    comment="Face crops of rated stimuli with their per-country targets, for cxatlas train (read through petastorm).",
)

TRAINING_SETS = TableSpec(
    name="training_sets",
    schema=pa.schema([
        _f("training_set", pa.string(), "id: hash of the ratings' content and the crop and split settings",
           nullable=False),
        _f("ratings", pa.string(), "the ratings table it was prepared from"),
        _f("labels", pa.list_(pa.string()), "rated labels, in target order within a country"),
        _f("countries", pa.list_(pa.string()), "rater countries, in target order"),
        _f("rating_rows", pa.int64(), "rows of the ratings table"),
        _f("stimuli", pa.int64(), "distinct rated stimuli (= with crops + quarantined)"),
        _f("stimuli_with_crops", pa.int64(), "stimuli that gave at least one face crop"),
        _f("quarantined", pa.int64(), "stimuli quarantined (missing, unreadable, no face)"),
        _f("crops", pa.int64(), "rows written to training_examples"),
        _f("heldout_stimuli", pa.int64(), "stimuli in the heldout split"),
        _f("settings", pa.string(), "JSON of the face, crop and split settings used"),
        _f("run_id", pa.string(), "the run that prepared it"),
        _f("created", TS, "when"),
    ]),
    partition_by=(),
    key=("training_set",),
    comment="Prepared training sets: where the ratings came from, what the targets mean, and how counts reconcile.",
)

TRAIN_TABLES: tuple[TableSpec, ...] = (TRAINING_EXAMPLES, TRAINING_SETS)
