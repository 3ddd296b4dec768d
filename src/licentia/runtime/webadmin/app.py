"""The HTTP port's application (Starlette): WebAdmin pages behind a log-in, the JSON API,
and `/metrics`.

    GET  /api/status, /api/server, /api/containers, /api/items[?firm=N],
         /api/sessions[?firm=N&product=P&container=S], /api/events[?since=SEQ]
                                   read-only JSON (as the status API always answered)
    POST /api/sessions/HANDLE/release, DELETE /api/sessions/HANDLE
                                   force-release (Authorization: Bearer TOKEN of admin.token)
    GET  /metrics                  Prometheus text
    GET  /login, POST /login, POST /logout, and the pages of `pages.NAV` (log-in needed;
         changes need the admin role and the session's CSRF token)
"""

from __future__ import annotations

import asyncio
import hmac
import os
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route

from licentia.core.acl import Action, Scope, rule_from_fields, with_default, with_rule, without_rule
from licentia.core.seats import ItemKey, SeatTable
from licentia.model import ErrorCode, LicentiaError
from licentia.runtime import searchlist
from licentia.runtime.acl import edit
from licentia.runtime.aclwatch import AclWatch
from licentia.runtime.config import SETTINGS, RuntimeConfig
from licentia.runtime.home import RuntimeHome
from licentia.runtime.queries import Queries
from licentia.runtime.usagelog import UsageLog
from licentia.runtime.webadmin import pages
from licentia.runtime.webadmin.auth import COOKIE, Session, Sessions, csrf_ok, users_path
from licentia.runtime.webadmin.metrics import Histogram, render


class AdminHost(Protocol):
    home: RuntimeHome
    config: RuntimeConfig
    host_name: str
    started_at: float
    seats: SeatTable
    queries: Queries
    acl_watch: AclWatch | None
    log: UsageLog | None
    connections: set[Any]

    @property
    def denials(self) -> dict[int, int]: ...


class BodyTooLarge(Exception):
    pass


