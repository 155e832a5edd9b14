"""Headless Debian Chromium driven through the DevTools protocol, for the report test.

    python tests/browser.py install     # apt-get chromium if missing (root), print the time

No Python dependency beyond the standard library: Chromium is started with
``--remote-debugging-pipe`` and speaks the Chrome DevTools Protocol (CDP) as
NUL-terminated JSON messages on file descriptors 3 (commands in) and 4 (replies and
events out), the transport Puppeteer and Playwright use. No port, no websocket client.

The flags are those this closed network needs (``--headless --no-sandbox --disable-gpu
--disable-quic --no-first-run --disable-background-networking --disable-component-update
--disable-sync`` and a new empty ``--user-data-dir``): without the background-networking
ones Chromium's own connections to Google's hosts are refused at every start, which would
drown the page's own errors. The page's requests are all recorded (``Network`` domain),
so a report that tried to load something from outside would show up as a request, not
be hidden by these flags.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ["chromium"]
BINARIES = ["chromium", "chromium-browser"]

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
    "--hide-scrollbars",
    "--mute-audio",
]


class BrowserUnavailable(RuntimeError):
    """Chromium is missing and cannot be installed here (no root or no apt-get)."""


class BrowserError(RuntimeError):
    pass


# --------------------------------------------------------------------------- install


def _log(msg: str) -> None:
    print(f"[browser {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def find_chromium() -> str | None:
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


def ensure_chromium() -> tuple[str, float]:
    """Return (path of the chromium binary, seconds spent installing it; 0 if present).

    Installs Debian's ``chromium`` with apt-get when it is missing (root; ``apt-get
    update`` once and a retry if the package lists are stale). Raises BrowserUnavailable
    when that is impossible here, BrowserError when apt-get itself fails.
    """
    path = find_chromium()
    if path:
        return path, 0.0
    if os.geteuid() != 0:
        raise BrowserUnavailable(
            f"chromium is not installed and installing it needs root (uid {os.geteuid()}): "
            f"apt-get install {' '.join(PACKAGES)}"
        )
    if not shutil.which("apt-get"):
        raise BrowserUnavailable(
            f"chromium is not installed and apt-get is not here: install {PACKAGES} by hand"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-q",
           "--no-install-recommends", *PACKAGES]
    t0 = time.monotonic()
    _log(" ".join(cmd))
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, check=False)
    if p.returncode != 0:  # stale or absent package lists: update once and retry
        _log("apt-get install failed; apt-get update and retry")
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "update", "-q"],
                       env=env, capture_output=True, text=True, timeout=900, check=False)
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800,
                           check=False)
    if p.returncode != 0:
        raise BrowserError(
            f"apt-get install {' '.join(PACKAGES)} failed (rc={p.returncode}):\n"
            f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        )
    path = find_chromium()
    if not path:
        raise BrowserError(f"apt-get installed {PACKAGES} but no {BINARIES} is on PATH")
    seconds = time.monotonic() - t0
    _log(f"installed {PACKAGES} in {seconds:.1f} s")
    return path, seconds


def chromium_version(path: str) -> str:
    p = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    return p.stdout.strip()


# --------------------------------------------------------------------------- CDP


@dataclass
class PageLog:
    """What the page did, from the DevTools events of its session."""

    exceptions: list[str] = field(default_factory=list)  # Runtime.exceptionThrown
    console: list[tuple[str, str]] = field(default_factory=list)  # (type, text)
    log_entries: list[tuple[str, str, str]] = field(default_factory=list)  # (level, source, text)
    requests: list[str] = field(default_factory=list)  # every URL requested
    request_urls: dict[str, str] = field(default_factory=dict)  # requestId -> URL
    failed: list[tuple[str, str]] = field(default_factory=list)  # (url, errorText)
    http_errors: list[tuple[str, int]] = field(default_factory=list)  # (url, status >= 400)

    def errors(self) -> list[str]:
        """Everything that counts as an error of the page itself."""
        out = [f"uncaught exception: {e}" for e in self.exceptions]
        out += [f"console.{t}: {m}" for t, m in self.console if t in ("error", "assert")]
        out += [f"log {lvl} ({src}): {m}" for lvl, src, m in self.log_entries if lvl == "error"]
        out += [f"failed load: {u} ({e})" for u, e in self.failed]
        out += [f"HTTP {s}: {u}" for u, s in self.http_errors]
        return out


def _short(url: str, n: int = 120) -> str:
    return url if len(url) <= n else url[:n] + f"...({len(url)} chars)"


class Chromium:
    """One headless Chromium, one page, driven over the DevTools pipe.

    ``with Chromium(path, width, height) as b: b.navigate(url); b.evaluate(js); ...``
    """

    def __init__(self, path: str, width: int = 1400, height: int = 900, timeout: float = 60):
        self.path, self.width, self.height, self.timeout = path, width, height, timeout
        self.log = PageLog()
        self._id = 0
        self._buf = b""
        self._events: list[dict] = []
        self._proc: subprocess.Popen | None = None
        self._profile: tempfile.TemporaryDirectory | None = None
        self.session: str | None = None

    # -- process -----------------------------------------------------------------
    def __enter__(self) -> "Chromium":
        self._profile = tempfile.TemporaryDirectory(prefix="fisherlab-chromium-")
        to_child_r, self._to_child = os.pipe()  # we write commands, chromium reads fd 3
        self._from_child, from_child_w = os.pipe()  # chromium writes fd 4, we read

        def fds() -> None:  # in the child, before exec: put the pipe ends at fd 3 and 4
            a, b = os.dup(to_child_r), os.dup(from_child_w)  # above 4, so dup2 cannot clash
            os.dup2(a, 3)
            os.dup2(b, 4)  # dup2 clears close-on-exec on 3 and 4; all else stays CLOEXEC

        self._stderr = open(Path(self._profile.name) / "chromium.stderr", "w+b")  # noqa: SIM115
        cmd = [self.path, *FLAGS, f"--user-data-dir={self._profile.name}",
               f"--window-size={self.width},{self.height}", "about:blank"]
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr,
            preexec_fn=fds, close_fds=False,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        try:
            self._open_page()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                self.send("Browser.close", session=False, timeout=10)
            except Exception:  # noqa: BLE001 - kill below
                pass
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()  # our own child, by its Popen handle
                self._proc.wait(timeout=10)
        for fd in (getattr(self, "_to_child", None), getattr(self, "_from_child", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._to_child = self._from_child = None
        if getattr(self, "_stderr", None) is not None:
            self._stderr.close()
        if self._profile is not None:
            self._profile.cleanup()
            self._profile = None

    def stderr_tail(self, n: int = 3000) -> str:
        try:
            self._stderr.flush()
            self._stderr.seek(0)
            return self._stderr.read().decode(errors="replace")[-n:]
        except Exception:  # noqa: BLE001
            return ""

    # -- protocol ------------------------------------------------------------------
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from chromium")
            ready, _, _ = select.select([self._from_child], [], [], min(left, 1.0))
            if not ready:
                if self._proc.poll() is not None:
                    raise BrowserError(
                        f"chromium exited (rc={self._proc.returncode}):\n{self.stderr_tail()}")
                continue
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise BrowserError(f"chromium closed the DevTools pipe:\n{self.stderr_tail()}")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: bool = True,
             timeout: float | None = None) -> dict:
        """Send one CDP command (to the page's session unless session=False) and return its
        result; events that arrive meanwhile are recorded."""
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._to_child, data):]
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._record(reply)

    def wait_event(self, method: str, timeout: float | None = None) -> dict:
        """Wait for an event of the page's session (one already received counts)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for i, ev in enumerate(self._events):
                if ev["method"] == method:
                    return self._events.pop(i)
            self._record(self._read_message(deadline))

    def pump(self, seconds: float) -> None:
        """Record the events that arrive within `seconds` (late errors, late requests)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                self._record(self._read_message(deadline))
            except TimeoutError:
                return

    def _record(self, msg: dict) -> None:
        if "method" not in msg:
            return
        if self.session and msg.get("sessionId") not in (None, self.session):
            return
        m, p = msg["method"], msg.get("params", {})
        log = self.log
        if m == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            desc = (d.get("exception") or {}).get("description") or d.get("text", "")
            log.exceptions.append(f"{desc} at {_short(d.get('url', ''))}:{d.get('lineNumber')}")
        elif m == "Runtime.consoleAPICalled":
            text = " ".join(
                str(a.get("value", a.get("description", a.get("type")))) for a in p["args"])
            log.console.append((p["type"], text))
        elif m == "Log.entryAdded":
            e = p["entry"]
            log.log_entries.append((e["level"], e["source"], f"{e['text']} {_short(e.get('url', ''))}"))
        elif m == "Inspector.targetCrashed":
            log.exceptions.append("the page crashed (Inspector.targetCrashed)")
        elif m == "Network.requestWillBeSent":
            log.requests.append(p["request"]["url"])
            log.request_urls[p["requestId"]] = p["request"]["url"]
        elif m == "Network.loadingFailed":
            if not p.get("canceled"):
                url = log.request_urls.get(p.get("requestId", ""), p.get("requestId", "?"))
                log.failed.append((_short(url), p.get("errorText", "")))
        elif m == "Network.responseReceived":
            status = p["response"].get("status", 0)
            if status >= 400:
                log.http_errors.append((_short(p["response"]["url"]), status))
        self._events.append(msg)
        del self._events[:-500]  # keep the queue bounded; waits look at recent ones

    def _open_page(self) -> None:
        targets = self.send("Target.getTargets", session=False)["targetInfos"]
        pages = [t for t in targets if t["type"] == "page"]
        target = pages[0]["targetId"] if pages else self.send(
            "Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network", "Inspector"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", {
            "width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})

    # -- page ----------------------------------------------------------------------
    def navigate(self, url: str) -> None:
        self._events.clear()
        res = self.send("Page.navigate", {"url": url})
        if res.get("errorText"):
            raise BrowserError(f"navigate {url}: {res['errorText']}")
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str, timeout: float | None = None):
        """Run JS in the page (promises awaited) and return its JSON value."""
        res = self.send("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": True,
            "userGesture": True}, timeout=timeout)
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise BrowserError(
                f"JS error: {(d.get('exception') or {}).get('description') or d.get('text')}")
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30, what: str = "") -> object:
        """Poll a JS expression until truthy; return its value."""
        deadline = time.monotonic() + timeout
        wrapped = f"(() => {{ const v = ({expression}); return v instanceof Node ? true : v; }})()"
        while True:
            value = self.evaluate(wrapped)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what or expression}")
            self.pump(0.1)

    def click(self, x: float, y: float) -> None:
        """A real mouse click at viewport coordinates (hit-tested like a user's)."""
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            params = {"type": kind, "x": x, "y": y}
            if kind != "mouseMoved":
                params.update(button="left", clickCount=1)
            self.send("Input.dispatchMouseEvent", params)

    def click_element(self, locator: str, what: str, timeout: float = 30) -> None:
        """Click, like a user, the element that the JS expression `locator` returns.

        Waits until the element exists, its box has stopped moving (the report's Tailwind
        styles are compiled in the page after load and shift the layout) and it is the
        topmost element at its centre (nothing covers it), then sends a mouse click there.
        """
        probe = f"""(() => {{
            const el = ({locator});
            if (!el) return null;
            el.scrollIntoView({{block: "center", inline: "nearest"}});
            const r = el.getBoundingClientRect();
            const x = r.x + r.width / 2, y = r.y + r.height / 2;
            const top = document.elementFromPoint(x, y);
            return [x, y, r.width, r.height, !!top && (top === el || el.contains(top))];
        }})()"""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            box = self.evaluate(probe)
            if box and box[2] > 0 and box[3] > 0 and box[4] and box == last:
                self.click(box[0], box[1])
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not clickable after {timeout:.0f} s (last box {box})")
            last = box
            self.pump(0.1)

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params = {"format": "png", "captureBeyondViewport": full_page}
        data = base64.b64decode(self.send("Page.captureScreenshot", params)["data"])
        Path(path).write_bytes(data)
        return Path(path)


if __name__ == "__main__":
    if sys.argv[1:] == ["install"]:
        path, seconds = ensure_chromium()
        print(f"{path}: {chromium_version(path)} (install {seconds:.1f} s)")
    else:
        print(__doc__)
        sys.exit(2)
