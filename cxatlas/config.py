"""Configuration: YAML files in ``conf/`` plus command-line and environment overrides.

Every path, size and threshold the jobs use comes from here, so a cluster run differs from the embedded default only
by its config file (``conf/cluster.yaml``) and ``--set key.path=value`` overrides, never by code.

Resolution order (later wins): packaged ``conf/local.yaml`` or the file named by ``--conf`` / ``$CXATLAS_CONF``,
then ``$CXATLAS_DATA`` / ``--data`` (the data root), then each ``--set a.b=c``.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

ENV_CONF = "CXATLAS_CONF"
ENV_DATA = "CXATLAS_DATA"


class ConfigError(ValueError):
    """A configuration file or override is malformed or a required setting is missing."""


def packaged_conf_dir() -> Path:
    """The ``conf/`` folder shipped inside the installed package (``cxatlas.conf``)."""
    return Path(str(resources.files("cxatlas.conf")))


@dataclass
class Config:
    """A nested settings mapping with dotted access (``cfg.get("tables.root")``).

    ``base_dir`` is the folder of the YAML file; relative *file* settings (e.g. ``regions.file``) resolve against it,
    while the data root resolves against the working directory, as users expect of ``./data``.
    """

    data: dict[str, Any]
    base_dir: Path
    source: str = "<memory>"
    overrides: list[str] = field(default_factory=list)

    def get(self, dotted: str, default: Any = ...) -> Any:
        node: Any = self.data
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                if default is ...:
                    raise ConfigError(f"missing setting '{dotted}' in {self.source}")
                return default
            node = node[part]
        return node

    def section(self, dotted: str) -> dict[str, Any]:
        value = self.get(dotted, {})
        if not isinstance(value, Mapping):
            raise ConfigError(f"setting '{dotted}' in {self.source} must be a mapping, got {type(value).__name__}")
        return dict(value)

    def set(self, dotted: str, value: Any) -> None:
        """Set a dotted key. Inside a flat mapping of dotted names (``spark.conf``) the rest is one key, so
        ``--set spark.conf.spark.sql.shuffle.partitions=64`` does what it says."""
        parts = dotted.split(".")
        node = self.data
        for i, part in enumerate(parts[:-1]):
            if _is_flat(node) and node is not self.data:
                node[".".join(parts[i:])] = value
                return
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"cannot set '{dotted}': '{part}' is not a mapping")
        node[parts[-1]] = value

    def path(self, dotted: str) -> str:
        """A file setting, resolved against the config file's folder unless absolute or a URI."""
        value = str(self.get(dotted))
        if "://" in value or os.path.isabs(value):
            return value
        return str((self.base_dir / value).resolve())

    @property
    def data_root(self) -> str:
        """Root of all tables and run outputs; URIs (s3://, abfss://, hdfs://) pass through unchanged."""
        value = str(self.get("data_root"))
        return value if "://" in value else str(Path(value).resolve())

    @property
    def table_root(self) -> str:
        return join_uri(self.data_root, str(self.get("tables.dir", "tables")))

    def copy(self) -> "Config":
        return Config(copy.deepcopy(self.data), self.base_dir, self.source, list(self.overrides))


def _is_flat(node: Any) -> bool:
    """A mapping whose keys are themselves dotted names (Spark settings)."""
    return isinstance(node, dict) and any("." in str(k) for k in node)


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
    except yaml.YAMLError as exc:  # a value YAML cannot parse is kept as the literal string
        value = raw
        del exc
    return key, value


def load_config(path: str | os.PathLike[str] | None = None, *, data_root: str | None = None,
                overrides: Iterable[str] = ()) -> Config:
    """Load a config file (default: ``$CXATLAS_CONF`` or the packaged ``local.yaml``) and apply overrides."""
    chosen = path or os.environ.get(ENV_CONF)
    file = Path(chosen) if chosen else packaged_conf_dir() / "local.yaml"
    if not file.is_file():
        raise ConfigError(f"config file not found: {file}")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {file} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {file} must hold a mapping at the top level")
    cfg = Config(data, file.resolve().parent, str(file))
    root = data_root or os.environ.get(ENV_DATA)
    if root:
        cfg.set("data_root", root)
    for text in overrides:
        key, value = parse_override(text)
        cfg.set(key, value)
        cfg.overrides.append(text)
    return cfg
