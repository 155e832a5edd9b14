"""Atomic file writes: a file at ``path`` is always either the old one or the complete
new one, never a partial write (write a temporary file beside it, fsync, rename).

Every output of the project goes through here (checkpoints, run files, tables, figures,
prepared data), so a failed write looks the same everywhere: :class:`StorageError`, one
line naming the path and the cause (no space left on device, disk quota exceeded,
permission denied, read-only file system, an I/O error), with ``errno`` and
``filename`` kept (it is an ``OSError``). The previous file at ``path`` is untouched and
the temporary file is removed.

An ``OSError`` counts as a storage error when it comes from the write itself: creating
the directory or the temporary file, a ``write``/``flush``/``seek`` on the yielded file
object, fsync, close, chmod or the rename. A writer that turns the ``OSError`` of its
``write`` into another exception is translated too: ``torch.save`` on a full disk
raises ``RuntimeError: [enforce fail at inline_container.cc:...] unexpected pos ...``
after ``write`` failed with ENOSPC; the file object records that ``OSError``, and the
``StorageError`` carries its cause. Any other exception of the ``with`` body (one that
follows no failed write) passes through unchanged.
"""

from __future__ import annotations

import contextlib
import errno as errnos
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

# errno -> (what the user reads, what to do); others: the system's strerror
_CAUSES = {
    errnos.ENOSPC: ("no space left on device", "free space on that file system or write the results elsewhere"),
    errnos.EDQUOT: ("disk quota exceeded", "free space within your quota or write the results elsewhere"),
    errnos.EACCES: ("permission denied", "check the permissions of the directory and the file"),
    errnos.EPERM: ("operation not permitted", "check the permissions of the directory and the file"),
    errnos.EROFS: ("read-only file system", "write the results to a writable file system"),
    errnos.EIO: ("input/output error", "a disk or network file-system fault; check the storage"),
    errnos.EFBIG: ("file too large", "the file system or a limit (ulimit -f) refuses files this large"),
}


class StorageError(OSError):
    """A file could not be written. ``errno``, ``strerror`` and ``filename`` are those of
    the underlying ``OSError`` (``filename``: the target, not the temporary file);
    ``str()`` is one line: the action and path, the cause, what to do, and that the
    previous file is unchanged (then ``detail``, if any)."""

    def __init__(self, path: str | os.PathLike, cause: OSError, action: str = "write", detail: str = ""):
        super().__init__(cause.errno, cause.strerror or str(cause), str(path))
        self.cause, self.action, self.detail = cause, action, detail

    @property
    def reason(self) -> str:
        """The cause in words, e.g. ``no space left on device``."""
        known = _CAUSES.get(self.errno)
        return known[0] if known else (self.strerror or type(self.cause).__name__).lower()

    def __str__(self) -> str:
        known = _CAUSES.get(self.errno)
        code = errnos.errorcode.get(self.errno, self.errno)
        hint = f"; {known[1]}" if known else ""
        detail = f"; {self.detail}" if self.detail else ""
        return (f"cannot {self.action} {self.filename}: {self.reason} ({code}){hint}; "
                f"any previous file at that path is unchanged{detail}")  # fmt: skip


class _RecordingFile(io.BufferedWriter):
    """A buffered binary file that remembers the first ``OSError`` of a write, a flush or
    a seek, so that an exception raised later by the writer (torch's RuntimeError) can be
    traced back to it."""

    failure: OSError | None = None

    def _recorded(self, fn, *args):
        try:
            return fn(*args)
        except OSError as e:
            if self.failure is None:
                self.failure = e
            raise

    def write(self, b):
        return self._recorded(super().write, b)

    def flush(self):
        return self._recorded(super().flush)

    def seek(self, *args):
        return self._recorded(super().seek, *args)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, backup: str | os.PathLike | None = None) -> Iterator[BinaryIO]:
    """Yield a binary file object; on success it replaces ``path``, on error it is
    removed and :class:`StorageError` is raised for a failed write (module docstring).

    With ``backup``, an existing file at ``path`` is renamed to ``backup`` once the new
    file is complete and synced, just before the new one takes its place (two
    generations, see :mod:`fisherlab.training.checkpoint`); if that last rename fails, the old
    file is put back at ``path``."""
    path = Path(path)
    tmp = f = None
    in_body = False  # an OSError raised by the caller's code (not by f) is not ours to name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        f = _RecordingFile(io.FileIO(fd, "wb"))
        with f:
            in_body = True
            yield f
            in_body = False
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        moved = False
        if backup is not None and path.exists():
            os.replace(path, backup)
            moved = True
        try:
            os.replace(tmp, path)
        except OSError:
            if moved:
                with contextlib.suppress(OSError):
                    os.replace(backup, path)
            raise
        tmp = None
        _fsync_dir(path.parent)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        cause = _storage_cause(e, f, in_body)
        if cause is not None and not isinstance(e, StorageError):
            raise StorageError(path, cause) from e
        raise


def _storage_cause(e: BaseException, f: _RecordingFile | None, in_body: bool) -> OSError | None:
    """The ``OSError`` behind ``e`` if ``e`` is a failed write (module docstring), else None."""
    if f is not None and f.failure is not None:
        return f.failure  # the writer failed on the disk, whatever it raised then
    if isinstance(e, OSError) and not in_body:
        return e  # mkdir, mkstemp, flush, fsync, close, chmod, rename: the write itself
    return None


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (best effort: some file systems refuse fsync on a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path) as f:
        f.write(text.encode("utf-8"))
