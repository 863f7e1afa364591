"""A disk cache of the context model's label-prompt embeddings, one file per (model files, prompts, software).

Why: the zero-shot text context model embeds one prompt per label ("a video about Wedding", 656 of them for the
experiment-1 taxonomy) before it can score its first title. That costs about 1 s of CPU per process on a quiet
machine and several under load (bench_annotate: "context model's first call" 4.0 s per cold process at load 2), and
every annotate Python worker paid it again, in every Spark application and again whenever a worker's settings
changed. The embeddings depend only on what the key below holds, so one computation serves every later process of
the machine (issue #25: fixed costs out of every job).

The key is a SHA-256 over everything that changes the numbers: the sentence model's files (path, size and
modification time of each, as build tools decide staleness), the prompt texts in order, the batch size, the device
type and the versions of torch, transformers and sentence-transformers. A hit therefore returns exactly the array
that the same computation stored. A file is used only if it holds a finite ``(K, dim)`` float32 array of unit rows
(sentence embeddings are normalised); anything else (a truncated write, a foreign file) is computed again and
replaced. Writes go to a temporary file first and are renamed into place, so concurrent workers never read half a
file; a cache folder that cannot be written is only logged (the embeddings are still computed).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["cache_key", "cached_embeddings"]

_PACKAGES = ("torch", "transformers", "sentence-transformers")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def _model_files(folder: Path) -> list[tuple[str, int, int]]:
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        files.append((path.relative_to(folder).as_posix(), stat.st_size, stat.st_mtime_ns))
    return files


def cache_key(model_dir: str | os.PathLike[str], texts: Sequence[str], *, batch_size: int, device_type: str) -> str:
    """Hex SHA-256 of everything the embeddings of ``texts`` depend on (see the module docstring)."""
    folder = Path(model_dir).resolve()
    parts = dict(folder=str(folder), files=_model_files(folder), texts=list(texts), batch_size=int(batch_size),
                 device=device_type, versions={p: _version(p) for p in _PACKAGES})
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _usable(array: np.ndarray, n: int) -> bool:
    return (array.dtype == np.float32 and array.ndim == 2 and array.shape[0] == n and array.shape[1] > 0
            and bool(np.isfinite(array).all()) and bool(np.allclose(np.linalg.norm(array, axis=1), 1.0, atol=1e-3)))


def _read(path: Path, n: int) -> np.ndarray | None:
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # truncated or not an .npy file: computed again and replaced
        log.warning("label embedding cache %s unreadable (%s): computing again", path, exc)
        return None
    if not _usable(array, n):
        log.warning("label embedding cache %s holds %s %s, not %d unit rows: computing again", path, array.dtype,
                    array.shape, n)
        return None
    return array


def _write(path: Path, array: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                np.save(out, array, allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:  # a read-only or full disk: the embeddings are still returned, only not kept
        log.warning("label embedding cache %s not written (%s)", path, exc)


def cached_embeddings(cache_dir: str | os.PathLike[str] | None, model_dir: str | os.PathLike[str],
                      texts: Sequence[str], compute: Callable[[Sequence[str]], np.ndarray], *, batch_size: int,
                      device_type: str) -> np.ndarray:
    """``compute(texts)`` (an ``(n, dim)`` float32 array of unit rows), read from ``cache_dir`` when an earlier
    process stored it under the same key, else computed and stored there. ``cache_dir`` None: always computed."""
    if cache_dir is None:
        return compute(texts)
    key = cache_key(model_dir, texts, batch_size=batch_size, device_type=device_type)
    path = Path(cache_dir).expanduser() / f"{key}.npy"
    found = _read(path, len(texts))
    if found is not None:
        log.debug("label embeddings of %d texts read from %s", len(texts), path)
        return found
    array = np.ascontiguousarray(compute(texts), dtype=np.float32)
    _write(path, array)
    return array
