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
import hashlib
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

from cxatlas.core.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration file or override is malformed, names an unknown setting, or lacks a required one."""


# ---------------------------------------------------------------------------------------------------------------------
# The schema (see conf/local.yaml for what each setting means and its default)
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SparkSettings:
    master: Optional[str]
    app_name: str
    conf: dict
    log_level: str
    jars_dir: Optional[str]


@dataclass(frozen=True)
class TablesSettings:
    dir: str
    target_file_rows: int
    vacuum_retention_hours: float
    conflict_retries: int


@dataclass(frozen=True)
class CatalogSettings:
    database: str
    metastore: str
    derby_host: str
    derby_port: int
    metastore_dir: str
    warehouse_dir: str


@dataclass(frozen=True)
class SqlServerSettings:
    host: str
    port: int


@dataclass(frozen=True)
class RegionsSettings:
    file: str


@dataclass(frozen=True)
class GeoSettings:
    bin_deg: float
    max_distance_km: float
    border_tolerance_km: float
    max_offshore_km: Optional[float]
    offshore_neighbours: int


@dataclass(frozen=True)
class IngestSettings:
    partitions: int
    max_title_chars: int
    max_description_chars: int
    allow_extra_columns: bool
    csv_multiline: bool


@dataclass(frozen=True)
class CorpusSettings:
    videos: int
    seed: int
    taxonomy: str


@dataclass(frozen=True)
class VideoSettings:
    fps: float
    window_seconds: float
    max_windows: int
    placement: str
    max_side: int
    min_frames: int
    seek_threshold_s: float
    min_decoded_fraction: Optional[float]


@dataclass(frozen=True)
class FaceSettings:
    min_face_size: int
    min_prob: float
    mtcnn_thresholds: tuple
    mtcnn_factor: float
    detect_batch_size: int
    min_track_frames: int
    detect_stride: int
    iou_threshold: float
    max_missed: int
    crop_size: int
    margin: float
    smooth_frames: int


@dataclass(frozen=True)
class ExpressionSettings:
    model: str
    checkpoint: Optional[str]
    batch_size: int


@dataclass(frozen=True)
class ContextSettings:
    mode: str
    taxonomy: str
    head_checkpoint: Optional[str]
    visual_checkpoint: Optional[str]
    gate_checkpoint: Optional[str]
    cosine_threshold: float
    temperature: float
    store_threshold: float
    store_top_k: int
    batch_size: int
    frame_size: int


@dataclass(frozen=True)
class AnnotateSettings:
    partitions: int
    videos_per_batch: int
    device: str
    retry_quarantined: bool
    retry_reasons: tuple
    video: VideoSettings
    faces: FaceSettings
    expression: ExpressionSettings
    context: ContextSettings
    fault_video_ids: tuple


@dataclass(frozen=True)
class CcaSettings:
    balance: str
    per_region: int
    sample_seed: int
    ridge: float
    fit_region: str
    fit_region_sample: str
    bartlett: str
    bartlett_fdr: bool


@dataclass(frozen=True)
class FigureSettings:
    enabled: bool
    dir: str
    contexts: Optional[tuple]
    n_contexts: int
    dpi: int


@dataclass(frozen=True)
class AnalyzeSettings:
    expression_model_version: Optional[str]
    context_model_version: Optional[str]
    taxonomy: Optional[str]
    expressions: Optional[tuple]
    replicates: int
    seed: int
    occur_threshold: float
    min_occurrences: int
    min_occurrences_per_region: bool
    correlation: str
    cca: CcaSettings
    geobin_min_videos: int
    report_dir: str
    partitions: int
    broadcast_max_rows: int
    batch_rows: int
    chunk_rows: int
    geobin_shards: int
    figures: FigureSettings


@dataclass(frozen=True)
class SimulateSettings:
    experiment: int
    seed: int
    regional_share: float
    n_contexts: Optional[int]
    prevalence_range: tuple
    prevalence_regional_sd: float
    effect_scale: float
    region_weights: Optional[dict]
    data_dir: Optional[str]
    chunk_rows: int
    slice_rows: int


@dataclass(frozen=True)
class PpcaSettings:
    resamples: int
    seed: int
    alpha: float
    snr: float


@dataclass(frozen=True)
class IncrementalSettings:
    candidate_margin: float
    max_changed_fraction: float
    driver_max_videos: int


@dataclass(frozen=True)
class ReprocessSettings:
    lease_ttl_seconds: float
    wait_poll_seconds: float
    max_wait_seconds: Optional[float]
    max_videos: Optional[int]


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    step_size: int
    gamma: float
    heldout_fraction: float
    seed: int
    amp: bool
    device: str
    trunk_checkpoint: Optional[str]
    augment_flip: bool
    crop_size: int
    image_max_side: int
    windows_per_clip: int
    crops_per_window: int
    partitions: int
    stimuli_per_batch: int
    loader_workers: int
    shuffle_buffer: int


@dataclass(frozen=True)
class DemoSettings:
    analyze_overrides: dict
    simulated_videos: int
    simulated_replicates: int


@dataclass(frozen=True)
class Settings:
    """The whole configuration. ``data_root`` is the root of every table and output (a path or a URI)."""

    data_root: str
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
    demo: DemoSettings


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


def _coerce(value: Any, tp: Any, where: str) -> Any:
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"setting '{where}' must not be null")
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise ValueError(value)
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if tp is str:
            return str(value)
        if tp is tuple:
            if isinstance(value, (list, tuple)):
                return tuple(_freeze(v) for v in value)
            raise ValueError(value)
        if tp is dict:
            if isinstance(value, Mapping):
                return dict(value)
            raise ValueError(value)
    except (TypeError, ValueError):
        name = getattr(tp, "__name__", str(tp))
        raise ConfigError(f"setting '{where}' must be {name}{' or null' if optional else ''}, "
                          f"got {value!r}") from None
    return value


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def build(cls: type, data: Mapping[str, Any], source: str, path: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``: unknown keys and missing keys are :class:`ConfigError`."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"setting '{path}' in {source} must be a mapping, got {type(data).__name__}")
    names = field_names(cls)
    for key in data:
        if key not in names:
            raise unknown_key_error(path, str(key), names, source)
    values = {}
    hints = _hints(cls)
    for name in names:
        where = f"{path}.{name}" if path else name
        if name not in data:
            raise ConfigError(f"missing setting '{where}' in {source} (every setting has a default in the packaged "
                              f"conf/local.yaml; an overlay must not remove it)")
        sub = nested_class(cls, name)
        values[name] = build(sub, data[name], source, where) if sub else _coerce(data[name], hints[name], where)
    return cls(**values)


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
