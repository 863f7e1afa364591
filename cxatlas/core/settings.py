"""Typed settings: one frozen dataclass per stage, built from YAML, with no defaults in code.

Why this shape:

* **Defaults live in one place**, the packaged ``conf/local.yaml``. The dataclasses below say what each setting is
  and its type, never its value, so a default cannot drift between code and file. Every other config file (for
  example ``conf/cluster.yaml``) is an *overlay*: it holds only what differs and is merged over ``local.yaml``.
* **Typos fail.** A key the schema does not know is refused, naming the key and the nearest valid one, instead of
  being silently ignored.
* **Free-form maps** (``spark.conf``, ``simulate.region_weights``) are typed ``dict``: any key goes, and a dotted
  override such as ``--set spark.conf.spark.sql.shuffle.partitions=4`` sets the one key
  ``spark.sql.shuffle.partitions`` inside it.
* Settings are frozen and hashable (lists become tuples), so executors can key caches by them, and a stage's
  settings can be fingerprinted (:func:`fingerprint`) to version what they produce.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import os
import types
import typing
from typing import Annotated, Any, Literal, Mapping, Optional, Union

from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic.dataclasses import dataclass as _pydantic_dataclass

from cxatlas.core.errors import UserError
from cxatlas.core.regions import REGION_IDS


class ConfigError(UserError, ValueError):
    """A configuration file or override is malformed, names an unknown setting, or lacks a required one."""


# Every section is a frozen *pydantic* dataclass: still a dataclass (``dataclasses.replace``/``asdict``/``fields``
# work, and ``cfg.settings.<stage>.<field>`` reads as before), but each value is validated when it is built: an
# enumeration is a ``Literal``, a number carries its range, and no float may be NaN or infinite. A section added
# with ``@dataclass(frozen=True)`` below is validated the same way (types at least).
SECTION_CONFIG = ConfigDict(allow_inf_nan=False, coerce_numbers_to_str=True, extra="forbid")


def dataclass(cls: type | None = None, /, **kwargs: Any) -> Any:
    """``@dataclass(frozen=True)`` for settings sections: pydantic's dataclass with :data:`SECTION_CONFIG`."""
    kwargs.setdefault("config", SECTION_CONFIG)
    return _pydantic_dataclass(cls, **kwargs) if cls is not None else _pydantic_dataclass(**kwargs)


def _local_file(value: str) -> str:
    """A file that must exist when it is local; remote URIs (s3a://, hdfs://) are checked at first use."""
    if "://" not in value and not os.path.isfile(value):
        raise ValueError("must be an existing file (no such file)")
    return value


NonEmpty = Annotated[str, Field(min_length=1)]
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Share = Annotated[float, Field(ge=0, le=1)]
Port = Annotated[int, Field(ge=0, le=65535)]
Device = Annotated[str, Field(pattern=r"^(auto|cpu|cuda|cuda:[0-9]+|mps)$")]
LocalFile = Annotated[str, Field(min_length=1), AfterValidator(_local_file)]
RegionId = Literal[REGION_IDS]  # type: ignore[valid-type]


# ---------------------------------------------------------------------------------------------------------------------
# The schema (see conf/local.yaml for what each setting means and its default)
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SparkSettings:
    master: Optional[str]
    app_name: NonEmpty
    conf: dict
    log_level: Literal["ALL", "TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF"]
    jars_dir: Optional[str]
    class_archive: bool


@dataclass(frozen=True)
class TablesSettings:
    dir: NonEmpty
    target_file_rows: PosInt
    vacuum_retention_hours: NonNegFloat
    conflict_retries: NonNegInt
    changed_keys_check_min_bytes: NonNegInt


@dataclass(frozen=True)
class CatalogSettings:
    database: Identifier
    metastore: Literal["derby-server", "embedded", "external"]
    derby_host: NonEmpty
    derby_port: Port
    metastore_dir: NonEmpty
    metastore_root: Optional[NonEmpty]
    warehouse_dir: NonEmpty


@dataclass(frozen=True)
class SqlServerSettings:
    host: NonEmpty
    port: Port
    authentication: Literal["auto", "password"]
    allow_writes: bool


@dataclass(frozen=True)
class RegionsSettings:
    file: NonEmpty


@dataclass(frozen=True)
class GeoSettings:
    bin_deg: Annotated[float, Field(gt=0, le=180)]
    max_distance_km: PosFloat
    border_tolerance_km: NonNegFloat
    max_offshore_km: Optional[PosFloat]
    offshore_neighbours: PosInt


