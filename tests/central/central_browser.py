"""A headless Chromium driven through chromedriver's W3C WebDriver API (plain HTTP on
127.0.0.1), for tests of web pages."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

CHROME_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]


def browser_available() -> bool:
    return bool(shutil.which("chromedriver") and (shutil.which("chromium") or shutil.which("chromium-browser")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Browser:
    def __init__(self) -> None:
        self.port = _free_port()
        self.profile = Path(tempfile.mkdtemp(prefix="licentia-chromium-"))
        self.driver = subprocess.Popen(
            ["chromedriver", f"--port={self.port}", "--allowed-ips=127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.http.get("/status").json()["value"]["ready"]:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.driver.poll() is not None:
                self.close()
                raise RuntimeError("chromedriver did not start")
            time.sleep(0.05)
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": binary, "args": [*CHROME_ARGS, f"--user-data-dir={self.profile}"]}}}}
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        r = self.http.request(method, path, json=body)
        value = r.json().get("value")
        if r.status_code >= 400:
            raise RuntimeError(f"webdriver {method} {path}: {value}")
        return value

    def s(self, method: str, path: str, body: Any = None) -> Any:
        return self._call(method, f"/session/{self.session}{path}", body)

    def go(self, url: str) -> None:
        self.s("POST", "/url", {"url": url})

    def find(self, css: str) -> str:
        element = self.s("POST", "/element", {"using": "css selector", "value": css})
        return str(next(iter(element.values())))

    def type(self, css: str, text: str) -> None:
        self.s("POST", f"/element/{self.find(css)}/value", {"text": text})

    def click(self, css: str) -> None:
        self.s("POST", f"/element/{self.find(css)}/click", {})

    def text(self, css: str) -> str:
        return str(self.s("GET", f"/element/{self.find(css)}/text"))

    def script(self, source: str, *args: Any) -> Any:
        return self.s("POST", "/execute/sync", {"script": source, "args": list(args)})

    def wait_text(self, css: str, contains: str, limit: float = 30) -> str:
        """Poll until the element's text contains `contains` (a bound, not a timed assertion)."""
        deadline = time.monotonic() + limit
        while True:
            text = self.text(css)
            if contains in text or time.monotonic() > deadline:
                return text
            time.sleep(0.05)

    def close(self) -> None:
        try:
            if getattr(self, "session", None):
                self.s("DELETE", "")
        except Exception:
            pass
        self.http.close()
        self.driver.terminate()
        self.driver.wait(timeout=30)
        shutil.rmtree(self.profile, ignore_errors=True)
