"""A real single-node SLURM cluster (22.05, Debian 12) for the tests.

    python -m tests.slurm_cluster install          # apt-get the Debian packages (root)
    python -m tests.slurm_cluster start [WORKDIR]  # install if needed, start, print SLURM_CONF
    python -m tests.slurm_cluster status [WORKDIR]
    python -m tests.slurm_cluster stop [WORKDIR]

Everything the cluster writes lives in WORKDIR (default ``$FISHERLAB_SLURM_DIR`` or
``/tmp/fisherlab-slurm``): the generated configs (``etc/``), the slurmctld/slurmd state,
the logs, a private MariaDB data directory (port 3307, 127.0.0.1 only), and
``cluster.json`` with the PIDs of the daemons started here. Nothing is written to
/etc/slurm. slurmctld and slurmdbd find their configs through ``SLURM_CONF`` (slurmdbd
reads ``slurmdbd.conf`` next to it). slurmd runs "configless" (``--conf-server``): it
fetches slurm.conf/gres.conf from slurmctld and caches them in
``WORKDIR/state/slurmd/conf-cache``, symlinked from ``/run/slurm/conf``. Client commands
look for ``$SLURM_CONF``, then ``/etc/slurm/slurm.conf``, then ``/run/slurm/conf/slurm.conf``,
so they work in any shell on this host while the cluster runs. That matters: the
Snakemake jobstep plugin (0.6.1) strips every ``SLURM_*`` variable, ``SLURM_CONF``
included, before its nested ``srun`` inside the job, so a config reachable only through
``SLURM_CONF`` breaks every Snakemake job ("srun: fatal: Could not establish a
configuration source").

System paths touched: munge's (``/etc/munge/munge.key`` is created when missing,
``/run/munge``), because libslurm's auth/munge talks to the default munge socket, and the
``/run/slurm/conf`` symlink (removed again by stop()).

The config templates live in ``.ci/slurm/`` (``slurm.conf.in``, ``slurmdbd.conf.in``,
``gres.conf``); ``@NAME@`` placeholders are filled in by :func:`render_configs`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / ".ci" / "slurm"
DEFAULT_WORKDIR = Path(os.environ.get("FISHERLAB_SLURM_DIR", "/tmp/fisherlab-slurm"))

PACKAGES = ["slurm-wlm", "slurmctld", "slurmd", "slurmdbd", "munge", "mariadb-server"]
# binaries the cluster needs, besides the packages being installed
BINARIES = [
    "slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "sacctmgr", "sinfo",
    "squeue", "scancel", "scontrol", "munged", "munge", "unmunge",
    "mariadbd", "mariadb-install-db", "mariadb",
]

ACCOUNT = "proj"
CLUSTER_NAME = "local"
SLURM_USER = "root"  # slurmctld/slurmdbd run as root: no permission fiddling in WORKDIR
DB_PASSWORD = "slurmpw"
DEFAULT_PORTS = {"slurmctld": 6817, "slurmd": 6818, "slurmdbd": 6819, "mysql": 3307}
# start order; stop() goes backwards
DAEMONS = ["munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd"]
RUN_CONF_LINK = "/run/slurm/conf"  # configless slurmd's cache link, read by clients


class SlurmClusterError(RuntimeError):
    pass


# --------------------------------------------------------------------------- helpers


def _log(msg: str) -> None:
    print(f"[slurm_cluster {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise SlurmClusterError(
            f"{what} needs root (apt-get, munge key, daemons); running as uid {os.geteuid()}. "
            "Deselect these tests with -m 'not slurm'."
        )


def _run(cmd, env=None, check=True, timeout=60, input=None) -> subprocess.CompletedProcess:
    p = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, input=input,
        check=False,
    )
    if check and p.returncode != 0:
        raise SlurmClusterError(
            f"command failed (rc={p.returncode}): {' '.join(map(str, cmd))}\n"
            f"stdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-2000:]}"
        )
    return p


def _pid_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _pid_is(pid: int, name: str) -> bool:
    """True if pid is alive and runs the executable `name` (guards against PID reuse)."""
    if not _pid_alive(pid):
        return False
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return False
    return Path(argv0).name == name


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "".join(Path(path).read_text(errors="replace").splitlines(True)[-n:])
    except OSError:
        return ""


def _wait(pred, timeout: float, what: str, procs: dict | None = None, interval=0.25,
          log: Path | None = None, detail=None):
    """Poll pred() until truthy; fail early if one of our daemons died.

    On failure the error carries detail() and the tail of log, if given."""
    t0 = time.monotonic()
    last_exc = None
    while time.monotonic() - t0 < timeout:
        try:
            r = pred()
            if r:
                return r
        except Exception as e:  # noqa: BLE001 - keep polling, report the last one
            last_exc = e
        for name, p in (procs or {}).items():
            if p is not None and p.poll() is not None:
                raise SlurmClusterError(
                    f"{name} exited with rc={p.returncode} while waiting for {what}"
                    + (f"\n--- {log}:\n{_tail(log)}" if log else "")
                )
        time.sleep(interval)
    msg = f"timed out after {timeout:.0f}s waiting for {what}"
    if last_exc is not None:
        msg += f": {last_exc}"
    if detail is not None:
        with contextlib.suppress(Exception):
            msg += f"\n{detail()}"
    if log:
        msg += f"\n--- {log}:\n{_tail(log)}"
    raise SlurmClusterError(msg)


def short_hostname() -> str:
    return subprocess.run(
        ["hostname", "-s"], capture_output=True, text=True, check=True
    ).stdout.strip()


# --------------------------------------------------------------------------- packages


def _dpkg_installed(pkg: str) -> bool:
    p = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True, check=False
    )
    return p.returncode == 0 and p.stdout.strip().endswith("installed") and (
        "not-installed" not in p.stdout
    )


def ensure_packages() -> list[str]:
    """apt-get install the Debian packages that are missing. Returns what was installed."""
    missing = [p for p in PACKAGES if not (shutil.which("dpkg-query") and _dpkg_installed(p))]
    if not missing:
        absent = [b for b in BINARIES if not shutil.which(b)]
        if absent:
            raise SlurmClusterError(
                f"packages {PACKAGES} are installed but {absent} are not on PATH "
                f"(PATH={os.environ.get('PATH')})"
            )
        return []
    _require_root("Installing " + " ".join(missing))
    if not shutil.which("apt-get"):
        raise SlurmClusterError(f"apt-get not found; install by hand: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    t0 = time.monotonic()
    _log(f"apt-get install -y {' '.join(missing)}")
    cmd = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-q", *missing]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200, check=False)
    if p.returncode != 0:  # stale package lists? update once and retry
        _log("apt-get install failed, running apt-get update and retrying")
        subprocess.run(
            ["apt-get", "-o", "DPkg::Lock::Timeout=300", "update", "-q"],
            env=env, capture_output=True, text=True, timeout=600, check=False,
        )
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200,
                           check=False)
    if p.returncode != 0:
        raise SlurmClusterError(
            f"apt-get install failed (rc={p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        )
    still = [p for p in PACKAGES if not _dpkg_installed(p)]
    if still:
        raise SlurmClusterError(f"apt-get succeeded but {still} are still not installed")
    _log(f"installed {missing} in {time.monotonic() - t0:.1f}s")
    return missing


# --------------------------------------------------------------------------- configs


def node_hardware() -> str:
    """'CPUs=.. Boards=.. SocketsPerBoard=.. CoresPerSocket=.. ThreadsPerCore=.. RealMemory=..'"""
    try:
        out = _run(["slurmd", "-C"], timeout=30).stdout.splitlines()[0]
        fields = [f for f in out.split() if not f.startswith("NodeName=")]
        kv = dict(f.split("=", 1) for f in fields)
        # leave a little headroom: slurmd drains a node whose RealMemory exceeds what it sees
        kv["RealMemory"] = str(max(500, int(int(kv["RealMemory"]) * 0.95)))
        keys = ["CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore",
                "RealMemory"]
        return " ".join(f"{k}={kv[k]}" for k in keys if k in kv)
    except Exception:  # noqa: BLE001
        cpus = os.cpu_count() or 1
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        mem_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
        return f"CPUs={cpus} RealMemory={int(mem_kb / 1024 * 0.95)}"


def render_configs(etc: Path, values: dict[str, str]) -> Path:
    """Write slurm.conf, slurmdbd.conf (mode 600) and gres.conf into etc/; return slurm.conf."""
    etc.mkdir(parents=True, exist_ok=True)
    for name in ["slurm.conf", "slurmdbd.conf", "gres.conf"]:
        src = TEMPLATES / (name + ".in")
        if not src.exists():
            src = TEMPLATES / name
        text = src.read_text()
        for k, v in values.items():
            text = text.replace(f"@{k}@", str(v))
        leftover = re.findall(r"@([A-Z_]+)@", text)
        if leftover:
            raise SlurmClusterError(f"unfilled placeholders in {src}: {leftover}")
        dst = etc / name
        dst.write_text(text)
        if name == "slurmdbd.conf":  # slurmdbd insists: owned by SlurmUser, mode 600
            pw = pwd.getpwnam(SLURM_USER)
            os.chown(dst, pw.pw_uid, pw.pw_gid)
            os.chmod(dst, 0o600)
        else:
            os.chmod(dst, 0o644)
    return etc / "slurm.conf"


# --------------------------------------------------------------------------- cluster


@dataclass
class Cluster:
    workdir: Path
    host: str
    ports: dict[str, int]
    pids: dict[str, int] = field(default_factory=dict)  # daemons started by us only
    reused: bool = False  # True: found running (started elsewhere); the fixture won't stop it
    start_seconds: float = 0.0  # wall time of start_cluster (0 when reused)
    install_seconds: float = 0.0  # set by the pytest fixture: apt-get time (0: nothing installed)
    _procs: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def slurm_conf(self) -> Path:
        return self.workdir / "etc" / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """os.environ plus SLURM_CONF: pass to subprocesses that call SLURM tools."""
        return dict(os.environ, SLURM_CONF=str(self.slurm_conf))

    @property
    def account(self) -> str:
        return ACCOUNT

    @property
    def state_file(self) -> Path:
        return self.workdir / "cluster.json"

    def run(self, *cmd, check=True, timeout=60) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster."""
        return _run(list(cmd), env=self.env, check=check, timeout=timeout)

    def save(self) -> None:
        self.state_file.write_text(json.dumps(
            {"host": self.host, "ports": self.ports, "pids": self.pids,
             "slurm_conf": str(self.slurm_conf), "started": time.time()}, indent=1))

    @classmethod
    def load(cls, workdir: Path) -> Cluster | None:
        f = Path(workdir) / "cluster.json"
        if not f.exists():
            return None
        d = json.loads(f.read_text())
        return cls(workdir=Path(workdir), host=d["host"], ports=d["ports"],
                   pids={k: int(v) for k, v in d["pids"].items()})

    def alive(self) -> dict[str, bool]:
        return {name: _pid_is(pid, name) for name, pid in self.pids.items()}

    def is_up(self) -> bool:
        """Our daemons alive and the controller answering."""
        if not self.pids or not all(self.alive().values()):
            return False
        p = self.run("sinfo", "-h", "-o", "%t", check=False, timeout=15)
        return p.returncode == 0 and bool(p.stdout.strip())

    def stop(self, timeout: float = 30) -> None:
        """Stop the daemons we started, by recorded PID only, in reverse start order."""
        if any(self.alive().get(n) for n in ("slurmctld",)):
            # cancel leftover jobs, so that no slurmstepd outlives slurmd
            self.run("scancel", "--user", "root", check=False, timeout=15)
            with contextlib.suppress(SlurmClusterError):
                _wait(lambda: not self.run("squeue", "-h", check=False, timeout=15)
                      .stdout.strip(), 20, "jobs to leave the queue")
        for name in reversed(DAEMONS):
            pid = self.pids.get(name)
            if pid is None or not _pid_is(pid, name):
                continue
            _log(f"stopping {name} (pid {pid})")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            t0 = time.monotonic()
            while time.monotonic() - t0 < timeout:
                proc = self._procs.get(name)
                if proc is not None:
                    proc.poll()  # reap our own child so it doesn't linger as a zombie
                if not _pid_alive(pid):
                    break
                time.sleep(0.1)
            else:
                _log(f"{name} (pid {pid}) ignored SIGTERM for {timeout}s, sending SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                if name in self._procs:
                    self._procs[name].wait(10)
                else:
                    _wait(lambda p=pid: not _pid_alive(p), 10, f"{name} to die")
        for p in self._procs.values():  # reap
            with contextlib.suppress(Exception):
                p.wait(1)
        self.pids = {}
        self.state_file.unlink(missing_ok=True)
        # the configless cache link of our slurmd: don't leave clients a dead cluster's config
        link = Path(RUN_CONF_LINK)
        with contextlib.suppress(OSError):
            if link.is_symlink() and str(Path(os.readlink(link))).startswith(str(self.workdir)):
                link.unlink()


def _spawn(name: str, cmd: list[str], log: Path, env=None, user: str | None = None):
    """Start a foreground daemon in its own session (setsid) with output to log."""
    with open(log, "ab") as out:
        p = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=env, start_new_session=True, close_fds=True,
            user=user, group=(pwd.getpwnam(user).pw_gid if user else None),
            extra_groups=([] if user else None),
        )
    _log(f"started {name} (pid {p.pid}): {' '.join(cmd)}")
    return p