@dataclass(frozen=True)
class IngestSettings:
    partitions: PosInt
    max_title_chars: PosInt
    max_description_chars: PosInt
    allow_extra_columns: bool
    csv_multiline: bool
    allowed_schemes: tuple[Annotated[str, Field(pattern=r"^[a-z][a-z0-9+.\-]*$")], ...]
    allowed_roots: tuple[NonEmpty, ...]
    shared_uri: Literal["warn", "quarantine"]


@dataclass(frozen=True)
class CorpusSettings:
    videos: PosInt
    seed: int
    taxonomy: NonEmpty


@dataclass(frozen=True)
class VideoSettings:
    fps: PosFloat
    window_seconds: PosFloat
    max_windows: PosInt
    placement: Literal["even", "start"]
    max_side: PosInt
    min_frames: PosInt
    seek_threshold_s: NonNegFloat
    min_decoded_fraction: Optional[Share]

    @model_validator(mode="after")
    def _window_holds_min_frames(self) -> "VideoSettings":
        if self.fps * self.window_seconds < self.min_frames:
            raise ValueError(f"min_frames ({self.min_frames}) exceeds the frames of one window (fps x window_seconds "
                             f"= {self.fps * self.window_seconds:g}): every video would be quarantined")
        return self


@dataclass(frozen=True)
class FaceSettings:
    min_face_size: PosInt
    min_prob: Share
    mtcnn_thresholds: tuple[Share, Share, Share]
    mtcnn_factor: Annotated[float, Field(gt=0, lt=1)]
    detect_batch_size: PosInt
    min_track_frames: PosInt
    detect_stride: PosInt
    refine_stride: NonNegInt
    iou_threshold: Share
    max_missed: NonNegInt
    crop_size: PosInt
    margin: NonNegFloat
    smooth_frames: PosInt

    @model_validator(mode="after")
    def _tracks_fit(self) -> "FaceSettings":
        if self.detect_stride > self.min_track_frames:
            raise ValueError(f"detect_stride ({self.detect_stride}) must not exceed min_track_frames "
                             f"({self.min_track_frames}): no track could be confirmed")
        if self.refine_stride > self.detect_stride:
            raise ValueError(f"refine_stride ({self.refine_stride}) must not exceed detect_stride "
                             f"({self.detect_stride}): refining every detect_stride-th frame already refines only "
                             f"the last frame of a window (say so: refine_stride = detect_stride)")
        return self


@dataclass(frozen=True)
class ExpressionSettings:
    model: Literal["fer7", "cowen16", "brooks288"]
    checkpoint: Optional[LocalFile]
    batch_size: PosInt


@dataclass(frozen=True)
class ContextSettings:
    mode: Literal["text_only", "experiment1"]
    taxonomy: NonEmpty
    head_checkpoint: Optional[LocalFile]
    visual_checkpoint: Optional[LocalFile]
    gate_checkpoint: Optional[LocalFile]
    cosine_threshold: Annotated[float, Field(ge=-1, le=1)]
    temperature: PosFloat
    store_threshold: Share
    store_top_k: PosInt
    batch_size: PosInt
    frame_size: PosInt
    label_cache_dir: Optional[NonEmpty]
    filter_labels: tuple[NonEmpty, ...]
    filter_taxonomies: tuple[NonEmpty, ...]

    @model_validator(mode="after")
    def _experiment1_needs_experts(self) -> "ContextSettings":
        missing = [name for name in ("visual_checkpoint", "gate_checkpoint") if getattr(self, name) is None]
        if self.mode == "experiment1" and missing:
            raise ValueError(f"mode 'experiment1' needs {' and '.join(missing)} (files), got null")
        return self


@dataclass(frozen=True)
class AnnotateSettings:
    partitions: PosInt
    videos_per_batch: PosInt
    device: Device
    retry_quarantined: bool
    retry_reasons: tuple[str, ...]
    video: VideoSettings
    faces: FaceSettings
    expression: ExpressionSettings
    context: ContextSettings


@dataclass(frozen=True)
class CcaSettings:
    balance: Literal["subsample", "reweight"]
    per_region: PosInt
    sample_seed: int
    ridge: NonNegFloat
    fit_region: RegionId
    fit_region_sample: Literal["all", "per_region"]
    bartlett: Literal["bartlett", "lawley"]
    bartlett_fdr: bool


@dataclass(frozen=True)
class FigureSettings:
    enabled: bool
    dir: NonEmpty
    contexts: Optional[tuple[str, ...]]
    n_contexts: PosInt
    dpi: PosInt


