"""The Hive metastore of the embedded default: Derby, served by Derby's own network server, one server per data root.

Why a server: an embedded Derby database admits one process at a time, yet jobs must keep writing while analysts
query the catalog through ``cxatlas sql-server``. Derby's network server (``derbynet``, fetched from Maven Central
with Delta's jars, the same Derby version as the embedded one inside pyspark) lets every Spark process of a data root
open its metastore at once.

Why one server per data root (no machine-wide shared state): each data root's metastore folder
(``<data_root>/<catalog.metastore_dir>``, or ``<catalog.metastore_root>/<metastore_dir>`` when several data roots
are meant to share one catalog, as the test suite does) holds its own Derby database, its own server's home
(``derby.log``, ``server.log``) and ``server.json``, the record of the server that serves it: host, port (a free
one picked at start when ``catalog.derby_port`` is 0, the default), pid and start time. Every process of that data
root reads the record to connect; ``cxatlas --data B metastore stop`` shuts down only the server B's record names, so
a job on data root A never loses its metastore to another user's command, and two checkouts never collide on a port.
Starting is serialised by a file lock in the folder, so concurrent jobs of one data root start one server.

The folder is created readable by its owner only (0700) and the record is written 0600: it is where a per-data-root
credential for the server (Derby authentication) belongs, next to the server it protects; ``MetastoreServer.user``
and ``password_file`` are carried through to the JDBC settings when present (written by the server's owner).

Only cxatlas reaches the metastore (issue #24): a server is started with Derby's BUILTIN authentication required
(``derby.properties`` in its home, 0600), its one user ``APP`` (the schema the Hive tables live in) with a password
generated for the data root (``metastore.password``, 0600, :func:`cxatlas.warehouse.credentials.ensure_secret`), and the
database is created by the server's owner before the server starts: the JDBC URL of the jobs never says
``create=true``, and a client without the password opens nothing and creates nothing. The password reaches Spark as
``javax.jdo.option.ConnectionPassword`` (redacted by Spark; ``cxatlas sql-server`` refuses to show it) and the
shutdown command through a 0600 argument file, never on a command line.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import logging
import os
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator

from cxatlas.core.errors import UserError
from cxatlas.core.settings import CatalogSettings
from cxatlas.warehouse.credentials import ensure_secret

log = logging.getLogger(__name__)
SERVER_CLASS = "org.apache.derby.drda.NetworkServerControl"
CLIENT_DRIVER = "org.apache.derby.jdbc.ClientDriver"
START_TIMEOUT_S = 120.0
RECORD = "server.json"
DATABASE = "metastore_db"
USER = "APP"                          # Derby's default schema: where the Hive metastore's tables already live
PASSWORD_FILE = "metastore.password"
IJ_CLASS = "org.apache.derby.tools.ij"


@dataclass(frozen=True)
class MetastoreServer:
    """The Derby network server of one data root, as recorded in ``<home>/server.json``."""

    host: str
    port: int
    home: str
    pid: int | None = None
    started: float | None = None
    user: str | None = None            # reserved for a per-data-root credential (Derby authentication)
    password_file: str | None = None   # a file readable by the owner only, next to the record
    stopped: float | None = None       # when `cxatlas metastore stop` shut it down
    started_now: bool = False          # not recorded: whether this process started it

    def listening(self) -> bool:
        return is_listening(self.host, self.port)

    def alive(self) -> bool:
        """The recorded process exists (on this host) and the port answers."""
        if self.stopped is not None:
            return False
        if self.pid is not None:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                pass
        return self.listening()

    def describe(self) -> str:
        return f"{self.host}:{self.port} (pid {self.pid}, {self.home})"


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


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def metastore_home(data_root: str, settings: CatalogSettings) -> Path:
    """The folder of a data root's metastore: its Derby database, server home and record."""
    root = settings.metastore_root or data_root
    if "://" in root:
        raise UserError(f"catalog.metastore: {settings.metastore} keeps the metastore in a local folder, but the data "
                        f"root is {root}: set catalog.metastore_root to a local folder, or catalog.metastore: external")
    return Path(root).resolve() / settings.metastore_dir


def read_record(home: Path) -> MetastoreServer | None:
    try:
        data = json.loads((home / RECORD).read_text())
        return MetastoreServer(**{k: v for k, v in data.items() if k in MetastoreServer.__dataclass_fields__})
    except (OSError, ValueError, TypeError):
        return None