def _munge_works() -> bool:
    p = subprocess.run("munge -n | unmunge", shell=True, capture_output=True, timeout=10,
                       check=False)
    return p.returncode == 0


def _setup_munge(procs: dict, pids: dict, log_dir: Path) -> None:
    if _munge_works():
        _log("munged already running (not ours): reusing it, it will not be stopped")
        return
    pw = pwd.getpwnam("munge")
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        _log("creating /etc/munge/munge.key")
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(os.urandom(1024))
        os.chown(key, pw.pw_uid, pw.pw_gid)
        os.chmod(key, 0o400)
    for d, mode in [("/run/munge", 0o755), ("/var/lib/munge", 0o700), ("/var/log/munge", 0o700)]:
        Path(d).mkdir(parents=True, exist_ok=True)
        os.chown(d, pw.pw_uid, pw.pw_gid)
        os.chmod(d, mode)
    procs["munged"] = _spawn("munged", ["munged", "-F"], log_dir / "munged.out", user="munge")
    pids["munged"] = procs["munged"].pid
    _wait(_munge_works, 20, "munged", procs, log=log_dir / "munged.out")


def _setup_mariadb(workdir: Path, port: int, procs: dict, pids: dict, log_dir: Path) -> None:
    datadir = workdir / "mysql"
    sock = workdir / "run" / "mysqld.sock"
    if not (datadir / "mysql").is_dir():
        shutil.rmtree(datadir, ignore_errors=True)
        _run(["mariadb-install-db", "--no-defaults", "--user=root", f"--datadir={datadir}",
              "--auth-root-authentication-method=socket", "--skip-test-db"], timeout=180)
    procs["mariadbd"] = _spawn("mariadbd", [
        "mariadbd", "--no-defaults", "--user=root", f"--datadir={datadir}",
        "--bind-address=127.0.0.1", f"--port={port}", f"--socket={sock}",
        f"--pid-file={workdir / 'run' / 'mariadbd.pid'}",
        f"--log-error={log_dir / 'mariadb.log'}", "--skip-name-resolve",
        "--innodb-buffer-pool-size=64M", "--skip-log-bin",
    ], log_dir / "mariadbd.out")
    pids["mariadbd"] = procs["mariadbd"].pid
    client = ["mariadb", "--no-defaults", f"--socket={sock}", "-u", "root"]
    _wait(lambda: subprocess.run(client + ["-e", "SELECT 1"], capture_output=True, check=False)
          .returncode == 0, 60, "mariadbd", procs, log=log_dir / "mariadb.log")
    sql = "".join(
        f"CREATE USER IF NOT EXISTS 'slurm'@'{h}' IDENTIFIED BY '{DB_PASSWORD}';"
        f"GRANT ALL ON slurm_acct_db.* TO 'slurm'@'{h}';"
        for h in ("localhost", "127.0.0.1")
    ) + "FLUSH PRIVILEGES;"
    _run(client + ["-e", sql])


