"""The pipeline's Python jobs as children of one fork server: torch imported once.

Each job of the pipeline is a fresh Python process (Snakemake's ``script:``), and spends
1.3-1.7 s of CPU importing torch, pandas and matplotlib before its own work; in a run of
tiny jobs, such as the ~390 of a miniature (:mod:`fisherlab.plan.miniature`), that is
most of the time. With ``forkserver: true`` in the config (configs/miniature.yaml sets
it), every adapter of workflow/scripts calls :func:`hand_over` before its imports:

- the job's process (the *client*) connects to a server on a Unix socket, and starts it
  first if none is running (one per user, Python and server code:
  :func:`socket_path`). The server imports :data:`PRELOAD` once, never fisherlab nor
  Snakemake, and leaves after :data:`IDLE_SECONDS` without a job;
- the server forks a *child* for the job. The child takes the client's standard streams
  (passed over the socket), working directory, environment, ``sys.path`` and
  ``sys.argv``, and runs the client's script (Snakemake's copy of the adapter) from its
  start; there :func:`hand_over` returns at once, so the adapter imports this checkout's
  fisherlab as it would in its own process;
- the client waits and leaves with the child's status (the same exit code, or the same
  signal). A SIGTERM, SIGINT or SIGHUP sent to the client is passed on to the child (a
  trainer then saves its state: :class:`fisherlab.training.preemption.StopFlag`); the
  client stops with its Snakemake (``PR_SET_PDEATHSIG``), and a child whose client is
  gone (killed) is sent SIGTERM.

Where the server cannot be reached or started, the job runs in its own process, as
without ``forkserver``; inside a SLURM job (``SLURM_JOB_ID`` set) it always does: one
job per allocation has nothing to share. Snakemake's ``benchmark:`` files then measure
the client, not the child: keep ``forkserver`` off where those figures matter.

This module imports only the standard library: the server runs it as a script
(``python -P forkserver.py serve SOCKET``), outside the fisherlab package.
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Imported by the server once, before it forks a job (third-party only).
PRELOAD = ("numpy", "torch", "torchvision", "pandas", "matplotlib", "matplotlib.pyplot")
#: The server leaves after this long with no job running and none arriving
#: (``FISHERLAB_FORKSERVER_IDLE`` seconds when set).
IDLE_SECONDS = 120.0
#: Set in a child's environment: :func:`hand_over` there runs the script in place.
CHILD_ENV = "FISHERLAB_FORKSERVER_CHILD"
#: How long a client waits for a server it started (its imports included).
START_SECONDS = 120.0
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def socket_path() -> Path:
    """The server's socket for this user, Python, ``PYTHONPATH`` and server code:
    ``$TMPDIR/fisherlab-forkserver-<uid>/<key>.sock`` (/tmp when that is too long for a
    socket; a client of another environment gets another server)."""
    key = hashlib.sha256("\0".join([sys.executable, sys.version, os.environ.get("PYTHONPATH", ""),
                                    os.environ.get("PYTHONHOME", ""), Path(__file__).read_text()]).encode())  # fmt: skip
    name = f"fisherlab-forkserver-{os.getuid()}/{key.hexdigest()[:20]}.sock"
    path = Path(os.environ.get("TMPDIR", "/tmp")) / name
    return path if len(str(path)) < 100 else Path("/tmp") / name  # a socket's path has at most 107 bytes


def hand_over(config: Mapping[str, Any] | None) -> None:
    """Run this job's script in a child of the fork server and leave with its status,
    when ``config["forkserver"]`` is true (see the module docstring); return (run it
    here) when it is false, in the child itself, inside a SLURM job, off Linux, or when
    no server can be reached or started (then with a line on stderr)."""
    if not (config or {}).get("forkserver") or os.environ.get(CHILD_ENV) or "SLURM_JOB_ID" in os.environ:
        return
    if not sys.platform.startswith("linux"):
        return
    try:
        conn = _connect(socket_path())
        request = json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ), "path": sys.path})
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        data = request.encode()
        socket.send_fds(conn, [len(data).to_bytes(8, "big") + data], [0, 1, 2])
    except OSError as e:  # nothing started yet (a closed standard stream, a full disk, ...)
        print(f"forkserver: none reachable ({e}); the job runs in its own process", file=sys.stderr)
        return
    _client(conn)


# ---------------------------------------------------------------------- the client


def _connect(path: Path) -> socket.socket:
    """A connection to the server at ``path``, started first if none answers."""
    try:
        return _dial(path)
    except (FileNotFoundError, ConnectionRefusedError):
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(path.with_suffix(".log"), "ab") as log:  # the server's stderr (Popen keeps its own copy)
        server = subprocess.Popen([sys.executable, "-P", __file__, "serve", str(path)], start_new_session=True,
                                  cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                  close_fds=True)  # fmt: skip
    deadline = time.monotonic() + START_SECONDS
    while True:
        try:
            return _dial(path)
        except (FileNotFoundError, ConnectionRefusedError):
            if server.poll() not in (None, 0) or time.monotonic() > deadline:  # 0: another client's server won
                raise OSError(f"the server did not start (exit {server.poll()}; see {path.with_suffix('.log')})")
            time.sleep(0.02)


def _dial(path: Path) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError:
        conn.close()
        raise
    return conn


def _client(conn: socket.socket) -> None:
    """Wait for the child of this process's job (sent on ``conn``) and leave with its status."""
    replies = conn.makefile("rb")
    child = _reply(replies, "pid")
    if child is None:
        _leave(1, "forkserver: the server closed the connection before starting the job")
    for sig in _FORWARDED:
        signal.signal(sig, lambda s, _f: _signal(child, s))
    from fisherlab.runs.runlock import die_with_parent  # the client runs in the package (the server does not)

    die_with_parent(signal.SIGTERM)  # Snakemake gone: SIGTERM here, passed on to the child
    status = _reply(replies, "status")
    if status is None:  # the server died: the child is on its own
        _signal(child, signal.SIGTERM)
        _leave(1, f"forkserver: the server left while job {child} ran; it was sent SIGTERM")
    if status < 0:  # killed by a signal: end the same way
        if -status not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-status, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [-status])
        os.kill(os.getpid(), -status)
        _leave(128 - status, "")
    _leave(status, "")


