"""Configuration: the packaged defaults (``conf/local.yaml``), an optional overlay file, then command-line overrides.

Every path, size and threshold the jobs use comes from here, so a cluster run differs from the embedded default only
by its overlay (``conf/cluster.yaml`` holds just what differs) and ``--set key.path=value`` overrides, never by code.

Resolution order (later wins): packaged ``conf/local.yaml``; the overlay named by ``--conf`` / ``$CXATLAS_CONF``;
``$CXATLAS_DATA`` / ``--data`` (the data root); each ``--set a.b=c``. The merged mapping is checked against the
typed schema in :mod:`cxatlas.core.settings`: an unknown key fails naming the nearest valid one.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from cxatlas.core.settings import (ConfigError, Settings, build, field_names, is_free_map, nested_class,
                                   unknown_key_error)

ENV_CONF = "CXATLAS_CONF"
ENV_DATA = "CXATLAS_DATA"
DEFAULTS_FILE = "local.yaml"
# File settings that resolve against the folder of the config file that set them (not the working directory).
FILE_SETTINGS = ("regions.file", "spark.jars_dir")

__all__ = ["Config", "ConfigError", "load_config", "join_uri", "parse_override", "packaged_conf_dir"]


def packaged_conf_dir() -> Path:
    """The ``conf/`` folder shipped inside the installed package (``cxatlas.conf``)."""
    return Path(str(resources.files("cxatlas.conf")))


@dataclass
class Config:
    """The merged settings mapping (``data``) and its typed view (``settings``), kept in step by :meth:`set`."""

    data: dict[str, Any]
    source: str = "<memory>"
    overrides: list[str] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)  # dotted key -> where its value came from (not default)
    settings: Settings = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.settings = build(Settings, self.data, self.origin)

    def origin(self, dotted: str) -> str:
        """Where the value of ``dotted`` came from: ``--set ...``, ``--data``, an overlay file, or the default."""
        return origin_of(self.origins, dotted)

    def get(self, dotted: str) -> Any:
        """The raw value of a dotted key (for display); stages read the typed :attr:`settings`."""
        node: Any = self.data
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise ConfigError(f"missing setting '{dotted}' in {self.source}")
            node = node[part]
        return node

    def set(self, dotted: str, value: Any, source: str | None = None) -> None:
        """Set a dotted key, checked against the schema. Inside a free-form map (``spark.conf``) the rest of the
        path is one key, so ``--set spark.conf.spark.sql.shuffle.partitions=64`` does what it says."""
        data = copy.deepcopy(self.data)
        parts = dotted.split(".")
        node, cls, path = data, Settings, ""
        for i, part in enumerate(parts):
            names = field_names(cls)
            if part not in names:
                raise unknown_key_error(path, part, names, source or f"setting '{dotted}'")
            last = i == len(parts) - 1
            if last:
                node[part] = value
                break
            if is_free_map(cls, part):
                node[part] = dict(node.get(part) or {})
                node[part][".".join(parts[i + 1:])] = value
                break
            sub = nested_class(cls, part)
            if sub is None:
                raise ConfigError(f"cannot set '{dotted}': '{part}' is a value, not a section")
            node = node.setdefault(part, {})
            cls, path = sub, f"{path}.{part}" if path else part
        origins = {k: v for k, v in self.origins.items() if not (k == dotted or k.startswith(dotted + "."))}
        origins[dotted] = source or self.source
        self.settings = build(Settings, data, lambda key: origin_of(origins, key))
        self.data, self.origins = data, origins

    def path(self, dotted: str) -> str:
        """A file setting: absolute paths and URIs pass through; others resolve against the working directory."""
        value = str(self.get(dotted))
        if "://" in value or os.path.isabs(value):
            return value
        return str(Path(value).resolve())

    @property
    def data_root(self) -> str:
        """Root of all tables and run outputs; URIs (s3://, abfss://, hdfs://) pass through unchanged."""
        value = self.settings.data_root
        return value if "://" in value else str(Path(value).resolve())

    @property
    def table_root(self) -> str:
        return join_uri(self.data_root, self.settings.tables.dir)

    def copy(self) -> "Config":
        return Config(copy.deepcopy(self.data), self.source, list(self.overrides), dict(self.origins))

    def leaves(self) -> list[tuple[str, Any]]:
        """(dotted key, value) of every setting; an entry of a free-form map (``spark.conf``) is its own key."""
        return list(leaves(self.data))


def origin_of(origins: Mapping[str, str], dotted: str) -> str:
    """The source recorded for ``dotted`` or the nearest section above it; for a section, the sources below it;
    else the packaged defaults."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        found = origins.get(".".join(parts[:n]))
        if found:
            return found
    below = sorted({v for k, v in origins.items() if k.startswith(dotted + ".")}) if dotted else []
    return "; ".join(below) if below else f"default ({packaged_conf_dir() / DEFAULTS_FILE})"


def leaves(mapping: Mapping[str, Any], cls: type = Settings, prefix: str = ""):
    """(dotted key, value) of every setting in ``mapping``, along the schema."""
    for key, value in mapping.items():
        known = key in field_names(cls)
        sub = nested_class(cls, key) if known else None
        if sub is not None and isinstance(value, Mapping):
            yield from leaves(value, sub, f"{prefix}{key}.")
        elif known and is_free_map(cls, key) and isinstance(value, Mapping):
            for k, v in value.items():
                yield f"{prefix}{key}.{k}", v
        else:
            yield f"{prefix}{key}", value


def join_uri(root: str, *parts: str) -> str:
    """Join path parts onto a local path or a URI with '/'."""
    out = root.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=c`` -> (``a.b``, YAML-parsed ``c``), so numbers, booleans and lists keep their types."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:  # a value YAML cannot parse is kept as the literal string
        value = raw
    return key, value


def read_yaml(file: Path) -> dict[str, Any]:
    if not file.is_file():
        raise ConfigError(f"config file not found: {file}")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {file} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {file} must hold a mapping at the top level")
    for dotted in FILE_SETTINGS:  # a relative file setting means: next to the file that names it
        section, key = dotted.split(".")
        value = (data.get(section) or {}).get(key) if isinstance(data.get(section), dict) else None
        if isinstance(value, str) and "://" not in value and not os.path.isabs(value):
            data[section][key] = str((file.resolve().parent / value).resolve())
    return data


def merge(base: dict[str, Any], overlay: Mapping[str, Any], cls: type = Settings) -> dict[str, Any]:
    """Deep-merge ``overlay`` over ``base`` along the schema: sections merge key by key, values (and free-form maps
    such as ``spark.conf``, whose entries merge too) are replaced."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        sub = nested_class(cls, key) if key in field_names(cls) else None
        free = key in field_names(cls) and is_free_map(cls, key)
        if sub is not None and isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value, sub)
        elif free and isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path: str | os.PathLike[str] | None = None, *, data_root: str | None = None,
                overrides: Iterable[str] = ()) -> Config:
    """The packaged defaults, overlaid with ``path`` (default ``$CXATLAS_CONF``), the data root and ``overrides``."""
    defaults_file = packaged_conf_dir() / DEFAULTS_FILE
    data = read_yaml(defaults_file)
    source = str(defaults_file)
    origins: dict[str, str] = {}
    chosen = path or os.environ.get(ENV_CONF)
    if chosen:
        file = Path(chosen)
        overlay = read_yaml(file)
        source = str(file)
        if file.resolve() != defaults_file.resolve():
            data = merge(data, overlay)  # unknown keys in the overlay fail below, naming the file
            via = "--conf" if path else f"${ENV_CONF}"
            origins = {key: f"{via} {file}" for key, _ in leaves(overlay)}
    cfg = Config(data, source, origins=origins)
    root = data_root or os.environ.get(ENV_DATA)
    if root:
        cfg.set("data_root", root, source="--data" if data_root else f"${ENV_DATA}")
    for text in overrides:
        key, value = parse_override(text)
        cfg.set(key, value, source=f"--set {text}")
        cfg.overrides.append(text)
    return cfg