@dataclass(frozen=True)
class AnalyzeSettings:
    expression_model_version: Optional[str]
    context_model_version: Optional[str]
    taxonomy: Optional[str]
    expressions: Optional[tuple[str, ...]]
    replicates: NonNegInt
    seed: int
    occur_threshold: Share
    min_occurrences: NonNegInt
    min_occurrences_per_region: bool
    correlation: Literal["partial", "semipartial"]
    cca: CcaSettings
    geobin_min_videos: PosInt
    report_dir: NonEmpty
    report_results: tuple[NonEmpty, ...]
    partitions: PosInt
    broadcast_max_rows: NonNegInt
    batch_rows: PosInt
    chunk_rows: PosInt
    geobin_shards: PosInt
    figures: FigureSettings
    video_filter: bool
    prediction_per_region: NonNegInt


@dataclass(frozen=True)
class SimulateSettings:
    experiment: Literal[1, 2]
    seed: int
    regional_share: Share
    n_contexts: Optional[PosInt]
    prevalence_range: tuple[Share, Share]
    prevalence_regional_sd: NonNegFloat
    effect_scale: NonNegFloat
    region_weights: Optional[dict]
    data_dir: Optional[str]
    chunk_rows: PosInt
    slice_rows: PosInt

    @model_validator(mode="after")
    def _range_ordered(self) -> "SimulateSettings":
        low, high = self.prevalence_range
        if not low < high:
            raise ValueError(f"prevalence_range must be [low, high] with low < high, got [{low}, {high}]")
        return self


@dataclass(frozen=True)
class PpcaSettings:
    resamples: PosInt
    seed: int
    alpha: Annotated[float, Field(gt=0, lt=1)]
    snr: NonNegFloat
    rule: Literal["brooks", "bh_forwardstop_snr", "gppca_graph", "forwardstop", "bh", "none"]
    bh_dimensions: Optional[PosInt]
    gppca_bh: Literal["within_pair", "within_dimension"]
    kaiser: bool
    loading_resamples: Optional[NonNegInt]


@dataclass(frozen=True)
class IncrementalSettings:
    candidate_margin: NonNegFloat
    max_changed_fraction: Share
    driver_max_videos: NonNegInt


@dataclass(frozen=True)
class ReprocessSettings:
    lease_ttl_seconds: PosFloat
    lease_renew_share: Annotated[float, Field(ge=0, lt=1)]  # 1 would let a step start on an expiring lease
    wait_poll_seconds: PosFloat
    max_wait_seconds: Optional[NonNegFloat]
    max_videos: Optional[PosInt]


@dataclass(frozen=True)
class TrainSettings:
    epochs: PosInt
    batch_size: PosInt
    lr: PosFloat
    weight_decay: NonNegFloat
    step_size: PosInt
    gamma: PosFloat
    heldout_fraction: Annotated[float, Field(ge=0, lt=1)]
    seed: int
    amp: bool
    device: Device
    trunk_checkpoint: Optional[LocalFile]
    augment_flip: bool
    crop_size: PosInt
    image_max_side: PosInt
    windows_per_clip: PosInt
    crops_per_window: PosInt
    partitions: PosInt
    stimuli_per_batch: PosInt
    loader_workers: NonNegInt
    shuffle_buffer: NonNegInt


@dataclass(frozen=True)
class ReleaseSettings:
    total_epsilon: PosFloat
    total_delta: Annotated[float, Field(gt=0, lt=1)]
    correlation: Literal["partial", "semipartial"]
    max_contexts_per_video: PosInt
    min_occurrences: NonNegFloat
    count_share: Annotated[float, Field(gt=0, lt=1)]
    charge_attempts: PosInt


@dataclass(frozen=True)
class DemoSettings:
    analyze_overrides: dict
    simulated_videos: NonNegInt
    simulated_replicates: NonNegInt
    simulated_regional_share: Annotated[float, Field(ge=0, le=1)]


@dataclass(frozen=True)
class FailuresSettings:
    systemic_share: Annotated[float, Field(ge=0, lt=1)]
    systemic_min_inputs: PosInt
    not_failures: tuple[str, ...]
    log_dir: NonEmpty
    unfinished_results_hours: NonNegFloat