def _reply(replies, key: str) -> int | None:
    line = replies.readline()
    return json.loads(line)[key] if line else None


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _leave(code: int, message: str) -> None:
    if message:
        print(message, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


# ---------------------------------------------------------------------- the server


def serve(path: Path) -> None:
    """Bind ``path``, import :data:`PRELOAD`, fork a child per request until idle for
    :data:`IDLE_SECONDS`. Leaves at once if another server holds ``path``'s lock file
    (``<socket>.lock``, which holds the serving pid)."""
    import fcntl
    import importlib

    lock = open(path.with_suffix(".lock"), "a+")  # not "w": a loser must not erase the winner's pid
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another client's server is starting or running
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))  # who serves (the lock file names it while it runs)
    lock.flush()
    idle = float(os.environ.get("FISHERLAB_FORKSERVER_IDLE", IDLE_SECONDS))
    os.environ.setdefault("MPLBACKEND", "Agg")
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(128)
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    jobs: dict[int, socket.socket] = {}
    idle_since = time.monotonic()
    try:
        while jobs or time.monotonic() - idle_since < idle:
            for key, _ in selector.select(timeout=1.0):
                if key.fileobj is listener:
                    conn, _ = listener.accept()
                    pid = _fork_job(conn, listener, (wake_r, wake_w))
                    if pid is not None:
                        jobs[pid] = conn
                else:
                    try:
                        os.read(wake_r, 4096)
                    except BlockingIOError:
                        pass
            _reap(jobs)
            if jobs:
                idle_since = time.monotonic()
    finally:
        path.unlink(missing_ok=True)
        listener.close()


def _reap(jobs: dict[int, socket.socket]) -> None:
    """Send each finished child's status to its client: the exit code, or minus the signal."""
    while jobs:
        try:
            pid, wait = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = jobs.pop(pid, None)
        if conn is None:
            continue
        status = os.waitstatus_to_exitcode(wait)
        try:
            conn.sendall(json.dumps({"status": status}).encode() + b"\n")
        except OSError:
            pass
        conn.close()


def _fork_job(conn: socket.socket, listener: socket.socket, wake: tuple[int, int]) -> int | None:
    """Read one request from ``conn`` and fork its child; the child's pid, or None."""
    conn.settimeout(30)
    try:
        data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        while len(data) < 8 or len(data) < 8 + int.from_bytes(data[:8], "big"):
            more = conn.recv(1 << 20)
            if not more:
                raise OSError("short request")
            data += more
        request = json.loads(data[8:8 + int.from_bytes(data[:8], "big")])
    except (OSError, ValueError):
        conn.close()
        return None
    conn.settimeout(None)
    if len(fds) != 3:
        for fd in fds:
            os.close(fd)
        conn.close()
        return None
    pid = os.fork()
    if pid == 0:
        os._exit(_child(request, fds, conn, listener, wake))
    for fd in fds:
        os.close(fd)
    try:
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    except OSError:
        pass  # the client is gone: its child sees it and stops
    return pid


def _child(request: dict, fds: list[int], conn: socket.socket, listener: socket.socket,
           wake: tuple[int, int]) -> int:  # fmt: skip
    """In the forked child: become the client's process, run its script, return the code."""
    import atexit
    import runpy
    import threading
    import traceback

    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    listener.close()
    for fd in wake:
        os.close(fd)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ[CHILD_ENV] = "1"
    sys.argv = list(request["argv"])
    sys.path[:] = request["path"]
    torch = sys.modules.get("torch")
    if torch is not None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))  # read by the server at its import

    def watch() -> None:  # the client gone (SIGKILLed): stop as its own process would have
        try:
            while conn.recv(1):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()
    code = 0
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001  (as the interpreter would: the traceback, exit 1)
        traceback.print_exc()
        code = 1
    # the interpreter's own exit: wait for non-daemon threads, run atexit (trackers flush there)
    for finish in (getattr(threading, "_shutdown", None), getattr(atexit, "_run_exitfuncs", None)):
        try:
            if finish is not None:
                finish()
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    return code


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"] and len(sys.argv) == 3:
        serve(Path(sys.argv[2]))
    else:
        sys.exit("usage: python -P forkserver.py serve SOCKET")
