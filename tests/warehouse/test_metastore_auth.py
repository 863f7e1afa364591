"""Only cxatlas opens a data root's metastore (issue #24): Derby authentication with a per-data-root password (0600),
no database created on a client's request, the password never on a command line."""
from __future__ import annotations

import glob
import os
import subprocess

import pytest

from cxatlas.warehouse.metastore import (DATABASE, IJ_CLASS, PASSWORD_FILE, derby_classpath, ensure_server,
                                    metastore_conf, stop_server)
from tests.conftest import make_config


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("ms-auth") / "data"
    cfg = make_config(data, "catalog.metastore_root=null", "catalog.derby_port=0")
    c, jars = cfg.settings.catalog, cfg.settings.spark.jars_dir
    started = ensure_server(cfg.data_root, c, jars)
    yield cfg, started
    stop_server(cfg.data_root, c, jars)
    assert not started.listening()


def ij(cfg, script: str) -> str:
    jars = cfg.settings.spark.jars_dir
    cp = os.pathsep.join([*derby_classpath(jars), *glob.glob(os.path.join(jars, "derbyclient-*.jar"))])
    done = subprocess.run(["java", "-cp", cp, IJ_CLASS], input=script + "\nexit;\n", capture_output=True, text=True,
                          timeout=120)
    return done.stdout + done.stderr


def test_a_client_without_the_credential_opens_and_creates_nothing(server, tmp_path):
    cfg, started = server
    home = started.home
    password_file = os.path.join(home, PASSWORD_FILE)
    assert started.user == "APP" and started.password_file == password_file
    for name in (PASSWORD_FILE, "derby.properties", "server.json"):
        assert os.stat(os.path.join(home, name)).st_mode & 0o777 == 0o600, name
    assert os.stat(home).st_mode & 0o777 == 0o700
    password = open(password_file).read().strip()
    base = f"jdbc:derby://{started.host}:{started.port}/"
    database = os.path.join(home, DATABASE)

    anonymous = ij(cfg, f"connect '{base}{database}';")
    assert "08004" in anonymous or "authentication" in anonymous.lower(), anonymous   # no user: refused
    guessed = ij(cfg, f"connect '{base}{database};user=APP;password=app';")
    assert "08004" in guessed, guessed
    evil = tmp_path / "evil_db"
    created = ij(cfg, f"connect '{base}{evil};create=true;user=mallory;password=x';")
    assert "08004" in created and not evil.exists(), created

    # The owner's process, with the credential, reads the Hive schema (and cxatlas's URL asks for no creation).
    conf = metastore_conf(cfg.data_root, cfg.settings.catalog, "unused", started)
    assert "create=true" not in conf["spark.hadoop.javax.jdo.option.ConnectionURL"]
    assert conf["spark.hadoop.javax.jdo.option.ConnectionPassword"] == password
    owner = ij(cfg, f"connect '{base}{database};user=APP;password={password}';\n"
                    "select count(*) from sys.systables;")
    assert "ERROR" not in owner and "1 row selected" in owner, owner
    # The password is in no log and no process list entry was needed to stop or create.
    for log in ("server.log", "derby.log"):
        path = os.path.join(home, log)
        assert not os.path.exists(path) or password not in open(path, errors="replace").read()