@dataclass(frozen=True)
class Settings:
    """The whole configuration. ``data_root`` is the root of every table and output (a path or a URI)."""

    data_root: NonEmpty
    spark: SparkSettings
    tables: TablesSettings
    catalog: CatalogSettings
    sql_server: SqlServerSettings
    regions: RegionsSettings
    geo: GeoSettings
    ingest: IngestSettings
    corpus: CorpusSettings
    annotate: AnnotateSettings
    analyze: AnalyzeSettings
    simulate: SimulateSettings
    ppca: PpcaSettings
    train: TrainSettings
    incremental: IncrementalSettings
    reprocess: ReprocessSettings
    release: ReleaseSettings
    demo: DemoSettings
    failures: FailuresSettings


# ---------------------------------------------------------------------------------------------------------------------
# Building settings from a mapping
# ---------------------------------------------------------------------------------------------------------------------
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def is_free_map(cls: type, name: str) -> bool:
    """True when field ``name`` of ``cls`` is a free-form mapping (any key allowed)."""
    tp, _ = _unwrap_optional(_hints(cls)[name])
    return tp is dict


def nested_class(cls: type, name: str) -> type | None:
    tp, _ = _unwrap_optional(_hints(cls)[name])
    return tp if dataclasses.is_dataclass(tp) else None


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def unknown_key_error(path: str, key: str, valid: list[str], source: str) -> ConfigError:
    full = f"{path}.{key}" if path else key
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{(path + '.') if path else ''}{near[0]}'?" if near else \
        f"; valid keys here: {', '.join(valid)}"
    return ConfigError(f"unknown setting '{full}' in {source}{hint}")


def check_keys(cls: type, data: Any, source: Any, path: str = "") -> None:
    """Refuse unknown keys (naming the nearest valid one), missing keys and non-mapping sections, along the schema.
    ``source`` is a string or a callable giving the source of a dotted key."""
    def src(key: str) -> str:
        return source(key) if callable(source) else source

    if not isinstance(data, Mapping):
        raise ConfigError(f"setting '{path}' in {src(path)} must be a mapping, got {type(data).__name__}")
    names = field_names(cls)
    for key in data:
        if key not in names:
            raise unknown_key_error(path, str(key), names, src(f"{path}.{key}" if path else str(key)))
    for name in names:
        where = f"{path}.{name}" if path else name
        if name not in data:
            raise ConfigError(f"missing setting '{where}' in {src(where)} (every setting has a default in the "
                              f"packaged conf/local.yaml; an overlay must not remove it)")
        sub = nested_class(cls, name)
        if sub is not None:
            check_keys(sub, data[name], source, where)


@functools.lru_cache(maxsize=None)
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def _allowed(error: Mapping[str, Any]) -> str:
    """What pydantic says is allowed, in the words of a setting ('must be greater than 0', "must be 'even' or ...")."""
    msg = str(error.get("msg", "invalid"))
    for prefix, new in (("Input should be ", "must be "), ("Value error, ", ""), ("String should ", "must ")):
        if msg.startswith(prefix):
            msg = new + msg[len(prefix):]
    return msg


def describe_validation_error(exc: ValidationError, data: Mapping[str, Any], source: Any) -> str:
    """One line naming the (first) bad setting, its value and what is allowed. ``source`` is a string, or a callable
    giving the source of a dotted key (where its value came from: default, overlay file, --set)."""
    error = exc.errors()[0]
    loc = [str(part) for part in error.get("loc", ()) if not isinstance(part, int)]
    index = [part for part in error.get("loc", ()) if isinstance(part, int)]
    key = ".".join(loc)
    node: Any = data
    for part in loc:  # the value as given (pydantic's copy of a nested section is the whole mapping)
        node = node.get(part) if isinstance(node, Mapping) else None
    where = source(key) if callable(source) else source
    if error.get("type") == "value_error" and isinstance(node, Mapping):  # a cross-field rule of a section
        return f"invalid settings '{key}' ({where}): {_allowed(error)}"
    value = node if node is not None or "input" not in error else error["input"]
    if error.get("type") == "missing" and index:
        return f"invalid setting {key}={value!r} ({where}): has too few items (item {index[0]} is missing)"
    item = f" (item {index[0]})" if index else ""
    return f"invalid setting {key}={value!r}{item} ({where}): {_allowed(error)}"


def build(cls: type, data: Mapping[str, Any], source: Any, path: str = "") -> Any:
    """Build settings class ``cls`` from ``data``: unknown and missing keys, then every value (types, ranges,
    enumerations, cross-field rules), are refused as one-line :class:`ConfigError`."""
    check_keys(cls, data, source, path)
    try:
        return _adapter(cls).validate_python(dict(data))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, data, source)) from None


def fingerprint(*parts: Any) -> str:
    """A short stable hash of settings (dataclasses, mappings, strings): what produced an output, as a version tag."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    text = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