def start_cluster(workdir: Path | str | None = None, ports: dict[str, int] | None = None,
                  timeout: float = 120) -> Cluster:
    """Start munged, mariadbd, slurmdbd, slurmctld, slurmd; return the Cluster.

    If a cluster recorded in workdir is already up, it is returned with reused=True.
    A half-alive one is an error (stop it first). Ports that are taken are an error.
    """
    _require_root("Starting the SLURM test cluster")
    t0 = time.monotonic()
    workdir = Path(workdir or DEFAULT_WORKDIR).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    absent = [b for b in BINARIES if not shutil.which(b)]
    if absent:
        raise SlurmClusterError(f"missing binaries {absent}: call ensure_packages() first")
    with open(workdir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # serialize concurrent starts on one workdir
        return _start_locked(workdir, ports, timeout, t0)


def _start_locked(workdir: Path, ports: dict[str, int] | None, timeout: float,
                  t0: float) -> Cluster:
    old = Cluster.load(workdir)
    if old is not None:
        alive = old.alive()
        if alive and all(alive.values()) and old.is_up():
            _log(f"reusing the cluster already running from {workdir}")
            old.reused = True
            return old
        if any(alive.values()):
            raise SlurmClusterError(
                f"a cluster from {workdir} is partly running ({alive}); stop it with "
                f"`python -m tests.slurm_cluster stop {workdir}`"
            )
        old.state_file.unlink()  # stale record

    ports = {**DEFAULT_PORTS, **(ports or {})}
    taken = {k: v for k, v in ports.items() if not _port_free(v)}
    if taken:
        raise SlurmClusterError(
            f"ports already in use: {taken} (another SLURM/MariaDB?). Stop it, or pass "
            "other ports (FISHERLAB_SLURM_PORT_BASE)."
        )
    # a fresh cluster every time: wipe old state (also the accounting DB, so that job
    # ids in sacct are never ambiguous)
    for sub in ["etc", "state", "log", "run", "mysql"]:
        shutil.rmtree(workdir / sub, ignore_errors=True)
    state, log_dir, run_dir = workdir / "state", workdir / "log", workdir / "run"
    for d in [state / "slurmctld", state / "slurmd", log_dir, run_dir]:
        d.mkdir(parents=True, exist_ok=True)

    if Path("/etc/slurm/slurm.conf").exists():
        _log("WARNING: /etc/slurm/slurm.conf exists: client commands without SLURM_CONF "
             "(e.g. the nested srun inside Snakemake jobs) will use it, not this cluster")
    host = short_hostname()
    conf = render_configs(workdir / "etc", {
        "CLUSTER": CLUSTER_NAME, "HOST": host, "SLURM_USER": SLURM_USER,
        "SLURMCTLD_PORT": ports["slurmctld"], "SLURMD_PORT": ports["slurmd"],
        "SLURMDBD_PORT": ports["slurmdbd"], "MYSQL_PORT": ports["mysql"],
        "STATE_DIR": state, "LOG_DIR": log_dir, "RUN_DIR": run_dir,
        "DB_PASSWORD": DB_PASSWORD, "NODE_HARDWARE": node_hardware(),
    })
    cluster = Cluster(workdir=workdir, host=host, ports=ports)
    env = cluster.env
    procs, pids = cluster._procs, cluster.pids
    try:
        _setup_munge(procs, pids, log_dir)
        cluster.save()
        _setup_mariadb(workdir, ports["mysql"], procs, pids, log_dir)
        cluster.save()

        procs["slurmdbd"] = _spawn("slurmdbd", ["slurmdbd", "-D"], log_dir / "slurmdbd.out",
                                   env=env)
        pids["slurmdbd"] = procs["slurmdbd"].pid
        cluster.save()
        _wait(lambda: cluster.run("sacctmgr", "-n", "-P", "list", "cluster",
                                  check=False, timeout=15).returncode == 0,
              timeout, "slurmdbd (sacctmgr list cluster)", procs,
              log=log_dir / "slurmdbd.log")
        if CLUSTER_NAME not in cluster.run("sacctmgr", "-n", "-P", "list", "cluster",
                                           "format=cluster").stdout.split():
            cluster.run("sacctmgr", "-i", "add", "cluster", CLUSTER_NAME)

        procs["slurmctld"] = _spawn("slurmctld", ["slurmctld", "-D", "-i"],
                                    log_dir / "slurmctld.out", env=env)
        pids["slurmctld"] = procs["slurmctld"].pid
        cluster.save()
        _wait(lambda: cluster.run("scontrol", "ping", check=False, timeout=15)
              .stdout.find("is UP") >= 0, timeout, "slurmctld (scontrol ping)", procs,
              log=log_dir / "slurmctld.log")

        # configless slurmd: it caches the config in /run/slurm/conf (see module doc)
        slurmd_env = {k: v for k, v in env.items() if k != "SLURM_CONF"}
        procs["slurmd"] = _spawn(
            "slurmd", ["slurmd", "-D", "--conf-server", f"{host}:{ports['slurmctld']}"],
            log_dir / "slurmd.out", env=slurmd_env)
        pids["slurmd"] = procs["slurmd"].pid
        cluster.save()
        _wait(lambda: cluster.run("sinfo", "-h", "-N", "-o", "%t", check=False,
                                  timeout=15).stdout.split() == ["idle"],
              timeout, "the node to be idle in sinfo", procs, log=log_dir / "slurmd.log",
              detail=lambda: cluster.run("sinfo", "-N", "-R", "-o", "%N %t %E",
                                         check=False).stdout)

        cluster.run("sacctmgr", "-i", "add", "account", ACCOUNT,
                    "Description=tests", "Organization=tests")
        cluster.run("sacctmgr", "-i", "add", "user", "root", f"account={ACCOUNT}")
        # wait until slurmctld's association cache knows root@proj (sbatch -A proj)
        _wait(lambda: "Account=" + ACCOUNT in cluster.run(
            "scontrol", "show", "assoc_mgr", "users=root", f"accounts={ACCOUNT}",
            "flags=assoc", check=False, timeout=15).stdout,
              30, f"association root@{ACCOUNT} in slurmctld", procs,
              log=log_dir / "slurmctld.log")
    except BaseException:
        _log(f"start failed; logs in {log_dir}; stopping what was started")
        with contextlib.suppress(Exception):
            cluster.stop()
        raise
    cluster.start_seconds = time.monotonic() - t0
    _log(f"cluster up in {cluster.start_seconds:.1f}s; export SLURM_CONF={conf}")
    return cluster


def stop_cluster(workdir: Path | str | None = None) -> bool:
    """Stop the cluster recorded in workdir (from any process). False if none recorded."""
    c = Cluster.load(Path(workdir or DEFAULT_WORKDIR).resolve())
    if c is None:
        return False
    c.stop()
    return True


def _port_overrides() -> dict[str, int]:
    base = os.environ.get("FISHERLAB_SLURM_PORT_BASE")
    if not base:
        return {}
    b = int(base)
    return {"slurmctld": b, "slurmd": b + 1, "slurmdbd": b + 2, "mysql": b + 3}


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tests.slurm_cluster", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["install", "start", "stop", "status"])
    ap.add_argument("workdir", nargs="?", default=str(DEFAULT_WORKDIR))
    a = ap.parse_args(argv)
    if a.action == "install":
        t0 = time.monotonic()
        got = ensure_packages()
        print(f"installed: {got or 'nothing (all present)'} in {time.monotonic() - t0:.1f}s")
    elif a.action == "start":
        ensure_packages()
        c = start_cluster(a.workdir, ports=_port_overrides())
        print(f"export SLURM_CONF={c.slurm_conf}")
    elif a.action == "stop":
        print("stopped" if stop_cluster(a.workdir) else f"no cluster recorded in {a.workdir}")
    elif a.action == "status":
        c = Cluster.load(Path(a.workdir).resolve())
        if c is None:
            print(f"no cluster recorded in {a.workdir}")
            return 1
        print(json.dumps({"pids": c.pids, "alive": c.alive(), "up": c.is_up(),
                          "SLURM_CONF": str(c.slurm_conf)}, indent=1))
        return 0 if c.is_up() else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