def _write_record(server: MetastoreServer) -> None:
    path = Path(server.home) / RECORD
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    data = {k: v for k, v in asdict(server).items() if k != "started_now"}
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    with open(home / "server.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def server_of(data_root: str, settings: CatalogSettings) -> MetastoreServer | None:
    """The recorded server of a data root (alive or not), or None when none was ever started there."""
    try:
        return read_record(metastore_home(data_root, settings))
    except UserError:
        return None


def ensure_server(data_root: str, settings: CatalogSettings, jars_dir: str | None) -> MetastoreServer:
    """The running server of this data root, started (and recorded) when there is none; ``started_now`` says which."""
    home = metastore_home(data_root, settings)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _locked(home):
        recorded = read_record(home)
        if recorded is not None and recorded.alive():
            return recorded
        password = _require_authentication(home)
        _create_database(home, jars_dir, password)
        host = settings.derby_host
        port = settings.derby_port or _free_port(host)
        if settings.derby_port and is_listening(host, port):
            raise UserError(f"catalog.derby_port {port} on {host} is taken by another process (another data root's "
                            f"metastore?); set catalog.derby_port: 0 to give every data root a free port of its own")
        cmd = ["java", "-cp", os.pathsep.join(derby_classpath(jars_dir)), f"-Dderby.system.home={home}",
               "-Dderby.drda.startNetworkServer=true", SERVER_CLASS, "start", "-h", host, "-p", str(port),
               "-noSecurityManager"]
        log.info("starting the Derby metastore server of %s on %s:%d (log: %s)", data_root, host, port,
                 home / "server.log")
        deadline = time.time() + START_TIMEOUT_S
        process = None
        while not is_listening(host, port):
            if process is None or process.poll() is not None:
                # (Re)start: right after a shutdown a fixed port can still be held by closing connections a while.
                with open(home / "server.log", "ab") as out:
                    process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                               start_new_session=True)  # outlives us: other jobs, the SQL server
            if time.time() > deadline:
                raise UserError(f"the Derby metastore server did not start on {host}:{port} within "
                                f"{START_TIMEOUT_S:.0f}s; see {home / 'server.log'}")
            time.sleep(0.3)
        server = MetastoreServer(host, port, str(home), process.pid if process else None, time.time(),
                                 user=USER, password_file=str(home / PASSWORD_FILE), started_now=True)
        _write_record(server)
        return server


def _require_authentication(home: Path) -> str:
    """The data root's metastore password (generated on first use) and the server's ``derby.properties`` requiring
    it; returns the password."""
    password = ensure_secret(home / PASSWORD_FILE)
    text = ("# Written by cxatlas (cxatlas/warehouse/metastore.py): only the data root's owner opens this metastore.\n"
            "derby.connection.requireAuthentication=true\nderby.authentication.provider=BUILTIN\n"
            f"derby.user.{USER}={password}\n")
    fd = os.open(home / "derby.properties", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return password


def _run_java(home: Path, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    """``java`` with its arguments in a 0600 argument file (``java @file``): a password among them never shows in
    the process list."""
    argfile = home / f".java-args.{os.getpid()}"
    fd = os.open(argfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(f'"{a}"' if " " in a else a for a in args) + "\n")
    try:
        return subprocess.run(["java", f"@{argfile}"], input=stdin, check=False, capture_output=True, text=True,
                              timeout=120)
    finally:
        argfile.unlink(missing_ok=True)


def _create_database(home: Path, jars_dir: str | None, password: str) -> None:
    """Create the data root's Derby database (embedded, before its server starts) when it does not exist yet, so
    that no client ever has to ask the server to create one."""
    if (home / DATABASE).exists():
        return
    done = _run_java(home, ["-cp", os.pathsep.join(derby_classpath(jars_dir)), f"-Dderby.system.home={home}",
                            f"-Dderby.stream.error.file={home / 'derby.log'}", IJ_CLASS],
                     stdin=f"connect 'jdbc:derby:{DATABASE};create=true;user={USER};password={password}';\nexit;\n")
    if done.returncode != 0 or "ERROR" in done.stdout or not (home / DATABASE).exists():
        raise UserError(f"could not create the metastore database in {home}: "
                        f"{(done.stdout + done.stderr).replace(password, '***').strip()[-300:]}")


def stop_server(data_root: str, settings: CatalogSettings, jars_dir: str | None) -> MetastoreServer | None:
    """Shut down the server recorded for THIS data root (never another's); None when none was running."""
    home = metastore_home(data_root, settings)
    recorded = read_record(home)
    if recorded is None or not recorded.alive():
        return None
    args = ["-cp", os.pathsep.join(derby_classpath(jars_dir)), SERVER_CLASS, "shutdown", "-h", recorded.host, "-p",
            str(recorded.port)]
    if recorded.user and recorded.password_file:
        args += ["-user", recorded.user, "-password", Path(recorded.password_file).read_text().strip()]
    _run_java(home, args)
    deadline = time.time() + 30
    while recorded.listening() and time.time() < deadline:
        time.sleep(0.2)
    _write_record(replace(recorded, stopped=time.time()))
    return recorded


def metastore_conf(data_root: str, settings: CatalogSettings, warehouse_path: str,
                   server: MetastoreServer | None = None) -> dict[str, str]:
    """Spark settings that point the Hive metastore client at this data root's Derby database (through ``server``,
    its network server, for ``derby-server``)."""
    conf = {"spark.sql.catalogImplementation": "hive", "spark.sql.warehouse.dir": warehouse_path}
    if settings.metastore == "external":
        return conf
    database = metastore_home(data_root, settings) / DATABASE
    if settings.metastore == "derby-server":
        if server is None:
            raise UserError(f"the metastore server of {data_root} is not running (`cxatlas metastore start`)")
        # A server with a credential serves a database its owner created: never ask it to create one.
        url = f"jdbc:derby://{server.host}:{server.port}/{database}" + ("" if server.user else ";create=true")
        conf.update({"spark.hadoop.javax.jdo.option.ConnectionURL": url,
                     "spark.hadoop.javax.jdo.option.ConnectionDriverName": CLIENT_DRIVER})
        if server.user:
            conf["spark.hadoop.javax.jdo.option.ConnectionUserName"] = server.user
            if server.password_file:
                conf["spark.hadoop.javax.jdo.option.ConnectionPassword"] = Path(server.password_file).read_text().strip()
    else:
        conf["spark.hadoop.javax.jdo.option.ConnectionURL"] = f"jdbc:derby:;databaseName={database};create=true"
    return conf
