"""WebAdmin on a real runtime's HTTPS port: every page in headless Chromium (Debian's
chromium and chromium-driver, through selenium), the charts checked on a screenshot, the
HTTP port's limits with raw sockets, /metrics and `licentia diag`."""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.machine_cli import command as machine_command
from tests.runtime.harness import Procs, Runtime, Vendor, base_env, make_home, wait_for
from tests.runtime.test_acl_runtime import NETWORK, Net

from licentia.model import ErrorCode, ProductItem

ADMIN_PASSWORD = "correct horse battery"
VIEWER_PASSWORD = "read only please"


def cli(home: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "licentia.cli.main", "--home", str(home), *args], input=stdin,
                          env=base_env(), capture_output=True, text=True, timeout=120)


@pytest.fixture
def served(tmp_path: Path, root: Path, vendor: Vendor, procs: Procs) -> Iterator[tuple[Runtime, Net]]:
    """A network server with 3 seats, a list reserving one for user ann, WebAdmin users,
    and some use: two seats taken, one refused by the list, one for want of seats."""
    home = tmp_path / "server"
    make_home(home, root, vendor, [ProductItem(product_code=7, quantity=3, text="CAD Pro")])
    for args in (("acl", "add", "ann-seat", "--scope", "product 10001:7", "--user", "ann", "--reserve", "1"),):
        assert cli(home, *args).returncode == 0
    assert cli(home, "webadmin", "passwd", "root", "--role", "admin", "--password-stdin",
               stdin=ADMIN_PASSWORD + "\n").returncode == 0
    assert cli(home, "webadmin", "passwd", "viewer", "--role", "read-only", "--password-stdin",
               stdin=VIEWER_PASSWORD + "\n").returncode == 0
    users = json.loads((home / "webadmin.users").read_text())
    assert ADMIN_PASSWORD not in json.dumps(users) and users["users"]["root"]["password"].startswith("scrypt$")
    assert (home / "webadmin.users").stat().st_mode & 0o077 == 0
    server = Runtime(procs, home, root, *NETWORK, "--http-head-timeout", "1")
    net = Net(server)
    try:
        assert net.access("bob")["ok"] and net.access("carl")["ok"]
        assert net.refused("dora").code is ErrorCode.ACCESS_LIST_DENIED  # the last seat is ann's
        assert net.access("ann")["ok"]
        assert net.refused("eve").code is ErrorCode.NO_MORE_LICENSES
        yield server, net
    finally:
        net.close()
        server.stop()


# -- the HTTP port without a browser -------------------------------------------------------------


def raw(server: Runtime, data: bytes, wait: float = 10.0) -> bytes:
    """Send `data` over TLS to the HTTP port and read until the server closes."""
    ctx = ssl.create_default_context(cafile=str(server.home / "tls" / "server.crt"))
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", server.status["http_port"]), timeout=wait) as s, \
            ctx.wrap_socket(s) as tls:
        tls.sendall(data)
        out = b""
        try:
            while chunk := tls.recv(65536):
                out += chunk
        except (TimeoutError, ssl.SSLError, ConnectionResetError):
            pass
        return out


