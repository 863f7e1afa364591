"""Hide the one line the JVM itself writes on every start, ``WARNING: Using incubator modules: jdk.incubator.vector``.

Everything else the JVM logs goes through log4j, configured by the packaged ``conf/log4j2.properties``
(``cxatlas.warehouse.spark``): at the default level it prints no start-up banner and no known-harmless note, so nothing
else needs filtering. The incubator notice is printed by the JVM's module system before any logging exists (Spark
adds ``--add-modules jdk.incubator.vector`` to its launch command), which no configuration reaches; the CLI points
fd 2 at a pipe for the duration of a command and forwards every line but that one (``-v`` keeps it too).
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from typing import Iterator

STARTUP_NOTES = re.compile(r"^WARNING: Using incubator modules: ")


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
