"""Headless Chromium driven through chromedriver's W3C WebDriver API, with
nothing but the standard library (http.client speaks the protocol).

    with Browser(workdir) as b:
        b.open("file:///.../report.html")
        b.script("return document.title")
        b.console()          # [{level, message}], what the page logged
        b.screenshot(path)   # the whole page, as PNG

Debian's chromium and chromium-driver (scripts/bootstrap test). Chromium
runs as root here, hence --no-sandbox; it is kept off the network (no
component updates, no sync, no QUIC) and gets a new, empty profile.
"""

import base64
import http.client
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

from gracefuld_testlib import stop_process

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-quic", "--no-first-run",
                  "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars")


def missing():
    """What is not installed, as a reason to skip; None when all is."""
    need = [p for p in ("chromium", "chromedriver") if not shutil.which(p)]
    if need:
        return (f"{' and '.join(need)} not installed (scripts/bootstrap "
                "test installs chromium and chromium-driver)")
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriverError(Exception):
    pass


class Browser:
    def __init__(self, workdir=None, width=1600, height=1200):
        self.workdir = tempfile.mkdtemp(prefix="gracefuld-browser-",
                                        dir=workdir)
        self.size = (width, height)
        self.port = None
        self.driver = None
        self.session = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def _call(self, method, path, body=None, timeout=60):
        conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                          timeout=timeout)
        try:
            data = None if body is None else json.dumps(body)
            conn.request(method, path, body=data,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            out = json.loads(resp.read() or b"{}")
        finally:
            conn.close()
        value = out.get("value")
        if resp.status != 200:
            raise WebDriverError(f"{method} {path}: {resp.status} {value}")
        return value

    def start(self, timeout=60):
        self.port = free_port()
        self.log_path = os.path.join(self.workdir, "chromedriver.log")
        log = open(self.log_path, "w")
        self.driver = subprocess.Popen(
            ["chromedriver", f"--port={self.port}",
             f"--log-path={self.log_path}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while True:  # chromedriver has no readiness signal but /status
            try:
                if self._call("GET", "/status", timeout=5).get("ready"):
                    break
            except (OSError, ValueError, WebDriverError):
                pass
            if self.driver.poll() is not None or time.monotonic() > deadline:
                raise WebDriverError("chromedriver did not start; see "
                                     + self.log_path)
            time.sleep(0.1)
        args = [*CHROMIUM_FLAGS,
                f"--user-data-dir={os.path.join(self.workdir, 'profile')}",
                f"--window-size={self.size[0]},{self.size[1]}"]
        caps = {"browserName": "chrome",
                "goog:chromeOptions": {"binary": shutil.which("chromium"),
                                       "args": args},
                "goog:loggingPrefs": {"browser": "ALL"}}
        value = self._call("POST", "/session",
                           {"capabilities": {"alwaysMatch": caps}},
                           timeout=120)
        self.session = value["sessionId"]

    def stop(self):
        if self.session is not None:
            try:
                self._call("DELETE", f"/session/{self.session}")
            except (OSError, WebDriverError):
                pass
            self.session = None
        stop_process(self.driver)
        shutil.rmtree(os.path.join(self.workdir, "profile"),
                      ignore_errors=True)

    def open(self, url):
        self._call("POST", f"/session/{self.session}/url", {"url": url})

    def script(self, source, *args):
        return self._call("POST", f"/session/{self.session}/execute/sync",
                          {"script": source, "args": list(args)})

    def console(self):
        """The browser log since the last call: console messages and page
        errors, each {level, message}."""
        return self._call("POST", f"/session/{self.session}/se/log",
                          {"type": "browser"})

    def cdp(self, cmd, **params):
        """One Chrome DevTools Protocol command, through chromedriver."""
        return self._call("POST", f"/session/{self.session}/goog/cdp/execute",
                          {"cmd": cmd, "params": params})

    def screenshot(self, path, scale=1.0):
        """The whole page, not only the window, as PNG; scale < 1 makes a
        smaller file."""
        size = self.cdp("Page.getLayoutMetrics")["cssContentSize"]
        shot = self.cdp("Page.captureScreenshot", format="png",
                        captureBeyondViewport=True,
                        clip={"x": 0, "y": 0, "width": size["width"],
                              "height": size["height"], "scale": scale})
        png = base64.b64decode(shot["data"])
        with open(path, "wb") as f:
            f.write(png)
        return png
