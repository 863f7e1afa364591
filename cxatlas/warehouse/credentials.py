"""Per-data-root secrets (the metastore's Derby password, the SQL endpoint's password): generated once, kept in a
file readable by its owner only, never printed, logged or passed on a command line.

Why files: every process of a data root (jobs, ``cxatlas sql-server``) runs as the data root's owner and reads the
same secret from the data root's metastore folder (0700); nobody else can, and rotating one is deleting its file
(and restarting what uses it).
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from cxatlas.core.errors import UserError


def ensure_secret(path: Path) -> str:
    """The secret in ``path``, generated (URL-safe, 256 bits) and written 0600 when the file does not exist yet.

    Refuses a file that others can read or write (a secret that leaked is no secret): fix it with ``chmod 600``.
    """
    path = Path(path)
    if not path.exists():
        # Written whole under a private name, then linked into place: a concurrent process sees no file or the
        # whole secret, and the first link wins.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise UserError(f"{path} holds a secret but is readable or writable by others (mode {mode:o}): "
                        f"run `chmod 600 {path}`")
    secret = path.read_text().strip()
    if not secret:
        raise UserError(f"{path} is empty: delete it and a new secret is generated")
    return secret