class WebAdmin:
    def __init__(self, rt: AdminHost, *, secure: bool) -> None:
        self.rt = rt
        self.secure = secure
        self.sessions = Sessions(users_path(rt.home.path))
        self.latency = Histogram()
        self.max_body = rt.config.http_max_body
        self.max_head = rt.config.http_max_head
        page = self._page
        routes = [
            Route("/api/status", self.api_status), Route("/api/server", self.api_server),
            Route("/api/containers", self.api_containers), Route("/api/items", self.api_items),
            Route("/api/sessions", self.api_sessions), Route("/api/events", self.api_events),
            Route("/api/sessions/{handle}/release", self.api_release, methods=["POST"]),
            Route("/api/sessions/{handle}", self.api_release, methods=["DELETE"]),
            Route("/metrics", self.metrics),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/", page(self.overview)), Route("/containers", page(self.containers)),
            Route("/sessions", page(self.sessions_page)),
            Route("/sessions/{handle}/release", page(self.release, change=True), methods=["POST"]),
            Route("/acl", page(self.acl)), Route("/acl/add", page(self.acl_add, change=True), methods=["POST"]),
            Route("/acl/remove", page(self.acl_remove, change=True), methods=["POST"]),
            Route("/acl/default", page(self.acl_default, change=True), methods=["POST"]),
            Route("/reports", page(self.reports)), Route("/settings", page(self.settings)),
            Route("/settings/servers/add", page(self.server_add, change=True), methods=["POST"]),
            Route("/settings/servers/remove", page(self.server_remove, change=True), methods=["POST"]),
            Route("/diagnostics", page(self.diagnostics)),
        ]
        self.app = Starlette(routes=routes, exception_handlers={404: self.not_found, 405: self.not_allowed})
        self.asgi = self._measured

    # ================================================================== plumbing

    async def _measured(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                        send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return
        start = time.perf_counter()
        path = str(scope.get("path", ""))
        group = "api" if path.startswith("/api/") else "metrics" if path == "/metrics" else "page"

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"cache-control", b"no-store"), (b"x-frame-options", b"DENY"),
                            (b"x-content-type-options", b"nosniff"),
                            (b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'; "
                                                         b"img-src 'self' data:; form-action 'self'")]
                if self.secure:
                    headers.append((b"strict-transport-security", b"max-age=31536000"))
                message = {**message, "headers": headers}
            await send(message)

        head = sum(len(k) + len(v) + 4 for k, v in scope.get("headers", ())) + len(scope.get("raw_path") or b"")
        if head > self.max_head:  # h11 bounds a head still arriving; this bounds one that came whole
            response = PlainTextResponse(f"the request head is larger than {self.max_head} bytes", status_code=431)
            await response(scope, receive, send_with_headers)
            return
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            self.latency.observe(group, time.perf_counter() - start)

    async def body(self, request: Request) -> bytes:
        """The request body, refused past `max_body` (a declared length at once, a chunked
        body as it arrives)."""
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            raise BodyTooLarge()
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > self.max_body:
                raise BodyTooLarge()
        return bytes(data)

    async def form(self, request: Request) -> dict[str, str]:
        raw = await self.body(request)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return {}
        return {k: v[-1] for k, v in urllib.parse.parse_qs(text, keep_blank_values=True).items()}

    def session_of(self, request: Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE))

    def _page(self, handler: Callable[..., Awaitable[Response]], change: bool = False
              ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            session = self.session_of(request)
            if session is None:
                if change:
                    return PlainTextResponse("log in first", status_code=403)
                return RedirectResponse("/login", status_code=303)
            try:
                form: dict[str, str] = {}
                if change:
                    form = await self.form(request)
                    if not csrf_ok(session, form.get("csrf")):
                        return PlainTextResponse("the form is stale or not from WebAdmin (CSRF); reload the page",
                                                 status_code=403)
                    if not session.admin:
                        return PlainTextResponse("the read-only role cannot change anything", status_code=403)
                    return await handler(request, session, form)
                return await handler(request, session)
            except BodyTooLarge:
                return PlainTextResponse(f"the request body is larger than {self.max_body} bytes", status_code=413)

        return endpoint

    def html(self, title: str, body: str, session: Session | None, active: str = "",
             status: int = 200) -> HTMLResponse:
        return HTMLResponse(pages.layout(title, body, session, self.rt.host_name, active), status_code=status)

    @staticmethod
    def back(path: str, ok: str | None = None, error: str | None = None) -> RedirectResponse:
        query = urllib.parse.urlencode({k: v for k, v in (("ok", ok), ("error", error)) if v})
        return RedirectResponse(f"{path}?{query}" if query else path, status_code=303)

    def note(self, session: Session, what: str, **fields: Any) -> None:
        if self.rt.log is not None:
            self.rt.log.note({"event": "webadmin", "user": session.user, "what": what, **fields})

    async def not_found(self, request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": f"no such page: {request.url.path}"}, status_code=404)

    async def not_allowed(self, request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": f"method {request.method} is not allowed"}, status_code=405)

    # ================================================================== JSON API

    @staticmethod
    def _int(value: str | None) -> int | None:
        try:
            return int(value) if value else None
        except ValueError:
            return None

    async def api_status(self, request: Request) -> Response:
        q = self.rt.queries
        return JSONResponse({"server": q.server_info(), "containers": q.container_rows(), "items": q.item_rows(),
                             "sessions": q.session_rows()})

    async def api_server(self, request: Request) -> Response:
        return JSONResponse(self.rt.queries.server_info())

    async def api_containers(self, request: Request) -> Response:
        return JSONResponse(self.rt.queries.container_rows())

    async def api_items(self, request: Request) -> Response:
        return JSONResponse(self.rt.queries.item_rows(self._int(request.query_params.get("firm"))))

    async def api_sessions(self, request: Request) -> Response:
        p = request.query_params
        return JSONResponse(self.rt.queries.session_rows(self._int(p.get("firm")), self._int(p.get("product")),
                                                         p.get("container")))

    async def api_events(self, request: Request) -> Response:
        return JSONResponse(self.rt.queries.recent_events(self._int(request.query_params.get("since")) or 0))

    async def api_release(self, request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        token = self.rt.queries.admin_token()
        if not (auth.lower().startswith("bearer ") and hmac.compare_digest(auth[7:].strip().encode(),
                                                                           token.encode())):
            return JSONResponse({"error": "send the admin token: Authorization: Bearer TOKEN "
                                          "(the token is in the runtime home's admin.token)"}, status_code=401)
        handle = self._int(request.path_params["handle"])
        if handle is None:
            return JSONResponse({"error": "the handle must be a number"}, status_code=400)
        try:
            result = self.rt.queries.admin_release(handle)
            if not isinstance(result, dict):
                await result
        except LicentiaError as exc:
            status = 404 if exc.code in (ErrorCode.INVALID_HANDLE, ErrorCode.CONTAINER_NOT_FOUND) else 400
            return JSONResponse({"error": exc.message, "code": int(exc.code), "hint": exc.hint}, status_code=status)
        return JSONResponse({"released": handle})

    async def metrics(self, request: Request) -> Response:
        rt = self.rt
        status = rt.acl_watch.status() if rt.acl_watch is not None else {"rules": 0, "in_force": False}
        text = render(rt.queries.item_rows(), sessions=len(rt.seats), connections=len(rt.connections),
                      network_clients=len(rt.seats.clients()), denials=rt.denials, acl_rules=int(status["rules"]),
                      acl_in_force=bool(status["in_force"]), started_at=rt.started_at, latency=self.latency)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    # ================================================================== log-in

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return self.html("Log in", pages.login(None, not self.sessions.any_user()), None)
        try:
            form = await self.form(request)
        except BodyTooLarge:
            return PlainTextResponse("request body too large", status_code=413)
        user, password = form.get("user", "")[:100], form.get("password", "")[:1000]
        address = request.client.host if request.client else ""
        wait = self.sessions.locked_out(address)
        if wait > 0:
            return self.html("Log in", pages.login(f"too many wrong passwords from {address}; try again in "
                                                   f"{wait:.0f} s", False), None, status=429)
        role = await asyncio.to_thread(self.sessions.check_password, user, password) if user and password else None
        if role is None:
            self.sessions.failed(address)
            if self.rt.log is not None:
                self.rt.log.note({"event": "webadmin", "what": "log-in refused", "user": user, "address": address})
            return self.html("Log in", pages.login("wrong user name or password", False), None, status=401)
        token = self.sessions.open(user, role)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=self.secure, path="/")
        return response

    async def logout(self, request: Request) -> Response:
        session = self.session_of(request)
        try:
            form = await self.form(request)
        except BodyTooLarge:
            return PlainTextResponse("request body too large", status_code=413)
        if session is not None and csrf_ok(session, form.get("csrf")):
            self.sessions.close(request.cookies.get(COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # ================================================================== pages

    def _acl_status(self) -> dict[str, Any]:
        w = self.rt.acl_watch
        return w.status() if w is not None else {"rules": 0, "in_force": False, "enabled": True, "problem": None}

    async def overview(self, request: Request, session: Session) -> Response:
        return self.html("Overview", pages.overview(self.rt.queries.server_info(), self._acl_status()), session, "/")

    async def containers(self, request: Request, session: Session) -> Response:
        q = self.rt.queries
        return self.html("Containers and items", pages.containers(q.container_rows(), q.item_rows()), session,
                         "/containers")

    async def sessions_page(self, request: Request, session: Session) -> Response:
        p = request.query_params
        return self.html("Sessions", pages.sessions(self.rt.queries.session_rows(), session, p.get("ok"),
                                                    p.get("error")), session, "/sessions")

    async def release(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        handle = self._int(request.path_params["handle"])
        if handle is None:
            return self.back("/sessions", error="the handle must be a number")
        try:
            result = self.rt.queries.admin_release(handle)
            if not isinstance(result, dict):
                await result
        except LicentiaError as exc:
            return self.back("/sessions", error=exc.message)
        self.note(session, "release", handle=handle)
        return self.back("/sessions", ok=f"handle {handle} released")

    async def acl(self, request: Request, session: Session) -> Response:
        w = self.rt.acl_watch
        p = request.query_params
        held: list[tuple[str, int, int]] = []
        if w is not None:
            for row in self.rt.queries.item_rows():
                key = ItemKey(row["container"], row["firm_code"], row["product_code"], row["item_id"])
                h = w.gate.held(key)
                if h.total:
                    held.append((f"{key.firm_code}:{key.product_code} ({key.container})", h.total,
                                 sum(n for rule, n in h.by_charge.items() if rule is not None)))
        acl = w.gate.acl if w is not None else None
        if acl is None:
            from licentia.core.acl import EMPTY

            acl = EMPTY
        return self.html("Access list", pages.acl_page(acl, self._acl_status(), session, p.get("ok"),
                                                       p.get("error"), held), session, "/acl")

    async def _edit_acl(self, session: Session, what: str, change: Any, name: str) -> Response:
        w = self.rt.acl_watch
        if w is None:
            return self.back("/acl", error="the runtime is starting; try again")
        try:
            await asyncio.to_thread(edit, w.gate.file.path, change)
        except LicentiaError as exc:
            return self.back("/acl", error=exc.message)
        self.note(session, what, rule=name)
        w.tick()
        done = {"acl add": f"rule {name} added", "acl remove": f"rule {name} removed"}.get(what, f"{name} set")
        return self.back("/acl", ok=done)

    async def acl_add(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        name = form.get("name", "").strip()
        fields: dict[str, Any] = {"name": name, "scope": form.get("scope", "server").strip() or "server",
                                  "action": form.get("action", "allow")}
        kind = form.get("kind", "group")
        values = [v.strip() for v in form.get("values", "").split(",") if v.strip()]
        if kind == "anyone":
            fields["anyone"] = True
        elif kind in ("user", "host", "subnet", "group"):
            fields[kind] = values if len(values) != 1 else values[0]
        try:
            if form.get("reserve", "0").strip() not in ("", "0"):
                fields["reserve"] = int(form["reserve"])
            if form.get("max", "").strip():
                fields["max"] = int(form["max"])
        except ValueError:
            return self.back("/acl", error="reserve and max are numbers of seats")
        if form.get("note"):
            fields["note"] = form["note"]
        try:
            rule = rule_from_fields(fields)
        except LicentiaError as exc:
            return self.back("/acl", error=exc.message)
        return await self._edit_acl(session, "acl add", lambda acl: with_rule(acl, rule), name)

    async def acl_remove(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        name = form.get("name", "")
        return await self._edit_acl(session, "acl remove", lambda acl: without_rule(acl, name), name)

    async def acl_default(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        action_text = form.get("action", "")
        try:
            scope = Scope.parse(form.get("scope", "server") or "server")
            action = None if action_text == "unset" else Action(action_text)
        except (LicentiaError, ValueError):
            return self.back("/acl", error="give a scope (server, container SERIAL, firm FIRM or product "
                                           "FIRM:PRODUCT) and allow, deny or unset")
        return await self._edit_acl(session, "acl default", lambda acl: with_default(acl, scope, action),
                                    f"the default of {scope} to {action_text}")

    async def reports(self, request: Request, session: Session) -> Response:
        from licentia.core.acl import EMPTY
        from licentia.runtime.webadmin.reportdata import ReportData, read_report

        p = request.query_params
        now = time.time()
        start_text = p.get("from") or time.strftime("%Y-%m-%d", time.gmtime(now - 7 * 86400))
        end_text = p.get("to") or time.strftime("%Y-%m-%d", time.gmtime(now + 86400))
        items = self.rt.queries.item_rows()
        quantities: dict[tuple[int, int], int] = {}
        for i in items:
            if isinstance(i["quantity"], int):
                k = (i["firm_code"], i["product_code"])
                quantities[k] = quantities.get(k, 0) + i["quantity"]
        chosen: tuple[int, int] | None = None
        error = None
        data = ReportData(0, 0, 3600)
        try:
            start, end = _when(start_text), _when(end_text)
            if end <= start:
                raise ValueError("the end must be after the start")
            if p.get("product"):
                f, _, pr = p["product"].partition(":")
                chosen = (int(f), int(pr))
            w = self.rt.acl_watch
            data = await asyncio.to_thread(read_report, self.rt.home.logs, w.gate.acl if w is not None else EMPTY,
                                           start, end, chosen)
        except ValueError as exc:
            error = f"give dates as YYYY-MM-DD and the product as FIRM:PRODUCT ({exc})"
        except LicentiaError as exc:
            error = exc.message
        return self.html("Reports", pages.reports(data, quantities, sorted(quantities), chosen, start_text,
                                                  end_text, error), session, "/reports")

    async def settings(self, request: Request, session: Session) -> Response:
        p = request.query_params
        cfg = self.rt.config
        rows = [(s.key, s.section, getattr(cfg, s.name), s.default) for s in SETTINGS
                if "password" not in s.name and "secret" not in s.name]
        servers = searchlist.read_list(self.rt.home.servers)
        return self.html("Search list and settings", pages.settings(servers, rows, session, p.get("ok"),
                                                                    p.get("error")), session, "/settings")

    async def server_add(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        address = form.get("address", "").strip()
        try:
            searchlist.add(self.rt.home.servers, address)
        except LicentiaError as exc:
            return self.back("/settings", error=exc.message)
        self.note(session, "search list add", server=address)
        return self.back("/settings", ok=f"{address} added to the search list")

    async def server_remove(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        address = form.get("address", "")
        try:
            searchlist.remove(self.rt.home.servers, address)
        except LicentiaError as exc:
            return self.back("/settings", error=exc.message)
        self.note(session, "search list remove", server=address)
        return self.back("/settings", ok=f"{address} removed from the search list")

    async def diagnostics(self, request: Request, session: Session) -> Response:
        from licentia.runtime import diag

        facts = [*diag.versions().items(), ("home", str(self.rt.home.path)), ("pid", os.getpid())]
        facts += [(f"access list {k}", v) for k, v in self._acl_status().items()]
        facts += [(f"container {c['serial']}", f"{c['status']}: {c['binding']}") for c in
                  self.rt.queries.container_rows()]
        problems = await asyncio.to_thread(diag.problems, self.rt.home.logs)
        return self.html("Diagnostics", pages.diagnostics(facts, problems[-50:]), session, "/diagnostics")


def _when(text: str) -> float:
    import datetime as dt

    value = dt.datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()
