"""Checkpoints that survive crashes, full disks and bad files: two generations, written
atomically, and a loader that moves an unusable file aside instead of failing on it.

Two generations
    ``checkpoint.pt`` is the newest state, ``checkpoint.pt.prev`` the one before.
    :func:`save_checkpoint` writes the new state to a temporary file beside them and
    fsyncs it; only then does it rename ``checkpoint.pt`` to ``checkpoint.pt.prev``
    (replacing the older one) and the temporary file to ``checkpoint.pt`` (both renames
    atomic, in one directory). At every instant of a crash at least one complete
    generation exists:

    - while the new file is written: ``checkpoint.pt`` and ``.prev`` are as before;
    - between the two renames: ``.prev`` holds the last good state (``checkpoint.pt`` is
      briefly absent, and the complete new file still has its temporary name);
    - after them: ``checkpoint.pt`` is the new state and ``.prev`` the one before.

    A failed write (full disk, permissions) raises :class:`fisherlab.atomic.StorageError`
    and leaves both generations as they were, with no temporary file.

Loading
    :func:`load_checkpoint` tries ``checkpoint.pt``, then ``checkpoint.pt.prev``. A file
    that cannot be used (truncated, random bytes, unpicklable, from an incompatible code
    version, missing keys, or refused by ``restore``, e.g. because it belongs to another
    configuration) is renamed to ``<name>.corrupt-<UTC time>`` (never deleted; one of
    another run identity, :class:`StaleCheckpoint`, to ``<name>.stale-<UTC time>``), one line
    naming the path and the reason goes to ``log``, and the next generation is tried;
    when none is usable the caller starts fresh. Each such file becomes an event
    ``{path, reason, moved_to, resumed_from}`` for the run's summary. Temporary files
    left by a write that was killed (SIGKILL, a lost node) are removed.

Checkpoints are read with ``torch.load(weights_only=True)``: tensors, numbers, strings
and containers only, so a foreign file cannot run code when it is unpickled.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

from ..atomic import StorageError, atomic_write

T = TypeVar("T")
PREVIOUS_SUFFIX = ".prev"


class CheckpointMismatch(ValueError):
    """A readable checkpoint that does not belong to this run (another configuration,
    missing keys, another layout); raised by a ``restore`` function."""

    tag = "corrupt"  # the moved-aside file's name: <name>.<tag>-<UTC time>


class StaleCheckpoint(CheckpointMismatch):
    """A checkpoint of the same configuration but another run identity (other data,
    data options, noise file, starting weights or selections: :mod:`fisherlab.runs.identity`);
    moved aside as ``<name>.stale-<UTC time>``."""

    tag = "stale"


def previous(path: str | os.PathLike) -> Path:
    """The previous generation of the checkpoint at ``path``: ``<path>.prev``."""
    path = Path(path)
    return path.with_name(path.name + PREVIOUS_SUFFIX)


def drop_checkpoint(path: str | os.PathLike) -> None:
    """Delete both generations of the checkpoint at ``path`` (``keep_checkpoints: false``:
    a finished run's state, about 3x its weights, is not kept; a rerun then retrains)."""
    for p in (Path(path), previous(path)):
        p.unlink(missing_ok=True)


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save ``obj`` to ``path`` atomically (see :mod:`fisherlab.atomic`), one
    generation (e.g. a run's final ``model.pt``)."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def save_checkpoint(obj: Any, path: str | os.PathLike) -> None:
    """torch.save ``obj`` to ``path`` atomically, keeping the file it replaces as
    ``<path>.prev`` (the rotation of the module docstring)."""
    with atomic_write(path, backup=previous(path)) as f:
        torch.save(obj, f)


@dataclass
class Loaded(Generic[T]):
    """What :func:`load_checkpoint` found: ``value`` (what ``restore`` returned for the
    first usable generation, or None), the ``path`` it came from, and one event per file
    moved aside (dicts with keys path, reason, moved_to, resumed_from)."""

    value: T | None = None
    path: Path | None = None
    events: list[dict[str, Any]] = field(default_factory=list)


def load_checkpoint(
    path: str | os.PathLike,
    restore: Callable[[dict], T] | None = None,
    *,
    map_location: Any = None,
    log: Callable[[str], None] | None = None,
) -> Loaded[T]:
    """The newest usable generation of the checkpoint at ``path`` (module docstring).

    ``restore(checkpoint)`` turns the loaded dict into what the caller needs and raises
    (e.g. :class:`CheckpointMismatch`, ``KeyError``, or the ``RuntimeError`` of
    ``load_state_dict``) if the checkpoint does not fit; without it the dict itself is
    returned. A file that fails to load or to restore is moved aside, logged and
    recorded; ``Loaded.value`` is None when no generation is usable. Only a file that
    cannot be moved aside (e.g. a read-only file system) raises, as ``StorageError``."""
    path = Path(path)
    log = log or (lambda s: None)
    restore = restore or (lambda ckpt: ckpt)
    _remove_stale_temporaries(path)
    found, bad = Loaded(), []
    for candidate in (path, previous(path)):
        if not candidate.exists():
            continue
        try:
            value = restore(_read(candidate, map_location))
        except (_Unusable, CheckpointMismatch) as e:
            bad.append((candidate, str(e), _move_aside(candidate, str(e), getattr(e, "tag", "corrupt"))))
            continue
        except Exception as e:  # noqa: BLE001 - what restore refuses (load_state_dict...) does not fit
            reason = f"does not fit this run ({_one_line(e)})"
            bad.append((candidate, reason, _move_aside(candidate, reason)))
            continue
        found.value, found.path = value, candidate
        break
    resumed = str(found.path) if found.path is not None else None
    for candidate, reason, moved in bad:
        found.events.append({"path": str(candidate), "reason": reason, "moved_to": str(moved), "resumed_from": resumed})
        then = f"resuming from {resumed}" if resumed else "no usable checkpoint left: starting fresh"
        log(f"checkpoint {candidate} cannot be used: {reason}; moved to {moved}; {then}")
    if not bad and found.path is not None and found.path != path:
        log(f"checkpoint {path} is missing (a write was interrupted); resuming from {found.path}")
    return found


class _Unusable(Exception):
    """The file is not a readable checkpoint (the message is the reason)."""


def _read(path: Path, map_location: Any) -> dict:
    if path.stat().st_size == 0:
        raise _Unusable("empty file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated zip, random bytes, a foreign pickle: all unreadable
        raise _Unusable(f"truncated or corrupt, cannot be read ({_one_line(e)})") from e
    if not isinstance(ckpt, dict):
        raise _Unusable(f"not a fisherlab checkpoint (holds a {type(ckpt).__name__}, not a dict)")
    return ckpt


def _move_aside(path: Path, reason: str, tag: str = "corrupt") -> Path:
    """Rename ``path`` to ``<name>.<tag>-<UTC time>`` (``-2``, ``-3``... if taken)."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target, n = path.with_name(f"{path.name}.{tag}-{stamp}"), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.{tag}-{stamp}-{n}")
    try:
        os.rename(path, target)
    except OSError as e:
        raise StorageError(path, e, action="move aside", detail=f"the checkpoint cannot be used: {reason}") from e
    return target


move_aside = _move_aside  # also for a run's other files of another identity (fisherlab.experiment)


def _remove_stale_temporaries(path: Path) -> None:
    """Delete ``.<name>.*.tmp`` files of this checkpoint: a write killed before its rename."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.[^.]+\.tmp$")
    with contextlib.suppress(OSError):
        for p in path.parent.iterdir():
            if pattern.match(p.name):
                with contextlib.suppress(OSError):
                    p.unlink()


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or "no message"
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(e).__name__}: {text}"
