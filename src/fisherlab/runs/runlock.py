"""One trainer per run directory: a lock file naming its owner (issue 21, point 7).

A Snakemake process killed with SIGKILL leaves its job's trainer running; after
``--unlock`` and a rerun, a second trainer would write the same checkpoint and run files.
:func:`run_lock` prevents that: the trainer holds ``<run dir>/train.lock``, a JSON file
with the owner's host, pid, process start time and boot id, while it runs.

Taking the lock
    The file is created with ``O_CREAT | O_EXCL`` (atomic, also on NFS v3+). If it
    exists, its owner is judged:

    - same host: alive if the pid exists and is the same process (same start time in
      ``/proc/<pid>/stat`` and the same boot id, so a reused pid or a reboot does not
      count as alive); then the lock is refused (:class:`RunLocked`, naming host, pid
      and the lock's path). A dead owner's lock is taken over.
    - another host (SLURM nodes sharing a file system): its pid cannot be checked. An
      owner that ran in a SLURM job (``SLURM_JOB_ID``, recorded) is judged by SLURM:
      dead if it is this very job (requeued: a job id runs once at a time), or if
      ``squeue -j <id>`` reports it in no running state or no longer knows it; alive
      if running. Otherwise (no SLURM, or ``squeue`` fails) the heartbeat decides: the
      owner refreshes the file's modification time every ``heartbeat`` seconds (default
      60) from a daemon thread, and the lock is refused while that time is less than
      ``stale_after`` seconds old (default 900: 15 heartbeats, margin for clock skew and
      a busy file server), taken over after that, as the owner's node is then gone.

    A taken-over lock is renamed to ``train.lock.dead-<pid>-<time>`` first, and the
    renamed file is checked to be the one judged dead (two trainers taking over at once:
    one wins, the other is refused).

Releasing it
    On leaving the ``with`` block, however it is left (normal end, exception,
    :class:`fisherlab.training.preemption.Preempted`), the heartbeat stops and the file is removed
    if it is still this process's (and the folders that taking it created, if empty). A
    SIGKILLed owner leaves it behind: dead, taken over.

A trainer should also die with the Snakemake process that started it:
:func:`die_with_parent` asks Linux for a signal (SIGTERM: the trainer saves its state and
exits, releasing the lock) when its parent dies, e.g. a SIGKILLed Snakemake.

A file system that refuses the lock file itself (full, read-only, no permission) does
not stop the run here: one line is logged and the run goes on unlocked, to fail, if it
must, at its first write with the clear :class:`fisherlab.atomic.StorageError` naming that
file and the cause.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

LOCK_NAME = "train.lock"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 900.0


class RunLocked(RuntimeError):
    """Another live trainer holds the run's lock."""