@pytest.mark.slow
def test_http_port_limits_metrics_and_csrf(served: tuple[Runtime, Net]) -> None:
    server, _ = served
    assert server.status["http_scheme"] == "https"
    # the port's certificate is the runtime's own
    assert raw(server, b"GET /api/server HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 200")
    # a bad Content-Length is a 400, not a traceback
    bad = raw(server, b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\nuser=a")
    assert bad.startswith(b"HTTP/1.1 400"), bad[:200]
    two = raw(server, b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nuser=")
    assert two.startswith(b"HTTP/1.1 400"), two[:200]
    # a body past max_body is refused before it is read
    big = raw(server, b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\nConnection: close\r\n\r\n")
    assert big.startswith(b"HTTP/1.1 413"), big[:200]
    # headers past max_head: 400 and the connection closed
    huge = raw(server, b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 40000 + b"\r\n\r\n")
    assert huge.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")) or huge == b"", huge[:200]
    # ... also when it trickles in: h11 stops buffering past max_head
    slow = raw(server, b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: aaaaaaaa\r\n" * 2000)
    assert slow.startswith(b"HTTP/1.1 400") or slow == b"", slow[:200]
    # a request head that never ends is dropped after head_timeout (1 s here), answered nothing
    assert raw(server, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: 1", wait=60) == b""
    log = (server.home.parent / "server.serve.log").read_text()
    assert "Traceback" not in log and "ValueError" not in log

    metrics = urllib.request.urlopen(f"{server.http}/metrics", timeout=10).read().decode()
    in_use = [ln for ln in metrics.splitlines() if ln.startswith("licentia_seats_in_use{")]
    assert len(in_use) == 1 and in_use[0].endswith(" 3") and 'product="7"' in in_use[0]
    assert any(ln.startswith("licentia_seats_quantity{") and ln.endswith(" 3") for ln in metrics.splitlines())
    assert 'licentia_denials_total{code="1300"} 1' in metrics and 'licentia_denials_total{code="212"} 1' in metrics
    assert "licentia_sessions 3" in metrics and "licentia_acl_in_force 1" in metrics
    assert 'licentia_http_request_duration_seconds_bucket{path="api",le="+Inf"}' in metrics

    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(),
                                         urllib.request.HTTPSHandler(context=_insecure()))

    def post(path: str, fields: dict[str, str]) -> tuple[int, str]:
        data = urllib.parse.urlencode(fields).encode()
        try:
            with opener.open(f"{server.http}{path}", data=data, timeout=20) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    assert post("/login", {"user": "root", "password": "wrong"})[0] == 401
    log_in_refused = server.logged("the refused log-in", lambda e: e.get("what") == "log-in refused")
    assert log_in_refused[0]["user"] == "root" and "password" not in log_in_refused[0]
    assert post("/login", {"user": "viewer", "password": VIEWER_PASSWORD})[0] == 200
    # a read-only user sees the pages and changes nothing, even with the form's token
    page = opener.open(f"{server.http}/acl", timeout=10).read().decode()
    assert "ann-seat" in page and "add-rule" not in page
    assert post("/acl/remove", {"name": "ann-seat"})[0] == 403
    assert post("/login", {"user": "root", "password": ADMIN_PASSWORD})[0] == 200
    # without the CSRF token a logged-in administrator's form is refused
    status, text = post("/acl/remove", {"name": "ann-seat"})
    assert status == 403 and "CSRF" in text
    assert "ann-seat" in (server.home / "acl.toml").read_text()
    # with it, the change is made: the default of the product's scope becomes deny
    page = opener.open(f"{server.http}/acl", timeout=10).read().decode()
    token = re.search(r"name='csrf' value='([^']+)'", page).group(1)  # type: ignore[union-attr]
    status, text = post("/acl/default", {"csrf": token, "scope": "product 10001:7", "action": "deny"})
    assert status == 200 and "set" in text and 'id=defaults' in text
    assert '"product 10001:7" = "deny"' in (server.home / "acl.toml").read_text()
    server.logged("the change", lambda e: e.get("event") == "acl-changed" and e.get("rules") == 1)


def _insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@pytest.mark.slow
def test_diag_archive_leaves_secrets_out(served: tuple[Runtime, Net], tmp_path: Path) -> None:
    server, _ = served
    home = server.home
    (home / "runtime.toml").write_text('[directory]\nurl = "ldap://127.0.0.1:1"\npassword_file = "dir.pass"\n')
    from licentia.runtime.home import RuntimeHome

    token = RuntimeHome(home).admin_token().encode()
    out = tmp_path / "support.tar.gz"
    done = subprocess.run([*machine_command(server.machine_root), "--home", str(home), "diag", "-o", str(out)],
                          env=base_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with tarfile.open(out) as tar:
        docs = {Path(m.name).name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert {"versions.json", "configuration.json", "containers.json", "runtime.json", "usage-tail.jsonl",
            "acl.toml", "files.json"} <= set(docs)
    assert json.loads(docs["versions.json"])["starlette"] != "not installed"
    assert json.loads(docs["configuration.json"])["runtime.toml"]["directory"]["password_file"] == "(left out)"
    runtime = json.loads(docs["runtime.json"])
    assert runtime["running"] and runtime["sessions"] == 3
    assert json.loads(docs["containers.json"])[1]["status"] == "ok"
    assert b'"event":"grant"' in docs["usage-tail.jsonl"]
    blob = b"".join(docs.values())
    secrets = [token, (home / "tls" / "server.key").read_bytes()[30:90],
               json.loads((home / "webadmin.users").read_text())["users"]["root"]["password"].encode()]
    for secret in secrets:
        assert secret and secret not in blob


# -- every page in Chromium ----------------------------------------------------------------------


def browser() -> Any:
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        pytest.skip("Chromium is not installed: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--ignore-certificate-errors", "--window-size=1280,1600", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    return webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of RGB(A) bytes of a PNG (8-bit, not interlaced)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 4
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw_rows, stride = zlib.decompress(idat), width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        f = raw_rows[y * (stride + 1)]
        line = bytearray(raw_rows[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, rows


def coloured(png: bytes) -> int:
    """Pixels of the screenshot that are neither white-ish nor grey: the drawn series."""
    width, _, rows = png_pixels(png)
    channels = len(rows[0]) // width
    n = 0
    for row in rows:
        for i in range(0, len(row), channels):
            r, g, b = row[i], row[i + 1], row[i + 2]
            if max(r, g, b) - min(r, g, b) > 60:
                n += 1
    return n


@pytest.mark.slow
def test_every_page_in_chromium(served: tuple[Runtime, Net], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    server, _ = served
    base = server.http
    driver = browser()
    try:
        driver.get(f"{base}/sessions")
        assert driver.current_url.endswith("/login")  # nothing without logging in
        driver.find_element(By.NAME, "user").send_keys("root")
        driver.find_element(By.NAME, "password").send_keys(ADMIN_PASSWORD)
        driver.find_element(By.CSS_SELECTOR, "#login button").click()
        wait_for("the overview", lambda: driver.title.startswith("Overview"))
        assert "root (admin)" in driver.page_source
        cookie = driver.get_cookie("licentia_session")
        assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"

        driver.get(f"{base}/containers")
        items = driver.find_element(By.ID, "items").text
        assert "CAD Pro" in items and "10001" in items

        driver.get(f"{base}/acl")  # the editor: add a rule, see it in the file
        form = driver.find_element(By.ID, "add-rule")
        form.find_element(By.NAME, "name").send_keys("no-mallory")
        form.find_element(By.NAME, "scope").clear()
        form.find_element(By.NAME, "scope").send_keys("server")
        form.find_element(By.CSS_SELECTOR, "select[name=action] option[value=deny]").click()
        form.find_element(By.CSS_SELECTOR, "select[name=kind] option[value=user]").click()
        form.find_element(By.NAME, "values").send_keys("mallory")
        form.find_element(By.CSS_SELECTOR, "button").click()
        wait_for("the rule added", lambda: "rule no-mallory added" in driver.page_source)
        assert "no-mallory" in (server.home / "acl.toml").read_text()
        assert "no-mallory" in driver.find_element(By.ID, "rules").text
        server.logged("the edit", lambda e: e.get("event") == "webadmin" and e.get("what") == "acl add")

        driver.get(f"{base}/settings")
        driver.find_element(By.CSS_SELECTOR, "#add-server input[name=address]").send_keys("lic2.example:22350")
        driver.find_element(By.CSS_SELECTOR, "#add-server button").click()
        wait_for("the server added", lambda: "lic2.example:22350 added to the search list" in driver.page_source)
        assert "lic2.example:22350" in driver.find_element(By.ID, "servers").text
        assert "limit_concurrency" in driver.find_element(By.ID, "settings").text

        driver.get(f"{base}/diagnostics")
        facts = driver.find_element(By.ID, "facts").text
        assert "starlette" in facts and "access list in_force True" in facts

        driver.get(f"{base}/reports")
        figure = driver.find_element(By.ID, "usage-0")
        assert "Concurrent seats of product 10001:7 (peak 3)" in figure.text
        assert len(figure.find_elements(By.CSS_SELECTOR, "path.series")) == 1
        assert len(figure.find_elements(By.CSS_SELECTOR, "line.limit")) == 1  # the quantity
        png = figure.screenshot_as_png
        (tmp_path / "usage.png").write_bytes(png)
        assert coloured(png) > 300, "the usage chart is blank"
        denials = driver.find_element(By.ID, "denials")
        assert len(denials.find_elements(By.CSS_SELECTOR, "rect.bar")) == 2  # 212 and 1300, one day
        assert coloured(denials.screenshot_as_png) > 300
        assert driver.find_element(By.ID, "reservations").find_elements(By.CSS_SELECTOR, "rect.bar")

        driver.get(f"{base}/sessions")  # force release
        before = len(server.sessions())
        driver.find_element(By.CSS_SELECTOR, "#sessions form button").click()
        wait_for("the release", lambda: "released" in driver.page_source)
        assert len(server.sessions()) == before - 1

        driver.find_element(By.CSS_SELECTOR, "header form button").click()  # log out
        wait_for("the log-in page", lambda: driver.current_url.endswith("/login"))
        driver.get(f"{base}/acl")
        assert driver.current_url.endswith("/login")
    finally:
        driver.quit()
