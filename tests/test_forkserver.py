"""fisherlab.forkserver: a job handed over runs in a child of the server exactly as it
would in its own process (streams, working directory, environment, arguments, exit code
or signal, its own checkout's fisherlab), signals reach it, and a job whose server
cannot be had runs in its own process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

JOB = textwrap.dedent("""\
    import os, sys, json, signal, time
    before = sorted(m for m in ("torch", "fisherlab") if m in sys.modules)
    sys.path.insert(0, {src!r})
    from fisherlab.forkserver import hand_over
    hand_over(json.loads(os.environ["CONFIG"]))
    import fisherlab
    info = {{"pid": os.getpid(), "ppid": os.getppid(), "before": before, "fisherlab": fisherlab.__file__,
             "cwd": os.getcwd(), "argv": sys.argv, "xx": os.environ.get("XX"),
             "forked": os.environ.get("FISHERLAB_FORKSERVER_CHILD")}}
    print(json.dumps(info))
    print("an error line", file=sys.stderr)
    what = os.environ.get("WHAT", "")
    if what == "raise":
        raise RuntimeError("the job failed")
    if what == "exit":
        import atexit, threading
        atexit.register(lambda: print("atexit ran", flush=True))
        threading.Thread(target=lambda: (time.sleep(0.3), print("thread done", flush=True))).start()
    if what == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if what == "wait":
        def stop(sig, frame):
            with open(os.environ["MARK"] + ".tmp", "w") as f:
                f.write(str(sig))
            os.replace(os.environ["MARK"] + ".tmp", os.environ["MARK"])  # whole, or not there
            sys.exit(7)
        signal.signal(signal.SIGTERM, stop)
        open(os.environ["READY"], "w").close()
        time.sleep(60)
        sys.exit(9)
    sys.exit(int(os.environ.get("CODE", "0")))
""")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A job script, and an environment whose TMPDIR (so the server's socket) is this
    module's own: its tests share one server, stopped afterwards."""
    short = Path(tempfile.mkdtemp(prefix="fs", dir="/tmp"))
    script = tmp_path_factory.mktemp("forkserver") / "job.py"
    script.write_text(JOB.format(src=str(SRC)))
    e = {**os.environ, "TMPDIR": str(short), "FISHERLAB_FORKSERVER_IDLE": "60", "CONFIG": '{"forkserver": true}'}
    e.pop("SLURM_JOB_ID", None)
    e.pop("FISHERLAB_FORKSERVER_CHILD", None)
    yield script, e
    for lock in short.rglob("*.lock"):
        pid = lock.read_text().strip()
        if pid:
            try:
                os.kill(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass
    shutil.rmtree(short, ignore_errors=True)


def run(script, env, *args, cwd=None, **extra):
    """The finished client (its ``stdout``, ``stderr``, ``returncode``, ``pid``) and the
    job's report of itself."""
    p = subprocess.Popen([sys.executable, str(script), *args], env={**env, **extra}, cwd=cwd, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    p.stdout_text, p.stderr = p.communicate(timeout=120)
    lines = [line for line in p.stdout_text.splitlines() if line.startswith("{")]
    return p, (json.loads(lines[0]) if lines else None)


def test_a_job_runs_in_a_child_of_the_server_with_the_clients_streams_cwd_environment_arguments_and_code(
        env, tmp_path):  # fmt: skip
    script, e = env
    p, info = run(script, e, "a", "b c", cwd=tmp_path, XX="1", CODE="3")
    assert p.returncode == 3, p.stderr
    assert "an error line" in p.stderr
    assert info["forked"] == "1" and info["pid"] != p.pid  # a child, not the client
    assert info["cwd"] == str(tmp_path) and info["argv"] == [str(script), "a", "b c"] and info["xx"] == "1"
    assert info["before"] == ["torch"], "the server imports torch, never fisherlab"
    assert info["fisherlab"] == str(SRC / "fisherlab" / "__init__.py"), "the job imports its own checkout's code"
    p2, info2 = run(script, e, cwd=tmp_path, XX="2")
    assert p2.returncode == 0 and info2["xx"] == "2"
    assert info2["ppid"] == info["ppid"] and info2["pid"] != info["pid"], "one server, a child per job"


def test_off_in_a_slurm_job_or_in_the_child_the_job_runs_in_its_own_process(env, tmp_path):
    script, e = env
    e = {**e, "TMPDIR": tempfile.mkdtemp(prefix="fs", dir="/tmp")}  # a server started would be seen here
    for extra in ({"CONFIG": "{}"}, {"CONFIG": '{"forkserver": false}'}, {"SLURM_JOB_ID": "12"},
                  {"FISHERLAB_FORKSERVER_CHILD": "1"}):  # fmt: skip
        p = subprocess.Popen([sys.executable, str(script)], env={**e, **extra}, stdout=subprocess.PIPE, text=True)
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        assert f'"pid": {p.pid},' in out, extra
    assert not list(Path(e["TMPDIR"]).rglob("*")), "no server was started"
    shutil.rmtree(e["TMPDIR"])


def test_no_server_to_be_had_runs_the_job_in_its_own_process_saying_so(env, tmp_path):
    script, e = env
    blocked = Path(e["TMPDIR"]) / "file"
    blocked.write_text("")  # TMPDIR a file: the socket's folder cannot be made
    p = subprocess.Popen([sys.executable, str(script)], env={**e, "TMPDIR": str(blocked)}, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)  # fmt: skip
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and f'"pid": {p.pid},' in out
    assert "forkserver: none reachable" in err


def test_an_exception_in_the_job_exits_1_with_its_traceback(env):
    script, e = env
    p, _ = run(script, e, WHAT="raise")
    assert p.returncode == 1
    assert "Traceback" in p.stderr and "RuntimeError: the job failed" in p.stderr


def test_the_job_ends_as_an_interpreter_does_its_threads_joined_then_atexit(env):
    script, e = env
    p, info = run(script, e, WHAT="exit")
    assert info["forked"] == "1" and p.returncode == 0
    assert p.stdout_text.splitlines()[-2:] == ["thread done", "atexit ran"]


def test_a_job_killed_by_a_signal_ends_its_client_by_the_same_signal(env):
    script, e = env
    p, info = run(script, e, WHAT="sigkill")
    assert info["forked"] == "1"
    assert p.returncode == -signal.SIGKILL


def _start_waiting(script, e, tmp_path):
    ready, mark = tmp_path / "ready", tmp_path / "mark"
    p = subprocess.Popen([sys.executable, str(script)], env={**e, "WHAT": "wait", "READY": str(ready),
                                                             "MARK": str(mark)})  # fmt: skip
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert time.monotonic() < deadline and p.poll() is None
        time.sleep(0.05)
    return p, mark


def test_sigterm_to_the_client_is_passed_on_to_the_job(env, tmp_path):
    script, e = env
    p, mark = _start_waiting(script, e, tmp_path)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 7, "the job's own SIGTERM handler decided the exit code"
    assert mark.read_text() == str(int(signal.SIGTERM))


def test_a_job_whose_client_is_sigkilled_gets_sigterm(env, tmp_path):
    script, e = env
    p, mark = _start_waiting(script, e, tmp_path)
    p.kill()
    p.wait(timeout=60)
    deadline = time.monotonic() + 30
    while not mark.exists():
        assert time.monotonic() < deadline, "the orphaned job kept running"
        time.sleep(0.05)
    assert mark.read_text() == str(int(signal.SIGTERM))