def _boot_id() -> str | None:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return None


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22, after the command name


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def owner_record() -> dict[str, Any]:
    """This process as a lock owner: host, pid, start time (ticks), boot id, since."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start_time": _start_time(pid), "boot_id": _boot_id(),
            "slurm_job": os.environ.get("SLURM_JOB_ID"),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip


SLURM_ALIVE = {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "CONFIGURING", "RESIZING", "SIGNALING",
               "STAGE_OUT", "REQUEUE_HOLD", "REQUEUE_FED", "REQUEUED"}  # fmt: skip


def slurm_job_alive(job: str, timeout: float = 30.0) -> bool | None:
    """Whether SLURM job ``job`` may still run its processes (``squeue``): True while in
    a running state, False once it has ended or SLURM no longer knows it, None when
    SLURM cannot be asked (no ``squeue``, an error, a time-out)."""
    import subprocess

    try:
        proc = subprocess.run(["squeue", "-h", "-j", str(job), "-o", "%T"], capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return False if "invalid job id" in proc.stderr.lower() else None
    states = set(proc.stdout.split())
    return bool(states & SLURM_ALIVE)


def owner_alive(owner: dict[str, Any], age_s: float, stale_after: float = STALE_AFTER_S) -> bool:
    """Whether the owner of a lock file (its record, and the seconds since the file's
    last heartbeat) may still be running (module docstring)."""
    if owner.get("host") != socket.gethostname():
        job = owner.get("slurm_job")
        if job and job == os.environ.get("SLURM_JOB_ID"):
            return False  # an earlier run of this very (requeued) job
        alive = slurm_job_alive(job) if job else None
        return alive if alive is not None else age_s < stale_after
    boot = _boot_id()
    if owner.get("boot_id") and boot and owner["boot_id"] != boot:
        return False  # this host rebooted since
    pid = owner.get("pid")
    if not isinstance(pid, int) or not _pid_exists(pid):
        return False
    recorded, now = owner.get("start_time"), _start_time(pid)
    return recorded is None or now is None or recorded == now  # a reused pid is another process


def _read(path: Path) -> tuple[dict[str, Any], float] | None:
    """The lock's owner record and age (seconds since its mtime); None if it is gone. An
    unreadable record (a writer killed mid-write) counts as a dead owner of this host."""
    try:
        st, text = path.stat(), path.read_text()
    except FileNotFoundError:
        return None
    try:
        owner = json.loads(text)
        if not isinstance(owner, dict):
            raise ValueError
    except ValueError:
        owner = {"host": socket.gethostname(), "pid": None, "unreadable": text[:200]}
    return owner, max(0.0, time.time() - st.st_mtime)


def _describe(owner: dict[str, Any]) -> str:
    return f"host {owner.get('host')!r}, pid {owner.get('pid')} (since {owner.get('since', '?')})"


def acquire(path: str | os.PathLike, *, stale_after: float = STALE_AFTER_S,
            log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:  # fmt: skip
    """Take the lock file at ``path`` (module docstring) and return this owner's record;
    raise :class:`RunLocked` if a live owner holds it."""
    path = Path(path)
    me = owner_record()
    for _ in range(20):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            found = _read(path)
            if found is None:
                continue  # released meanwhile
            owner, age = found
            if owner_alive(owner, age, stale_after):
                raise RunLocked(
                    f"{path}: this run is being trained by another process ({_describe(owner)}, lock refreshed "
                    f"{age:.0f} s ago). Wait for it to end, or stop that process; the lock of a dead process on "
                    f"this host or of an ended SLURM job is taken over at once, another host's after "
                    f"{stale_after:.0f} s without a heartbeat."
                )  # fmt: skip
            dead = path.with_name(f"{path.name}.dead-{os.getpid()}-{time.time_ns()}")
            try:
                os.rename(path, dead)
            except FileNotFoundError:
                continue
            moved = _read(dead)
            if moved is not None and moved[0] != owner:  # not the file judged dead: a new owner's, put back
                with contextlib.suppress(OSError):
                    os.link(dead, path)
                    dead.unlink()
                continue
            with contextlib.suppress(OSError):
                dead.unlink()
            log(f"run lock {path}: taking over from {_describe(owner)}, which is no longer running")
            continue
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me) + "\n")
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        return me
    raise RunLocked(f"{path}: could not take the run lock (it changed hands 20 times while trying)")


def release(path: str | os.PathLike, me: dict[str, Any]) -> None:
    """Remove the lock file at ``path`` if it is still ``me``'s."""
    found = _read(Path(path))
    if found is not None and found[0] == me:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@contextlib.contextmanager
def run_lock(path: str | os.PathLike, *, heartbeat: float = HEARTBEAT_S, stale_after: float = STALE_AFTER_S,
             log: Callable[[str], None] = lambda s: None) -> Iterator[dict[str, Any]]:  # fmt: skip
    """Hold the lock file at ``path`` for the ``with`` block, refreshing its mtime every
    ``heartbeat`` seconds; yields the owner record. Raises :class:`RunLocked` while a live
    owner holds it (module docstring)."""
    if not (0 < heartbeat < stale_after):
        raise ValueError(f"need 0 < heartbeat < stale_after, got heartbeat={heartbeat}, stale_after={stale_after}")
    path = Path(path)
    created = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        me = acquire(path, stale_after=stale_after, log=log)
    except RunLocked:
        raise
    except OSError as e:
        log(f"run lock {path}: cannot be written ({type(e).__name__}: {e}); running without it")
        _remove_empty(created)
        yield {}
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(heartbeat):
            with contextlib.suppress(OSError):
                os.utime(path)

    thread = threading.Thread(target=beat, name="fisherlab-run-lock", daemon=True)
    thread.start()
    try:
        yield me
    finally:
        stop.set()
        thread.join()
        release(path, me)
        _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) while they are empty."""
    for d in folders:
        try:
            d.rmdir()
        except OSError:
            return


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Have Linux send ``sig`` to this process when its parent (the thread that started
    it) dies (``prctl(PR_SET_PDEATHSIG)``). A job started by Snakemake then stops when
    Snakemake is SIGKILLed instead of training on unseen; with
    :class:`fisherlab.training.preemption.StopFlag` installed, SIGTERM saves its state first. If
    the parent is already gone when this is called, ``sig`` is sent at once. Returns
    False (and does nothing) where ``prctl`` does not exist (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # the parent died before the request
        os.kill(os.getpid(), sig)
    return True
