"""Load a page in headless Chromium (Debian's package, ``make browser``) and read back what the browser made of it,
over the Chrome DevTools Protocol.

The protocol runs over ``--remote-debugging-pipe``: Chromium reads commands on its file descriptor 3 and writes
answers and events on 4, each message one JSON object followed by a NUL byte (what Puppeteer and Playwright use).
No port, no websocket package, no chromedriver. :func:`load` opens the page in a fresh profile, waits for its load
event, lets every image finish decoding, evaluates a script in the page and returns its JSON value together with
everything the page reported: JavaScript exceptions (``Runtime.exceptionThrown``), ``console.error`` /
``console.assert`` calls and the browser's own error log entries (``Log.entryAdded``: failed resources, blocked
content, ...).
"""
from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

#: Where the browser is: $CHROMIUM, else the Debian package's launcher on PATH.
CHROMIUM_NAMES = ("chromium", "chromium-browser")


def chromium_path() -> str | None:
    return os.environ.get("CHROMIUM") or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


@dataclass
class PageLoad:
    value: object                                   # the evaluated script's JSON value
    errors: list[str] = field(default_factory=list)  # exceptions, console errors, error log entries
    version: str = ""                                # Browser.getVersion's product


class DevToolsError(RuntimeError):
    pass


class _Pipe:
    def __init__(self, proc: subprocess.Popen, to_browser: int, from_browser: int, stderr_path: Path):
        self.proc, self.to_browser, self.from_browser, self.stderr_path = proc, to_browser, from_browser, stderr_path
        self.buffer, self.next_id, self.events = b"", 0, []

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.from_browser], [], [], left)[0]:
                raise DevToolsError(f"no answer from Chromium in time; its stderr ends: {self.stderr_tail()}")
            chunk = os.read(self.from_browser, 1 << 20)
            if not chunk:
                raise DevToolsError(f"Chromium closed the pipe (exit {self.proc.poll()}): {self.stderr_tail()}")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def wait_for(self, predicate, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            message = self._message(deadline)
            if predicate(message):
                return message
            self.events.append(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        answer = self.wait_for(lambda m, i=self.next_id: m.get("id") == i, timeout)
        if "error" in answer:
            raise DevToolsError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def stderr_tail(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


def _page_errors(events: list[dict], session: str) -> list[str]:
    """The page's exceptions, console errors and error log entries, as lines."""
    errors = []
    for event in events:
        if event.get("sessionId") != session:
            continue
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            errors.append(f"exception: {text} ({details.get('url', '')}:{details.get('lineNumber')})")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            words = [str(a.get("value", a.get("description", ""))) for a in params.get("args", [])]
            errors.append(f"console.{params['type']}: {' '.join(words)}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            errors.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip())
    return errors


def load(page: Path, expression: str, *, workdir: Path, timeout: float = 120) -> PageLoad:
    """Open ``page`` (a local file) in a new headless Chromium, wait for its load event, then evaluate
    ``expression`` (JavaScript; may return a promise, which is awaited) in it and return its value (JSON-able) with
    the errors the page reported until then. The browser is closed before returning."""
    binary = chromium_path()
    if binary is None:
        raise FileNotFoundError("no chromium on PATH: run `make browser` (Debian's chromium package)")
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-", dir=workdir))
    stderr_path = workdir / "chromium-stderr.txt"
    cmd_read, cmd_write = os.pipe()   # we write commands -> Chromium's fd 3
    out_read, out_write = os.pipe()   # Chromium's fd 4 -> we read
    args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
            "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
            f"--user-data-dir={profile}", "about:blank"]
    with open(stderr_path, "wb") as stderr:
        # bash puts the two pipe ends on descriptors 3 and 4, then becomes the browser (the Debian launcher is itself
        # a shell script that execs the real binary, so the descriptors reach it).
        proc = subprocess.Popen(["bash", "-c", f'exec "$@" 3<&{cmd_read} 4>&{out_write}', "chromium", *args],
                                pass_fds=(cmd_read, out_write), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=stderr)
    os.close(cmd_read)
    os.close(out_write)
    pipe = _Pipe(proc, cmd_write, out_read, stderr_path)
    try:
        version = pipe.call("Browser.getVersion", timeout=timeout)["product"]
        target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            pipe.call(f"{domain}.enable", session=session)
        navigated = pipe.call("Page.navigate", {"url": page.resolve().as_uri()}, session=session, timeout=timeout)
        if navigated.get("errorText"):
            raise DevToolsError(f"navigation to {page} failed: {navigated['errorText']}")
        pipe.wait_for(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == session, timeout)
        result = pipe.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True}, session=session, timeout=timeout)
        if "exceptionDetails" in result:
            raise DevToolsError(f"the test's own script failed: {result['exceptionDetails']}")
        value = result["result"].get("value")
        return PageLoad(value=value, errors=_page_errors(pipe.events, session), version=version)
    finally:
        try:
            pipe.call("Browser.close", timeout=10)
        except (DevToolsError, OSError):
            pass
        os.close(cmd_write)
        os.close(out_read)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)
