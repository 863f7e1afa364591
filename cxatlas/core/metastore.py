"""The Hive metastore of the embedded default: Derby, served by Derby's own network server.

Why a server: an embedded Derby database admits one process at a time, yet jobs must keep writing while analysts
query the catalog through ``cxatlas sql-server``. Derby's network server (``derbynet``, fetched from Maven Central
with Delta's jars, the same Derby version as the embedded one inside pyspark) lets every Spark process on the machine
open the metastore of a data root at once. It is started on first use, listens on loopback only
(``catalog.derby_host``/``derby_port``), serves the metastore of every data root (each is its own Derby database,
``<data_root>/<catalog.metastore_dir>``), and keeps running until ``cxatlas metastore stop``.
"""
from __future__ import annotations

import glob
import logging
import os
import socket
import subprocess
import time
from pathlib import Path

from cxatlas.core.errors import UserError
from cxatlas.core.settings import CatalogSettings

log = logging.getLogger(__name__)
SERVER_CLASS = "org.apache.derby.drda.NetworkServerControl"
CLIENT_DRIVER = "org.apache.derby.jdbc.ClientDriver"
START_TIMEOUT_S = 120.0


def pyspark_jars_dir() -> Path:
    """Spark's own jars (``$SPARK_HOME/jars``; under spark-submit pyspark itself is imported from a zip)."""
    from pyspark.find_spark_home import _find_spark_home

    return Path(_find_spark_home()) / "jars"


def derby_classpath(jars_dir: str | None) -> list[str]:
    """The jars of the Derby network server: derbynet (fetched) with derby, derbyshared and derbytools (pyspark's)."""
    fetched = sorted(glob.glob(os.path.join(jars_dir or "", "derbynet-*.jar")))
    if not jars_dir or not fetched:
        raise UserError(f"the Derby network server jar (org.apache.derby:derbynet) is not in {jars_dir}: run "
                        f"`make jars` (conf/jars.txt), or set catalog.metastore: embedded")
    bundled = [str(p) for p in sorted(pyspark_jars_dir().glob("derby*.jar"))]
    return [*fetched, *bundled]


def is_listening(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def server_home(settings: CatalogSettings) -> Path:
    """Where the server writes its log (``derby.log``); per user, not per data root: one server serves them all."""
    home = Path(os.environ.get("CXATLAS_DERBY_HOME", Path.home() / ".cxatlas" / "derby"))
    home.mkdir(parents=True, exist_ok=True)
    return home


def ensure_server(settings: CatalogSettings, jars_dir: str | None) -> bool:
    """Start the Derby network server unless one already listens; True when this call started it."""
    host, port = settings.derby_host, settings.derby_port
    if is_listening(host, port):
        return False
    home = server_home(settings)
    cmd = ["java", "-cp", os.pathsep.join(derby_classpath(jars_dir)), f"-Dderby.system.home={home}",
           "-Dderby.drda.startNetworkServer=true", SERVER_CLASS, "start", "-h", host, "-p", str(port),
           "-noSecurityManager"]
    log.info("starting the Derby metastore server on %s:%d (log: %s)", host, port, home / "server.log")
    deadline = time.time() + START_TIMEOUT_S
    server = None
    while not is_listening(host, port):
        if server is None or server.poll() is not None:
            # (Re)start: right after a shutdown the port can still be held by closing connections for a minute.
            with open(home / "server.log", "ab") as out:
                server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)  # outlives us: other jobs and the SQL server
        if time.time() > deadline:
            raise UserError(f"the Derby metastore server did not start on {host}:{port} within {START_TIMEOUT_S:.0f}s; "
                            f"see {home / 'server.log'} (is the port taken? set catalog.derby_port)")
        time.sleep(0.5)
    return True


def stop_server(settings: CatalogSettings, jars_dir: str | None) -> bool:
    """Shut the Derby network server down; False when none was listening."""
    host, port = settings.derby_host, settings.derby_port
    if not is_listening(host, port):
        return False
    subprocess.run(["java", "-cp", os.pathsep.join(derby_classpath(jars_dir)), SERVER_CLASS, "shutdown", "-h", host,
                    "-p", str(port)], check=False, capture_output=True, timeout=60)
    deadline = time.time() + 30
    while is_listening(host, port) and time.time() < deadline:
        time.sleep(0.2)
    return True


def metastore_conf(settings: CatalogSettings, metastore_path: str, warehouse_path: str) -> dict[str, str]:
    """Spark settings that point the Hive metastore client at this data root's Derby database."""
    conf = {"spark.sql.catalogImplementation": "hive", "spark.sql.warehouse.dir": warehouse_path}
    if settings.metastore == "derby-server":
        url = f"jdbc:derby://{settings.derby_host}:{settings.derby_port}/{metastore_path};create=true"
        conf.update({"spark.hadoop.javax.jdo.option.ConnectionURL": url,
                     "spark.hadoop.javax.jdo.option.ConnectionDriverName": CLIENT_DRIVER})
    elif settings.metastore == "embedded":
        conf["spark.hadoop.javax.jdo.option.ConnectionURL"] = f"jdbc:derby:;databaseName={metastore_path};create=true"
    elif settings.metastore != "external":
        raise UserError(f"catalog.metastore must be derby-server, embedded or external, got {settings.metastore!r}")
    return conf
