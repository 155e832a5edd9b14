"""A run's identity: everything that it reads, so that a checkpoint or a finished run
of other inputs is never taken for this one (issue 21).

Identity
    :func:`run_identity` is ``{"spec": ..., "inputs": {name: sha256}, "digest": ...}``:
    the run's :class:`~fisherlab.training.train_config.TrainConfig` (as ``to_dict``), its data
    options (``val_size``, ``augment``, ...), and the SHA-256 of each input file (the
    prepared train/test data, the noise file, the starting weights, the selection files
    that set its lr or alpha). ``digest`` is the SHA-256 of the canonical JSON of the
    rest. The trainer saves it in each checkpoint and refuses (moves aside as
    ``*.stale-<time>``) a checkpoint of another identity; :func:`fisherlab.experiment.run`
    writes it to summary.json. The labels of a run (setting, role, ...) are not part of
    it: they do not change what is trained, and a finished run with new labels only
    rewrites its summary.

Cheap digests
    :func:`file_digest` keeps the digest of a file beside it, in ``<file>.sha256``
    (JSON: sha256, size, mtime_ns, ino), and reuses it only while the file's size,
    modification time and inode are those recorded; otherwise the file is hashed again
    and the sidecar rewritten. A prepared data set is thus hashed once, by the first run
    that reads it (which reads it whole anyway), not by every job; :func:`write_digest`
    hashes a file ahead of time. A sidecar that cannot be written (a read-only folder)
    is skipped: the file is then hashed by each run.

Code
    :func:`code_digest` is the SHA-256 of fisherlab's own ``.py`` files (relative paths
    and contents, sorted): the code that a job ran, recorded in summary.json beside
    :func:`fisherlab.runs.runio.code_version`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SIDECAR_SUFFIX = ".sha256"
_CHUNK = 1 << 20


def sidecar(path: str | os.PathLike) -> Path:
    """The digest file of ``path``: ``<path>.sha256``."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _stamp(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def _hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_digest(path: str | os.PathLike) -> str:
    """Hash ``path`` and write its sidecar (atomically); returns the hex SHA-256. The
    sidecar is written only if the file did not change while it was read."""
    from ..atomic import StorageError, write_text_atomic

    path = Path(path)
    before = _stamp(path.stat())
    digest = _hash(path)
    if _stamp(path.stat()) == before:
        with contextlib.suppress(OSError, StorageError):
            write_text_atomic(sidecar(path), json.dumps({"sha256": digest, **before}) + "\n")
    return digest


def file_digest(path: str | os.PathLike) -> str:
    """The hex SHA-256 of the file at ``path``, from its sidecar when the sidecar
    matches the file's size, mtime and inode; else hashed (and the sidecar rewritten).
    Raises ``FileNotFoundError`` naming the path if there is no such file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (an input of the run)")
    try:
        recorded = json.loads(sidecar(path).read_text())
        if isinstance(recorded, dict) and {k: recorded.get(k) for k in ("size", "mtime_ns", "ino")} == _stamp(
            path.stat()
        ) and isinstance(recorded.get("sha256"), str) and len(recorded["sha256"]) == 64:
            return recorded["sha256"]
    except (OSError, ValueError):
        pass
    return write_digest(path)


def canonical(obj: Any) -> Any:
    """``obj`` as plain JSON data (tuples as lists, keys as str), for comparing and hashing."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def run_identity(
    config: Mapping[str, Any],
    data: Mapping[str, Any] | None = None,
    inputs: Mapping[str, str | os.PathLike | None] | None = None,
) -> dict[str, Any]:
    """The identity of a run (module docstring): ``config`` (``TrainConfig.to_dict()``),
    ``data`` (the data options: val_size, augment, split_seed, ...) and the digest of
    each input file (name -> path, or a list of paths; None entries are skipped)."""
    spec = canonical({"config": dict(config), "data": dict(data or {})})

    def digest(p):
        return [file_digest(q) for q in p] if isinstance(p, (list, tuple)) else file_digest(p)

    files = {name: digest(p) for name, p in sorted((inputs or {}).items()) if p is not None}
    body = {"spec": spec, "inputs": files}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return {**body, "digest": digest}


def identity_difference(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str:
    """What differs between two identities, in words (for the log and the summary)."""
    if not isinstance(old, Mapping) or "spec" not in old:
        return "it records no run identity (written before identities were recorded)"
    parts = []
    for section in ("config", "data"):
        a, b = old["spec"].get(section, {}), new["spec"].get(section, {})
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if keys:
            parts.append(f"{section} {keys}")
    a, b = old.get("inputs", {}), new.get("inputs", {})
    files = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if files:
        parts.append(f"input files {files}")
    return "its inputs differ: " + ("; ".join(parts) or "digest")


def code_digest(package_dir: str | os.PathLike | None = None) -> str:
    """SHA-256 of the ``.py`` files under ``package_dir`` (default: this fisherlab's
    folder): each relative path and content, in sorted order."""
    root = Path(package_dir) if package_dir is not None else Path(__file__).parents[1]
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).as_posix()
        if "__pycache__" in rel:
            continue
        h.update(rel.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()
