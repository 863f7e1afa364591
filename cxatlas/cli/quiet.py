"""Hide Spark's start-up chatter from the command line's stderr unless ``-v``.

Why at the file-descriptor level: the lines come from the JVM that pyspark launches as a child process (a JVM module
note, log4j's "default profile" banner, the hostname and native-library WARNs), written straight to the inherited
stderr, where neither Python logging nor ``sc.setLogLevel`` can reach them. The same holds for the Hive metastore
client's notes when it opens the catalog. The CLI points fd 2 at a pipe for the duration of a command and forwards
every line except those known notes, so real warnings and errors, from
Python or the JVM, still reach the user.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from typing import Iterator

STARTUP_NOTES = re.compile(
    r"^(WARNING: Using incubator modules: |Using Spark's default log4j profile: |Setting default log level to |"
    r"To adjust logging level use sc\.setLogLevel|"
    r"\S+ \S+ WARN (Utils: (Your hostname|Set SPARK_LOCAL_IP)|NativeCodeLoader: Unable to load native-hadoop|"
    # The Hive metastore client's notes when it opens or creates a metastore, and Delta tables it stores in Spark's
    # own format (which is what we want: Hive itself cannot read Delta).
    r"ObjectStore: (Version information not found|setMetaStoreSchemaVersion called|Failed to get database)|"
    r"HiveConf: HiveConf of name \S+ does not exist|SessionState: METASTORE_FILTER_HOOK will be ignored|"
    r"HiveExternalCatalog: Couldn't find corresponding Hive SerDe for data source provider delta|"
    r"SparkStringUtils: Truncated the string representation of a plan))")


def is_startup_note(line: str) -> bool:
    return bool(STARTUP_NOTES.match(line))


@contextlib.contextmanager
def quiet_spark_startup(enabled: bool = True) -> Iterator[None]:
    """While active, lines written to fd 2 (by this process or its children) pass through a filter thread."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def forward() -> None:
        with os.fdopen(read_fd, "rb", buffering=0) as pipe, os.fdopen(os.dup(saved), "wb", buffering=0) as out:
            for raw in iter(pipe.readline, b""):
                if not is_startup_note(raw.decode("utf-8", "replace")):
                    out.write(raw)

    thread = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # our end of the pipe closes here; a child JVM still alive keeps its copy until it exits
        os.close(saved)
        thread.join(timeout=2)
