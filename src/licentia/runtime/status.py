"""The status page and JSON API, on their own port (22352), off the license path.

A deliberately small HTTP/1.1 server on asyncio (one request per connection): the full
administration UI comes later and may use a framework; the license path never goes
through HTTP.

    GET  /                         the status page (HTML, refreshes itself)
    GET  /api/status               server, containers, items and sessions in one document
    GET  /api/server               runtime facts (ports, counts, upstream servers)
    GET  /api/containers           containers and their state
    GET  /api/items[?firm=N]       product items with options, status and seats in use
    GET  /api/sessions[?firm=N&product=P&container=S]
                                   who holds what: handle, program, PID, user, host, since
    GET  /api/events[?since=SEQ]   recent grants, denials and releases
    POST /api/sessions/HANDLE/release   force-release (Authorization: Bearer TOKEN, the
                                   token is in the home's admin.token)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import html
import json
import urllib.parse
from collections.abc import Awaitable
from typing import Any, Protocol

from licentia.model import ErrorCode, LicentiaError


class Runtime(Protocol):
    """What the status page and API read and do (`licentia.runtime.queries.Queries`)."""

    @property
    def recent_seq(self) -> int: ...

    def server_info(self) -> dict[str, Any]: ...

    def container_rows(self) -> list[dict[str, Any]]: ...

    def item_rows(self, firm: int | None = None) -> list[dict[str, Any]]: ...

    def session_rows(self, firm: int | None = None, product: int | None = None,
                     container: str | None = None) -> list[dict[str, Any]]: ...

    def recent_events(self, since: int = 0, limit: int = 1000) -> list[dict[str, Any]]: ...

    def admin_release(self, handle: int, rid: int = 0) -> dict[str, Any] | Awaitable[dict[str, Any]]: ...

    def admin_token(self) -> str: ...

MAX_REQUEST = 64 * 1024


class StatusHTTP(asyncio.Protocol):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.done = False
        self.task: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        self.buf += data
        if len(self.buf) > MAX_REQUEST:
            self._respond(413, {"error": "request too large"})
            return
        head_end = self.buf.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = bytes(self.buf[:head_end]).decode("latin-1")
        lines = head.split("\r\n")
        try:
            method, target, _ = lines[0].split(" ", 2)
        except ValueError:
            self._respond(400, {"error": "malformed request line"})
            return
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        if len(self.buf) < head_end + 4 + length:
            return
        self.done = True
        self.task = asyncio.ensure_future(self._handle(method.upper(), target, headers))

    async def _handle(self, method: str, target: str, headers: dict[str, str]) -> None:
        url = urllib.parse.urlsplit(target)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        path = url.path.rstrip("/") or "/"
        rt = self.runtime
        try:
            if method == "GET":
                if path == "/":
                    self._respond(200, page(rt), content_type="text/html; charset=utf-8")
                elif path == "/api/status":
                    self._respond(200, {"server": rt.server_info(), "containers": rt.container_rows(),
                                        "items": rt.item_rows(), "sessions": rt.session_rows()})
                elif path == "/api/server":
                    self._respond(200, rt.server_info())
                elif path == "/api/containers":
                    self._respond(200, rt.container_rows())
                elif path == "/api/items":
                    self._respond(200, rt.item_rows(_int(query.get("firm"))))
                elif path == "/api/sessions":
                    self._respond(200, rt.session_rows(_int(query.get("firm")), _int(query.get("product")),
                                                       query.get("container")))
                elif path == "/api/events":
                    since = _int(query.get("since")) or 0
                    self._respond(200, rt.recent_events(since))
                else:
                    self._respond(404, {"error": f"no such page: {path}"})
                return
            if method in ("POST", "DELETE"):
                parts = path.strip("/").split("/")
                if len(parts) >= 3 and parts[:2] == ["api", "sessions"] and (
                        (method == "POST" and parts[3:] == ["release"]) or (method == "DELETE" and len(parts) == 3)):
                    if not self._authorised(headers):
                        self._respond(401, {"error": "send the admin token: Authorization: Bearer TOKEN "
                                                     "(the token is in the runtime home's admin.token)"})
                        return
                    handle = _int(parts[2])
                    if handle is None:
                        self._respond(400, {"error": "the handle must be a number"})
                        return
                    result = rt.admin_release(handle)
                    if not isinstance(result, dict):
                        await result
                    self._respond(200, {"released": handle})
                    return
                self._respond(404, {"error": f"no such action: {method} {path}"})
                return
            self._respond(405, {"error": f"method {method} is not allowed"})
        except LicentiaError as exc:
            status = 404 if exc.code in (ErrorCode.INVALID_HANDLE, ErrorCode.CONTAINER_NOT_FOUND) else 400
            self._respond(status, {"error": exc.message, "code": int(exc.code), "hint": exc.hint})
        except Exception as exc:  # the status page must not take the runtime down
            self._respond(500, {"error": repr(exc)})

    def _authorised(self, headers: dict[str, str]) -> bool:
        auth = headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            return False
        token = self.runtime.admin_token()
        return hmac.compare_digest(auth[7:].strip().encode(), token.encode())

    def _respond(self, status: int, body: Any, *, content_type: str = "application/json") -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if isinstance(body, str):
            data = body.encode()
        else:
            data = json.dumps(body, indent=1, default=_json_default).encode()
            content_type = "application/json"
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
                  413: "Payload Too Large", 500: "Internal Server Error"}.get(status, "")
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(data)}\r\n"
                f"Cache-Control: no-store\r\nConnection: close\r\n\r\n")
        t.write(head.encode() + data)
        t.close()


def _int(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.hex()
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    return str(obj)


def _t(at: float | None) -> str:
    if not at:
        return "-"
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def page(rt: Runtime) -> str:
    """A plain status page: containers, items, sessions, recent events."""
    e = html.escape
    info = rt.server_info()
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='refresh' content='5'>",
        f"<title>licentia runtime on {e(info['host'])}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
        "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}th{background:#eee}</style>",
        "</head><body>",
        f"<h1>licentia runtime on {e(info['host'])}</h1>",
        f"<p>pid {info['pid']}, up since {_t(info['started_at'])}; "
        f"{'network server' if info['network'] else 'local only'}; "
        f"{info['sessions']} session(s), {info['connections']} connection(s). "
        f"JSON: <a href='/api/status'>/api/status</a></p>",
        "<h2>Containers</h2><table><tr><th>serial</th><th>status</th><th>items</th><th>binding</th></tr>",
    ]
    for c in rt.container_rows():
        out.append(f"<tr><td>{e(c['serial'])}</td><td>{e(c['status'])}</td><td>{c['items'] if c['items'] is not None else '-'}</td>"
                   f"<td>{e(c['binding'])}</td></tr>")
    out.append("</table><h2>Items</h2><table><tr><th>container</th><th>firm</th><th>product</th><th>status</th>"
               "<th>quantity</th><th>in use</th><th>units</th><th>valid until</th><th>text</th></tr>")
    for i in rt.item_rows():
        units = "-" if i["units"] is None else f"{i['units_remaining']}/{i['units']}"
        out.append(f"<tr><td>{e(i['container'])}</td><td>{i['firm_code']}</td><td>{i['product_code']}</td>"
                   f"<td>{e(i['status'])}</td><td>{e(str(i['quantity']))}</td><td>{i['in_use']}</td><td>{units}</td>"
                   f"<td>{_t(i['valid_until'])}</td><td>{e(str(i['text']))}</td></tr>")
    out.append("</table><h2>Sessions</h2><table><tr><th>handle</th><th>firm</th><th>product</th><th>mode</th>"
               "<th>program</th><th>PID</th><th>user</th><th>host</th><th>where</th><th>since</th></tr>")
    for s in rt.session_rows():
        out.append(f"<tr><td>{s['handle']}</td><td>{s['firm']}</td><td>{s['product']}</td><td>{e(s['mode'])}</td>"
                   f"<td>{e(s['program'])}</td><td>{s['pid'] if s['pid'] is not None else '-'}</td><td>{e(s['user'])}</td>"
                   f"<td>{e(s['host'])}</td><td>{e(s['location'])}</td><td>{_t(s['since'])}</td></tr>")
    out.append("</table><h2>Recent events</h2><table><tr><th>time</th><th>event</th><th>firm</th><th>product</th>"
               "<th>program</th><th>user</th><th>host</th><th>detail</th></tr>")
    for ev in rt.recent_events(max(rt.recent_seq - 30, 0))[::-1]:
        detail = ev.get("reason") or (f"error {ev['code']}" if ev.get("code") else "")
        out.append(f"<tr><td>{_t(ev.get('at'))}</td><td>{e(str(ev.get('event')))}</td><td>{ev.get('firm', '')}</td>"
                   f"<td>{ev.get('product', '')}</td><td>{e(str(ev.get('program', '')))}</td>"
                   f"<td>{e(str(ev.get('user', '')))}</td><td>{e(str(ev.get('host', '')))}</td><td>{e(str(detail))}</td></tr>")
    out.append("</table></body></html>")
    return "".join(out)
