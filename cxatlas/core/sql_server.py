"""``cxatlas sql-server``: Spark's Thrift JDBC/ODBC server (HiveThriftServer2, shipped in pip's pyspark) over the
catalog, so beeline, DBeaver, Superset or any Hive DB-API client can query the tables and views.

The server runs inside this process's Spark session (``startWithContext``), with the same Delta jars and the same
metastore as the jobs; with the default Derby network server, jobs keep writing while it serves. It logs where it
listens and stops cleanly on SIGTERM or Ctrl-C.
"""
from __future__ import annotations

import logging
import signal
import threading

from cxatlas.core.catalog import register_catalog
from cxatlas.core.config import Config
from cxatlas.core.spark import build_spark
from cxatlas.core.tables import TableStore

log = logging.getLogger(__name__)


def serve(cfg: Config, host: str | None = None, port: int | None = None,
          ready: threading.Event | None = None) -> int:
    """Start the Thrift server on ``host:port`` (default ``sql_server.*``) and block until SIGTERM/SIGINT."""
    host = host or cfg.settings.sql_server.host
    port = int(port or cfg.settings.sql_server.port)
    cfg = cfg.copy()
    # HiveThriftServer2 reads its endpoint from the Hadoop configuration the session is built with.
    cfg.set("spark.conf", {**cfg.settings.spark.conf, "spark.hadoop.hive.server2.thrift.port": port,
                           "spark.hadoop.hive.server2.thrift.bind.host": host})
    spark = build_spark(cfg, "-sql-server")
    store = TableStore.from_config(spark, cfg)
    names = register_catalog(store)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        jvm = spark.sparkContext._jvm
        jvm.org.apache.spark.sql.hive.thriftserver.HiveThriftServer2.startWithContext(
            spark._jsparkSession.sqlContext())
        print(f"cxatlas sql-server: listening on jdbc:hive2://{host}:{port}/{store.database} "
              f"({len(names)} tables and views in database {store.database}); stop with SIGTERM or Ctrl-C",
              flush=True)
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
