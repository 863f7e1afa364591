"""``cxatlas sql-server``: Spark's Thrift JDBC/ODBC server (HiveThriftServer2, shipped in pip's pyspark) over the
catalog, so beeline, DBeaver, Superset or any Hive DB-API client can query the tables and views.

The server runs inside this process's Spark session (``startWithContext``), with the same Delta jars and the same
metastore as the jobs; with the default Derby network server, jobs keep writing while it serves. It logs where it
listens and stops cleanly on SIGTERM or Ctrl-C.

Secure by default (README "Security"): the session loads cxatlas's SQL guard (``sqlguard/``, a Spark SQL extension
compiled by ``make install``), which checks every analysed plan once the catalog is registered: read-only queries over
the cxatlas database's tables and views, SHOW / DESCRIBE / USE / SET without a value, and with ``--allow-writes``
(``sql_server.allow_writes``) row writes into existing cxatlas tables; nothing else (no TRANSFORM, no files by path, no
DDL, no jars or functions, no reflection). Its settings are static Spark settings no client can change. The endpoint
listens on loopback unless ``--host`` / ``sql_server.host`` says otherwise, and beyond loopback (or with
``sql_server.authentication: password``) a client must give the data root's secret as its password (HiveServer2
CUSTOM authentication), kept in ``<metastore folder>/sql-server.secret``, readable by its owner only.
"""
from __future__ import annotations

import ipaddress
import logging
import signal
import threading
from pathlib import Path

from cxatlas.core.config import Config
from cxatlas.core.errors import UserError
from cxatlas.warehouse.catalog import register_catalog
from cxatlas.warehouse.credentials import ensure_secret
from cxatlas.warehouse.metastore import metastore_home
from cxatlas.warehouse.spark import build_spark
from cxatlas.warehouse.tables import TableStore

GUARD_EXTENSION = "cxatlas.sqlguard.SqlGuardExtension"
GUARD_CLASS = "cxatlas.sqlguard.SqlGuard"
AUTHENTICATOR = "cxatlas.sqlguard.SecretAuthenticator"
SECRET_FILE = "sql-server.secret"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def secret_path(cfg: Config) -> Path:
    """The endpoint's password file: in the data root's metastore folder (0700), next to the metastore's."""
    home = metastore_home(cfg.data_root, cfg.settings.catalog)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return home / SECRET_FILE


def guarded_conf(cfg: Config, host: str, port: int, allow_writes: bool, password: bool) -> dict:
    """The Spark settings of the endpoint's session: the guard, no SQL on files, one session per client, and the
    HiveServer2 endpoint (CUSTOM authentication with the data root's secret when ``password``)."""
    conf = dict(cfg.settings.spark.conf)
    extensions = [e for e in str(conf.get("spark.sql.extensions") or "").split(",") if e]
    conf.update({
        "spark.sql.extensions": ",".join([*extensions, GUARD_EXTENSION]),
        "spark.cxatlas.sqlguard.database": cfg.settings.catalog.database,
        "spark.cxatlas.sqlguard.allowWrites": str(bool(allow_writes)).lower(),
        "spark.cxatlas.sqlguard.tablesRoot": cfg.table_root,
        "spark.sql.runSQLOnFiles": "false",
        "spark.sql.hive.thriftServer.singleSession": "false",
        "spark.hadoop.hive.server2.thrift.port": port,
        "spark.hadoop.hive.server2.thrift.bind.host": host,
        "spark.hadoop.hive.server2.enable.doAs": "false",
        "spark.hadoop.hive.server2.authentication": "CUSTOM" if password else "NONE",
    })
    if password:
        path = secret_path(cfg)
        ensure_secret(path)
        conf.update({"spark.hadoop.hive.server2.custom.authentication.class": AUTHENTICATOR,
                     "spark.hadoop.cxatlas.sqlserver.secret.file": str(path)})
    return conf

log = logging.getLogger(__name__)


def serve(cfg: Config, host: str | None = None, port: int | None = None,
          ready: threading.Event | None = None, allow_writes: bool | None = None) -> int:
    """Start the Thrift server on ``host:port`` (default ``sql_server.*``) and block until SIGTERM/SIGINT."""
    s = cfg.settings.sql_server
    host = host or s.host
    port = int(port or s.port)
    allow_writes = s.allow_writes if allow_writes is None else allow_writes
    password = s.authentication == "password" or not is_loopback(host)
    cfg = cfg.copy()
    # HiveThriftServer2 reads its endpoint from the Hadoop configuration the session is built with.
    cfg.set("spark.conf", guarded_conf(cfg, host, port, allow_writes, password))
    spark = build_spark(cfg, "-sql-server")
    jvm = spark.sparkContext._jvm
    try:
        jvm.java.lang.Class.forName(GUARD_CLASS)
    except Exception:  # noqa: BLE001 - py4j wraps ClassNotFoundException
        spark.stop()
        raise UserError(f"the SQL guard ({GUARD_CLASS}) is not in spark.jars_dir={cfg.settings.spark.jars_dir}: run "
                        f"`make install` (or `make sqlguard`)") from None
    if password:
        # HiveServer2 builds its CUSTOM provider from a fresh HiveConf, which reads Java system properties only.
        for key in ("hive.server2.custom.authentication.class", "cxatlas.sqlserver.secret.file"):
            jvm.java.lang.System.setProperty(key, cfg.settings.spark.conf[f"spark.hadoop.{key}"])
    store = TableStore.from_config(spark, cfg)
    names = register_catalog(store)
    jvm.cxatlas.sqlguard.SqlGuard.arm()  # from here on every plan of every session is checked
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        jvm.org.apache.spark.sql.hive.thriftserver.HiveThriftServer2.startWithContext(
            spark._jsparkSession.sqlContext())
        print(f"cxatlas sql-server: listening on jdbc:hive2://{host}:{port}/{store.database} "
              f"({len(names)} tables and views in database {store.database}); "
              f"{'read and write' if allow_writes else 'read-only'}; "
              + (f"password: the secret in {secret_path(cfg)}" if password else "no password (loopback only)")
              + "; stop with SIGTERM or Ctrl-C", flush=True)
        if ready is not None:
            ready.set()
        while not stop.wait(1.0):
            pass
        print("cxatlas sql-server: stopping", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        spark.stop()
    print("cxatlas sql-server: stopped", flush=True)
    return 0
