"""Atomic file writes: write a temporary file beside the target, then rename over it.

A crash mid-write leaves the previous file (or none), never a half-written one. And the checksums
that the JSON maps of adapters and exports record for the files beside them (:func:`sha256_file`,
verified on load by :func:`check_sha256`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from .errors import BitswitchError

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with_suppress_unlink(tmp)
        raise
    return path


def with_suppress_unlink(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line and flush it (a killed run loses at most the line being written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """The sha256 hex digest of a file, read in chunks (a multi-GB file never sits in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def check_sha256(directory: str | os.PathLike, recorded, map_file: str, fix: str) -> None:
    """Verify the files of ``directory`` that a JSON map records as ``{"sha256": {file name: hex}}``.

    ``recorded`` is that map's ``sha256`` value; None (a map written before checksums existed)
    checks nothing. A malformed entry, a missing file or a digest that differs raises a one-line
    :class:`BitswitchError` naming the file and ending in ``fix``.
    """
    if recorded is None:
        return
    directory = Path(directory)
    if not isinstance(recorded, dict) or not all(
            isinstance(k, str) and k and Path(k).name == k and isinstance(v, str) and _HEX64.match(v)
            for k, v in recorded.items()):
        raise BitswitchError(f"{directory / map_file} has a malformed sha256 entry (expected file name -> "
                             f"64 hex digits): {fix}")
    for name, digest in recorded.items():
        file = directory / name
        try:
            actual = sha256_file(file)
        except OSError as exc:
            raise BitswitchError(f"{file} cannot be read ({exc.strerror or type(exc).__name__}): {fix}") from None
        if actual != digest:
            raise BitswitchError(f"{file} is corrupt (sha256 mismatch): {fix}")
