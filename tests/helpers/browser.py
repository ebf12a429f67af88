"""A real headless chromium for tests: Debian's /usr/bin/chromium driven by
tests/browser/driver.mjs (playwright-core from npm) over JSON lines.

    with Browser() as b:
        b.goto(srv.base_url + "/")
        b.fill("#search-input", "Smith")
        b.wait("document.querySelectorAll('.result-item').length > 0")
        b.click(".result-item")
        b.screenshot("panel.png")
        b.logs()        # console errors, page errors, failed requests so far

A missing chromium, node or playwright-core is a test failure, never a skip:
tools/deps.sh installs them (`make test` runs it). Every command has a time
limit; the browser is stopped by its own pid on close. Stdlib only.
"""

import json
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DRIVER = REPO / "tests" / "browser" / "driver.mjs"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SHOTS = REPO / "build" / "screenshots"


class BrowserError(AssertionError):
    pass


def missing():
    """Why the browser cannot run here, or None."""
    if not Path(CHROMIUM).exists():
        return "%s not found: install Debian's chromium (tools/deps.sh)" % CHROMIUM
    if not shutil.which("node"):
        return "node not found: install nodejs (tools/deps.sh)"
    if not (REPO / "tests" / "browser" / "node_modules" / "playwright-core").exists():
        return "tests/browser/node_modules/playwright-core missing: run tools/deps.sh"
    return None


class Browser:
    def __init__(self, timeout=20.0):
        why = missing()
        if why:
            raise BrowserError(why)
        self.timeout = timeout
        self.proc = subprocess.Popen(
            ["node", str(DRIVER)], cwd=str(DRIVER.parent), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, CHROMIUM=CHROMIUM), start_new_session=True)
        self._stderr = []
        threading.Thread(target=self._drain, daemon=True).start()
        hello = self._read(60.0)
        if not hello.get("ok"):
            raise BrowserError("the browser did not start: %s" % hello)

    def _drain(self):
        for line in self.proc.stderr:
            self._stderr.append(line)

    def _read(self, timeout):
        box = {}

        def reader():
            box["line"] = self.proc.stdout.readline()

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        t.join(timeout)
        if "line" not in box:
            self.kill()
            raise BrowserError("the browser driver did not answer within %.0f s; stderr: %s"
                               % (timeout, "".join(self._stderr[-20:])))
        if not box["line"]:
            raise BrowserError("the browser driver exited; stderr: %s" % "".join(self._stderr[-20:]))
        return json.loads(box["line"])

    def cmd(self, op, timeout=None, **kw):
        timeout = timeout or self.timeout
        kw.update(op=op, timeout=int(timeout * 1000))
        self.proc.stdin.write(json.dumps(kw) + "\n")
        self.proc.stdin.flush()
        r = self._read(timeout + 15)
        if not r.get("ok"):
            raise BrowserError("%s %s: %s" % (op, {k: v for k, v in kw.items() if k != "op"},
                                              r.get("error")))
        return r.get("value")

    def goto(self, url, **kw):
        return self.cmd("goto", url=url, **kw)

    def click(self, sel, **kw):
        return self.cmd("click", sel=sel, **kw)

    def fill(self, sel, text, **kw):
        return self.cmd("fill", sel=sel, text=text, **kw)

    def press(self, key):
        return self.cmd("press", key=key)

    def wait(self, js, **kw):
        """Waits until the JS expression is truthy; returns its value."""
        return self.cmd("wait", js=js, **kw)

    def eval(self, js):
        return self.cmd("eval", js=js)

    def viewport(self, width, height):
        return self.cmd("viewport", width=width, height=height)

    def screenshot(self, name, full=False):
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / name
        self.cmd("screenshot", path=str(path), full=full)
        return path

    def logs(self):
        return self.cmd("logs")

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "close"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=15)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                self.kill()

    def kill(self):
        """Stops the driver and the chromium it started (its own process group)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        self.kill()
