"""``Job``: one command's results directory.

``OUT/results.json`` holds the run metadata (command, versions, seed, device, dtype), the settings
hash and full config, and the records. It is written atomically after every record. A rerun with
the same settings reuses the records already there (an interrupted run resumes) and keeps the ones
it does not measure again (another profile list adds to the file, it does not replace it). A rerun
with other settings keeps the old file beside the new one as ``results-<settings>.json`` and says
which settings differ; nothing is silently replaced. Two runs writing one directory at once merge
their records under a lock. ``OUT/results.md`` is the markdown table. A job may keep another file
of the directory the same way (``name``: e.g. a search's own ``sensitivity.json``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Callable

from ..errors import BitswitchError
from ..io import atomic_write_json, atomic_write_text
from ..results import markdown_table, run_metadata


def check_output_dir(out: str | os.PathLike) -> Path:
    """Create ``out`` and prove it writable before any work; a one-line error otherwise."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BitswitchError(f"--out {str(out)!r} is a file, not a directory: choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise BitswitchError(f"--out {str(out)!r} is not writable ({exc.strerror or exc}): choose another --out") from None
    return out


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BitswitchError(f"{path} is not a readable results file ({type(exc).__name__}): move it away or "
                             "choose another --out") from None
    if not isinstance(doc, dict):
        raise BitswitchError(f"{path} is not a results file (no JSON object): move it away or choose another --out")
    return doc


def settings_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``"name: old -> new"`` for each setting that differs between two config dicts (dotted names
    inside nested dicts), sorted by name."""
    diff = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diff += settings_differences(a, b, f"{prefix}{k}.")
        elif a != b:
            diff.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return diff


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive advisory lock on ``path`` (a no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Job:
    """The results directory of one command run.

    ``key(record)`` identifies a record (a profile, a unit, a label): a record added under a key
    the file already holds replaces it. ``previous`` maps keys to the records an earlier run with
    the same settings left (reuse them instead of measuring again). ``name`` is the file in ``OUT``
    (``results.json``; another name keeps its old versions as ``<stem>-<settings>.json``).
    """

    def __init__(self, cfg, kind: str, argv: list[str] | None = None, key: Callable[[dict], str] | str = "profile",
                 log=print, name: str = "results.json"):
        self.cfg, self.kind, self.log = cfg, kind, log
        self.key = (lambda r, k=key: r[k]) if isinstance(key, str) else key
        self.out = check_output_dir(cfg.out)
        self.path = self.out / name
        self.settings = cfg.settings_hash()
        self.doc = {"kind": kind, "settings": self.settings, **run_metadata(argv, cfg.seed),
                    "config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str)), "records": []}
        self.previous_doc = self._previous()
        self.previous = self._keyed(self.previous_doc.get("records", []))
        self.dropped: set[str] = set()

    def _keyed(self, records) -> dict:
        """Records by key; a one-line error for a results file whose records this command cannot have written."""
        try:
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                raise TypeError("'records' is not a list of objects")
            return {self.key(r): r for r in records}
        except (KeyError, TypeError) as exc:
            raise BitswitchError(f"{self.path} has malformed records ({type(exc).__name__}: {exc}): move it away or "
                                 "choose another --out") from None

    def _previous(self) -> dict:
        old = _read_json(self.path)
        if old is None:
            return {}
        if old.get("kind", self.kind) != self.kind:
            raise BitswitchError(f"{self.path} holds results of another command ({old.get('kind')!r}, not "
                                 f"{self.kind!r}): choose another --out")
        if old.get("settings") == self.settings:
            return old
        settings = old.get("settings")
        tag = settings if isinstance(settings, str) and settings.isalnum() else "old"
        keep = self.path.with_name(f"{self.path.stem}-{tag}{self.path.suffix}")
        os.replace(self.path, keep)
        diff = settings_differences(old["config"] if isinstance(old.get("config"), dict) else {}, self.doc["config"])
        diff = [d for d in diff if d.split(":")[0].split(".")[0] not in type(self.cfg).UNHASHED]
        self.log(f"note: {self.path} was measured with other settings ({'; '.join(diff[:4]) or 'older format'}"
                 f"{'; ...' if len(diff) > 4 else ''}): kept as {keep.name}, starting a new {self.path.name}")
        return {}

    def describe(self, loaded=None, **fields) -> None:
        """Add run-level fields (and the device and dtype the ``loaded`` model runs on) to the document."""
        if loaded is not None:
            p = next(loaded.parameters())
            self.doc["device"] = str(p.device)
            self.doc["dtype"] = getattr(self.cfg, "dtype", str(p.dtype))
        self.doc.update(fields)

    def reuse(self, name: str = "records") -> list:
        """What an earlier run with the same settings left under ``name`` (records, or another list)."""
        return list(self.previous_doc.get(name) or [])

    def drop(self, key: str) -> None:
        """Forget the earlier record under ``key``: it is neither reused nor kept in the file."""
        self.dropped.add(key)
        self.previous.pop(key, None)

    def add(self, record: dict, log: str | None = None) -> dict:
        """Add (or replace, by key) one record and write the file."""
        k = self.key(record)
        recs = self.doc["records"]
        for i, r in enumerate(recs):
            if self.key(r) == k:
                recs[i] = record
                break
        else:
            recs.append(record)
        self.save()
        if log:
            self.log(log)
        return record

    def save(self) -> None:
        """Write the file (``results.json``) atomically, merging the records another run with the same
        settings wrote meanwhile (and the ones an earlier run left that this one did not measure again)."""
        with _locked(self.path.with_name(f".{self.path.stem}.lock")):
            on_disk = _read_json(self.path) or {}
            theirs = on_disk.get("records", []) if on_disk.get("settings") == self.settings else []
            mine = {self.key(r) for r in self.doc["records"]} | self.dropped
            extra = [r for r in [*self.previous_doc.get("records", []), *theirs] if self.key(r) not in mine]
            kept = {}   # this run's records first, then the kept ones, one per key
            for r in [*self.doc["records"], *extra]:
                kept.setdefault(self.key(r), r)
            self.doc["records"][:] = kept.values()
            atomic_write_json(self.path, self.doc)

    def finish(self, columns: list[str], title: str, notes: str = "") -> str:
        """Write the final ``results.json`` and ``results.md``; returns the markdown table."""
        self.save()
        table = markdown_table(self.doc["records"], columns)
        atomic_write_text(self.out / "results.md", f"# {title}\n\n`{self.doc['command']}`\n\n{table}\n"
                                                   + (f"\n{notes.strip()}\n" if notes.strip() else ""))
        return table
