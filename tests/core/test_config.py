"""Configuration: defaults defined once, overlays, unknown keys, --set for every key, typed values."""
from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cxatlas.core import settings as schema
from cxatlas.core.config import ConfigError, load_config, packaged_conf_dir

ROOT = Path(__file__).resolve().parents[2]


def leaves(mapping: dict, prefix: str = "", cls: type = schema.Settings):
    """(dotted key, value) of every setting, free-form maps counting as one value."""
    for key, value in mapping.items():
        sub = schema.nested_class(cls, key)
        if sub is not None and isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.", sub)
        else:
            yield f"{prefix}{key}", value


def test_packaged_defaults_cover_the_schema_exactly():
    cfg = load_config()
    assert isinstance(cfg.settings, schema.Settings)
    assert cfg.settings.annotate.faces.min_prob == 0.9 and cfg.settings.analyze.cca.per_region == 25_000


def test_every_default_is_defined_once_in_local_yaml():
    """No dataclass field has a default, and no code reads settings with a fallback literal."""
    with_defaults = [f"{cls.__name__}.{f.name}" for cls in vars(schema).values()
                     if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == schema.__name__
                     for f in dataclasses.fields(cls)
                     if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
    assert not with_defaults, with_defaults
    fallbacks = []
    for path in [*ROOT.glob("cxatlas/**/*.py"), *ROOT.glob("udfs/*.py"), *ROOT.glob("models/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("get", "section") and isinstance(node.func.value, ast.Name)
                    and node.func.value.id in ("cfg", "config", "section")):
                fallbacks.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not fallbacks, f"settings read around the typed schema: {fallbacks}"


def test_no_setting_exists_for_a_test():
    """Test hooks stay in the tests (tests/hooks/, fixtures): neither the schema nor the packaged defaults hold a
    fault-injection or other testing-only setting."""
    keys = [key for key, _ in leaves(yaml.safe_load((packaged_conf_dir() / "local.yaml").read_text()))]
    fields = [f"{cls.__name__}.{f.name}" for cls in vars(schema).values()
              if isinstance(cls, type) and dataclasses.is_dataclass(cls) for f in dataclasses.fields(cls)]
    hooks = [name for name in [*keys, *fields] if any(word in name.lower() for word in ("fault", "inject", "test_"))]
    assert not hooks, hooks
    assert "testing only" not in (packaged_conf_dir() / "local.yaml").read_text().lower()


def test_cluster_yaml_is_an_overlay_holding_only_what_differs():
    local = yaml.safe_load((packaged_conf_dir() / "local.yaml").read_text())
    cluster = yaml.safe_load((packaged_conf_dir() / "cluster.yaml").read_text())
    local_leaves = dict(leaves(local))
    same = []
    for key, value in leaves(cluster):
        if isinstance(value, dict):  # free-form maps merge entry by entry
            same += [f"{key}.{k}" for k, v in value.items() if local_leaves.get(key, {}).get(k) == v]
        elif key in local_leaves and local_leaves[key] == value:
            same.append(key)
    assert not same, f"cluster.yaml repeats defaults: {same}"
    cfg = load_config(packaged_conf_dir() / "cluster.yaml")
    assert cfg.settings.analyze.replicates == 200 and cfg.settings.analyze.seed == local["analyze"]["seed"]
    conf = cfg.settings.spark.conf
    assert conf["spark.sql.shuffle.partitions"] == 400 and conf["spark.sql.session.timeZone"] == "UTC"
    assert cfg.settings.annotate.expression.batch_size == 256 and cfg.settings.annotate.expression.model == "fer7"


def test_unknown_keys_fail_naming_the_nearest(tmp_path):
    overlay = tmp_path / "mine.yaml"
    overlay.write_text("annotate:\n  faces:\n    min_prb: 0.8\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'annotate.faces.min_prb' in .*mine.yaml; "
                                          r"did you mean 'annotate.faces.min_prob'\?"):
        load_config(overlay)
    with pytest.raises(ConfigError, match=r"unknown setting 'ingest.partitons'.*'ingest.partitions'"):
        load_config(overrides=["ingest.partitons=3"])
    with pytest.raises(ConfigError, match=r"ingest.partitions='many' .*must be a valid integer"):
        load_config(overrides=["ingest.partitions=many"])


def test_set_reaches_every_key_including_spark_conf():
    cfg = load_config(overrides=["spark.conf={}", "spark.conf.spark.sql.shuffle.partitions=4",
                                 "annotate.faces.mtcnn_thresholds=[0.5, 0.6, 0.7]", "analyze.cca.ridge=0.1"])
    assert cfg.settings.spark.conf == {"spark.sql.shuffle.partitions": 4}
    assert cfg.settings.annotate.faces.mtcnn_thresholds == (0.5, 0.6, 0.7)
    assert cfg.settings.analyze.cca.ridge == 0.1
    for key, value in leaves(cfg.data):  # every leaf can be set to its own value
        if not isinstance(value, dict):
            cfg.set(key, value)


def test_relative_file_settings_resolve_next_to_their_file(tmp_path):
    (tmp_path / "regions.csv").write_text((packaged_conf_dir() / "regions.csv").read_text())
    overlay = tmp_path / "site.yaml"
    overlay.write_text("regions:\n  file: regions.csv\n")
    assert load_config(overlay).settings.regions.file == str((tmp_path / "regions.csv").resolve())
    assert Path(load_config().settings.regions.file).is_file()


def test_cli_reports_a_bad_setting_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "cxatlas.cli", "--data", str(tmp_path), "--set",
                           "analyze.replicatez=3", "tables"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "cxatlas tables: error: unknown setting 'analyze.replicatez' in --set analyze.replicatez=3; "
        "did you mean 'analyze.replicates'?"]


def test_set_before_and_after_the_subcommand_both_apply():
    """argparse lets a subcommand's namespace overwrite the top level's: --set given on both sides must not lose the
    first ones (it did: a test run then used the default metastore port)."""
    from cxatlas.cli.main import build_parser, config_from_args

    args = build_parser().parse_args(["--set", "ingest.partitions=3", "runs", "--set", "annotate.partitions=5"])
    cfg = config_from_args(args)
    assert (cfg.settings.ingest.partitions, cfg.settings.annotate.partitions) == (3, 5)
