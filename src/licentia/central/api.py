"""The back office over HTTP: a JSON API (with its OpenAPI document) and the portal page.

Users reach the ticket endpoints with nothing but their ticket (it is the secret printed on
their order); everything else needs an API token (`Authorization: Bearer …`) whose role
allows it: `read-only` reads, `operator` also changes, `admin` also manages tokens.

Binary files (request, update, receipt, blacklist) travel base64-encoded in JSON fields.
Every refusal is JSON `{"error": {"code", "name", "message", "hint"}}` with a 4xx status;
the database work of one call is one transaction, so a refusal changes nothing (except the
manipulation flag it reports, which is the point of it).
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from licentia.central.guard import MAX_BODY, BodyLimit, parse_json
from licentia.central.service import Central, Issued
from licentia.central.tmr import TmrProducts
from licentia.core.tmrgroup import is_group_receipt, is_group_request
from licentia.model import ErrorCode, LicentiaError

log = logging.getLogger("licentia.central")

RANK = {"read-only": 1, "operator": 2, "admin": 3}

STATUS: dict[ErrorCode, int] = {
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.CREDENTIAL_INVALID: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.ACCESS_DENIED: 403,
    ErrorCode.REPLACEMENT_REFUSED: 403,
    ErrorCode.TICKET_NOT_FOUND: 404,
    ErrorCode.ENTRY_NOT_FOUND: 404,
    ErrorCode.CONTAINER_NOT_FOUND: 404,
    ErrorCode.MANIPULATION_DETECTED: 409,
    ErrorCode.REPLACEMENT_PENDING: 409,
    ErrorCode.LICENSE_TYPE_CONFLICT: 409,
    ErrorCode.LICENSE_NOT_AVAILABLE: 409,
    ErrorCode.ALREADY_EXISTS: 409,
    ErrorCode.NO_MORE_LICENSES: 409,
    ErrorCode.INVALID_PARAMETER: 422,
    ErrorCode.INVALID_LICENSE_PARAMETER: 422,
    ErrorCode.WRONG_CONTENT: 422,
    ErrorCode.HOST_NAME_INVALID: 422,
    ErrorCode.CENTRAL_ERROR: 503,
}


def error_response(exc: LicentiaError) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": int(exc.code), "name": exc.code.name, "message": exc.message, "hint": exc.hint}},
        status_code=STATUS.get(exc.code, 400),
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"{what!r} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"{what!r} is not valid base64") from None


@dataclass
class Call:
    """What a handler gets: the parsed body, path and query, who calls, and the time."""

    body: dict[str, Any]
    path: dict[str, str]
    query: dict[str, str]
    actor: str
    now: int
    base_url: str = ""

    def field(self, name: str, kind: type | tuple[type, ...], *, required: bool = True, default: Any = None) -> Any:
        if name not in self.body or self.body[name] is None:
            if required:
                raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"the field {name!r} is required")
            return default
        value = self.body[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"the field {name!r} has the wrong type")
        if not isinstance(value, kinds):
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"the field {name!r} has the wrong type")
        return value

    def ints(self, name: str) -> list[int] | None:
        value = self.field(name, list, required=False)
        if value is None:
            return None
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31 for v in value):
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"the field {name!r} must be a list of license ids")
        return list(value)

    def query_int(self, name: str, default: int) -> int:
        raw = self.query.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"the query parameter {name!r} must be an integer") from None
        if not 0 <= value < 2**62:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"the query parameter {name!r} is out of range")
        return value


Handler = Callable[[Call], Any]


@dataclass
class Endpoint:
    method: str
    path: str
    handler: Handler
    role: str | None  # None: public (ticket holders, containers)
    summary: str
    body: dict[str, Any] | None = None  # JSON schema of the request body
    params: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200


def _issued(issued: Issued) -> dict[str, Any]:
    # A sync with nothing to renew, deliver or revoke answers no update ("update": null).
    return {"update": b64(issued.update) if issued.update else None, **issued.to_json()}


def _activate(c: Central, tmr: TmrProducts, call: Call) -> dict[str, Any]:
    """A request file activates into its container; a group request (a TMR license) into its three."""
    data = unb64(call.field("request", str), "request")
    licenses, how = call.ints("licenses"), call.field("how", str, required=False, default="offline")
    if is_group_request(data):
        group = tmr.activate_group(call.path["ticket"], data, call.now, licenses=licenses, how=how)
        return {"update": b64(group.update), **group.to_json()}
    return _issued(c.activate(call.path["ticket"], data, call.now, licenses=licenses, how=how))


def _receipt(c: Central, tmr: TmrProducts, call: Call) -> dict[str, Any]:
    data = unb64(call.field("receipt", str), "receipt")
    if is_group_receipt(data):
        return tmr.confirm_group_receipt(data, call.now)
    return c.confirm_receipt(data, call.now)


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


B64 = {"type": "string", "format": "byte", "minLength": 4}
INT_LIST = {"type": "array", "items": {"type": "integer"}}
NAME = {"type": "string", "minLength": 1, "maxLength": 200}


def endpoints(central: Central) -> list[Endpoint]:
    from licentia.central.cloud import Cloud

    c = central
    cloud = Cloud(central)
    tmr = TmrProducts(central)
    secret = {"serial": {"type": "string"}, "secret": {"type": "string"}}
    return [
        Endpoint("GET", "/api/health", lambda call: {
            "status": "ok", "firm_code": c.firm.firm_code, "firm": c.firm.name,
            "public_key": c.firm.public_key.hex(), "time": call.now,
        }, None, "Firm served, its public key, and central's time"),
        # -- ticket holders and containers
        Endpoint("GET", "/api/tickets/{ticket}", lambda call: c.get_ticket(call.path["ticket"]), None,
                 "A ticket and its licenses (the ticket is the credential)"),
        Endpoint("POST", "/api/tickets/{ticket}/activate", lambda call: _activate(c, tmr, call), None,
                 "Activate a ticket's free licenses into the container of a request file; a TMR license into "
                 "three constituents with a group request (answered with a group update)",
            body=_obj({"request": B64, "licenses": INT_LIST, "how": {"type": "string", "enum": ["online", "offline"]}}, ["request"])),
        Endpoint("POST", "/api/tickets/{ticket}/return", lambda call: _issued(c.return_licenses(
            call.path["ticket"], unb64(call.field("request", str), "request"), call.now, licenses=call.ints("licenses"),
        )), None, "Give licenses back: an update that removes them; free once its receipt arrives",
            body=_obj({"request": B64, "licenses": INT_LIST}, ["request"])),
        Endpoint("POST", "/api/tickets/{ticket}/replace", lambda call: c.request_replacement(
            call.path["ticket"], call.field("old_serial", str), call.now,
            same_device=bool(call.field("same_device", bool, required=False, default=False)),
            request=unb64(call.body["request"], "request") if call.body.get("request") is not None else None,
        ), None, "Replace the ticket's licenses in a lost container (per the product's policy)",
            body=_obj({"old_serial": {"type": "string", "minLength": 3, "maxLength": 24}, "same_device": {"type": "boolean"},
                       "request": B64}, ["old_serial"])),
        Endpoint("POST", "/api/receipts", lambda call: _receipt(c, tmr, call), None,
                 "Confirm an applied update with its receipt, or a group update with its group receipt",
                 body=_obj({"receipt": B64}, ["receipt"])),
        Endpoint("POST", "/api/sync", lambda call: _issued(c.sync(unb64(call.field("request", str), "request"), call.now)),
                 None, "Sync a container: checkpoint renewal, signed time, revocations, automatic activation",
                 body=_obj({"request": B64}, ["request"])),
        # -- cloud containers
        Endpoint("POST", "/api/tickets/{ticket}/cloud", lambda call: cloud.move_to_cloud(
            call.path["ticket"], call.now, base_url=call.base_url), None,
            "Move the ticket's free licenses into its cloud container; answers a credential file"),
        Endpoint("POST", "/api/tickets/{ticket}/cloud/credential", lambda call: cloud.reissue_credential(
            call.path["ticket"], call.now, base_url=call.base_url), None,
            "A new credential file for the ticket's cloud container; the old one stops working at once"),
        Endpoint("DELETE", "/api/tickets/{ticket}/cloud", lambda call: cloud.return_from_cloud(call.path["ticket"], call.now),
                 None, "Return the ticket's cloud licenses"),
        Endpoint("POST", "/api/cloud/items", lambda call: cloud.items(
            call.field("serial", str), call.field("secret", str), call.now), None,
            "The licenses of a cloud container (credential in the body)", body=_obj(secret, ["serial", "secret"])),
        Endpoint("POST", "/api/cloud/access", lambda call: cloud.access(
            call.field("serial", str), call.field("secret", str), call.field("product_code", int),
            call.field("station", str), call.now, feature_code=call.field("feature_code", int, required=False, default=0),
            lease=call.field("lease", int, required=False, default=300),
            container_key=call.field("container_key", str, required=False)), None,
            "Take a seat of a cloud license (counted in central); with container_key, also a license for that key",
            body=_obj({**secret, "product_code": {"type": "integer"}, "station": {"type": "string"},
                       "feature_code": {"type": "integer"}, "lease": {"type": "integer"},
                       "container_key": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}},
                      ["serial", "secret", "product_code", "station"])),
        Endpoint("POST", "/api/cloud/heartbeat", lambda call: cloud.heartbeat(
            call.field("serial", str), call.field("secret", str), call.field("handle", str), call.now,
            lease=call.field("lease", int, required=False, default=300)), None, "Keep a cloud seat",
            body=_obj({**secret, "handle": {"type": "string"}, "lease": {"type": "integer"}}, ["serial", "secret", "handle"])),
        Endpoint("POST", "/api/cloud/release", lambda call: cloud.release(
            call.field("serial", str), call.field("secret", str), call.field("handle", str), call.now), None,
            "Give a cloud seat back", body=_obj({**secret, "handle": {"type": "string"}}, ["serial", "secret", "handle"])),
        # -- products
        Endpoint("GET", "/api/products", lambda call: c.list_products(), "read-only", "List products"),
        Endpoint("POST", "/api/products", lambda call: c.create_product(
            call.actor, call.now, call.field("product_code", int), call.field("name", str),
            call.field("template", dict, required=False), call.field("policy", dict, required=False),
            tmr=bool(call.field("tmr", bool, required=False, default=False)),
        ), "operator", "Create a product with its option template and replacement policy (tmr: TMR licenses)",
            body=_obj({"product_code": {"type": "integer", "minimum": 0, "maximum": 4294967295}, "name": NAME,
                       "template": {"type": "object"}, "policy": {"type": "object"}, "tmr": {"type": "boolean"}},
                      ["product_code", "name"]), status=201),
        Endpoint("GET", "/api/products/{product_code}", lambda call: c.get_product(_int(call.path["product_code"])),
                 "read-only", "A product"),
        Endpoint("PATCH", "/api/products/{product_code}", lambda call: c.update_product(
            call.actor, call.now, _int(call.path["product_code"]), name=call.field("name", str, required=False),
            template=call.field("template", dict, required=False), policy=call.field("policy", dict, required=False),
        ), "operator", "Change a product's name, template or policy",
            body=_obj({"name": NAME, "template": {"type": "object"}, "policy": {"type": "object"}})),
        # -- customers
        Endpoint("GET", "/api/customers", lambda call: c.list_customers(), "read-only", "List customers"),
        Endpoint("POST", "/api/customers", lambda call: c.create_customer(
            call.actor, call.now, call.field("company", str), call.field("site", str), call.field("license_type", str),
            call.field("server_host", str, required=False), call.field("server_ip", str, required=False),
            call.field("auto_activate_after", int, required=False),
            call.field("server_container", str, required=False),
        ), "operator", "Register a customer (single-user, or multi-user with one license server)",
            body=_obj({"company": NAME, "site": NAME, "license_type": {"type": "string", "enum": ["single-user", "multi-user"]},
                       "server_host": {"type": "string"}, "server_ip": {"type": "string"},
                       "server_container": {"type": "string", "maxLength": 24},
                       "auto_activate_after": {"type": "integer", "minimum": 0}}, ["company", "site", "license_type"]),
            status=201),
        Endpoint("PATCH", "/api/customers/{customer}", lambda call: c.update_customer(
            call.actor, call.now, call.path["customer"],
            auto_activate_after=call.field("auto_activate_after", int, required=False),
            clear_auto_activate_after="auto_activate_after" in call.body and call.body["auto_activate_after"] is None,
            server_container=call.field("server_container", str, required=False),
        ), "operator", "Set the wait before automatic activation (null: the default, 24 h) or the license server's container",
            body=_obj({"auto_activate_after": {"type": ["integer", "null"], "minimum": 0},
                       "server_container": {"type": "string", "maxLength": 24}})),
        Endpoint("GET", "/api/customers/{customer}", lambda call: c.get_customer(call.path["customer"]), "read-only",
                 "A customer and its tickets"),
        Endpoint("POST", "/api/customers/{customer}/license-type", lambda call: c.change_license_type(
            call.actor, call.now, call.path["customer"], call.field("license_type", str),
            call.field("server_host", str, required=False), call.field("server_ip", str, required=False),
        ), "operator", "Change the license type: invalidates the licenses and issues them anew",
            body=_obj({"license_type": {"type": "string", "enum": ["single-user", "multi-user"]},
                       "server_host": {"type": "string"}, "server_ip": {"type": "string"}}, ["license_type"])),
        Endpoint("POST", "/api/customers/{customer}/server", lambda call: c.change_server(
            call.actor, call.now, call.path["customer"], call.field("server_host", str), call.field("server_ip", str),
        ), "operator", "Move to a new license server: a new customer id, the licenses issued anew",
            body=_obj({"server_host": {"type": "string"}, "server_ip": {"type": "string"}}, ["server_host", "server_ip"])),
        # -- orders and tickets
        Endpoint("POST", "/api/orders", lambda call: c.create_order(
            call.actor, call.now, call.field("lines", list), call.field("customer", str, required=False),
            call.field("reference", str, required=False),
        ), "operator", "Order licenses: makes a ticket (the same reference extends it)",
            body=_obj({"customer": {"type": "string"}, "reference": {"type": "string", "minLength": 1, "maxLength": 100},
                       "lines": {"type": "array", "minItems": 1, "items": _obj({
                           "product_code": {"type": "integer"}, "quantity": {"type": ["integer", "null"], "minimum": 0},
                           "options": {"type": "object"}, "count": {"type": "integer", "minimum": 1, "maximum": 1000}},
                           ["product_code"])}}, ["lines"]), status=201),
        Endpoint("GET", "/api/tickets", lambda call: c.list_tickets(), "read-only", "List tickets"),
        # -- containers, blacklist
        Endpoint("GET", "/api/containers", lambda call: c.list_containers(), "read-only", "Containers central knows"),
        Endpoint("GET", "/api/containers/{serial}", lambda call: c.get_container(call.path["serial"]), "read-only",
                 "A container: counter, state, licenses, blacklist"),
        Endpoint("POST", "/api/containers/{serial}/blacklist", lambda call: c.blacklist(
            call.actor, call.now, call.path["serial"], call.field("reason", str)),
            "operator", "Blacklist a lost or stolen container (locked at its next contact)",
            body=_obj({"reason": {"type": "string", "enum": ["lost", "stolen"]}}, ["reason"])),
        Endpoint("DELETE", "/api/containers/{serial}/blacklist", lambda call: c.unblacklist(
            call.actor, call.now, call.path["serial"]), "operator", "Take a container off the blacklist"),
        Endpoint("POST", "/api/containers/{serial}/review", lambda call: c.review_container(
            call.actor, call.now, call.path["serial"], str(call.field("note", str, required=False, default=""))),
            "operator", "Accept a container flagged as manipulated; its next contact resyncs it",
            body=_obj({"note": {"type": "string", "maxLength": 1000}})),
        Endpoint("GET", "/api/blacklist", lambda call: [
            {"serial": str(e.serial), "listed_at": e.listed_at, "reason": e.reason} for e in c.blacklist_entries()
        ], "read-only", "The blacklist"),
        Endpoint("POST", "/api/blacklist/export", lambda call: {"blacklist": b64(c.export_blacklist(call.actor, call.now))},
                 "operator", "The blacklist signed by the firm, to ship with the next program version"),
        # -- replacements
        Endpoint("GET", "/api/replacements", lambda call: c.list_replacements(call.query.get("state")), "read-only",
                 "Replacement requests", params=[_query("state", "string")]),
        Endpoint("POST", "/api/replacements/{id}/approve", lambda call: c.approve_replacement(
            call.actor, call.now, _int(call.path["id"])), "operator", "Approve a replacement by hand"),
        Endpoint("POST", "/api/replacements/{id}/refuse", lambda call: c.refuse_replacement(
            call.actor, call.now, _int(call.path["id"]), str(call.field("reason", str, required=False, default=""))),
            "operator", "Refuse a replacement", body=_obj({"reason": {"type": "string", "maxLength": 1000}})),
        # -- audit, tokens
        Endpoint("GET", "/api/audit", lambda call: c.audit(
            subject=call.query.get("subject"), after=call.query_int("after", 0), limit=call.query_int("limit", 500)),
            "read-only", "The audit log (append-only)",
            params=[_query("subject", "string"), _query("after", "integer"), _query("limit", "integer")]),
        Endpoint("GET", "/api/tokens", lambda call: c.list_tokens(), "admin", "API tokens"),
        Endpoint("POST", "/api/tokens", lambda call: c.create_token(
            call.actor, call.now, call.field("name", str), call.field("role", str)),
            "admin", "Create an API token (shown once)",
            body=_obj({"name": {"type": "string", "minLength": 1, "maxLength": 100},
                       "role": {"type": "string", "enum": ["admin", "operator", "read-only"]}}, ["name", "role"]),
            status=201),
        Endpoint("DELETE", "/api/tokens/{id}", lambda call: c.revoke_token(call.actor, call.now, _int(call.path["id"])),
                 "admin", "Revoke an API token"),
    ]


def _int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"{text!r} is not a number") from None
    if not 0 <= value <= 0xFFFF_FFFF:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"{text!r} is out of range")
    return value


def _query(name: str, kind: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": kind}}


def openapi(eps: list[Endpoint], title: str) -> dict[str, Any]:
    error = {"description": "refused", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    paths: dict[str, Any] = {}
    for ep in eps:
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _path_names(ep.path)
        ] + ep.params
        op: dict[str, Any] = {
            "summary": ep.summary,
            "operationId": f"{ep.method.lower()}{ep.path.replace('/', '_').replace('{', '').replace('}', '')}",
            "parameters": params,
            "responses": {str(ep.status): {"description": "done", "content": {"application/json": {"schema": {}}}},
                          "4XX": error},
        }
        if ep.role is not None:
            op["security"] = [{"token": []}]
            op["description"] = f"Needs a token with role {ep.role} or higher."
        if ep.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ep.body}}}
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": title, "version": "1"},
        "paths": paths,
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": _obj({"error": _obj({
                "code": {"type": "integer"}, "name": {"type": "string"},
                "message": {"type": "string"}, "hint": {"type": "string"}})})},
        },
    }


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def create_app(central: Central, *, clock: Callable[[], int] | None = None, max_body: int = MAX_BODY) -> Starlette:
    """The ASGI application. `clock` gives central's time (seconds); tests pass their own.
    A request body over `max_body` bytes is answered 413 before any handler reads it."""
    now_of = clock or (lambda: int(time.time()))
    eps = endpoints(central)
    doc = openapi(eps, f"licentia central — {central.firm.name} (firm {central.firm.firm_code})")

    def wrap(ep: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            try:
                actor = "user"
                if ep.role is not None:
                    actor = await run_in_threadpool(_authorize, central, request, ep.role)
                body: dict[str, Any] = {}
                if ep.method in ("POST", "PATCH", "PUT"):
                    body = await _json_body(request, max_body)
                call = Call(body, dict(request.path_params), dict(request.query_params), actor, now_of(),
                            str(request.base_url).rstrip("/"))
                result = await run_in_threadpool(ep.handler, call)
                return JSONResponse(result, status_code=ep.status)
            except LicentiaError as exc:
                return error_response(exc)
            except DataError:
                return error_response(LicentiaError(ErrorCode.INVALID_PARAMETER, "a value is out of range or of the wrong kind; nothing was changed"))
            except IntegrityError:
                return error_response(LicentiaError(ErrorCode.ALREADY_EXISTS, "that conflicts with a record central already holds"))
            except OperationalError:
                log.exception("database unavailable")
                return error_response(LicentiaError(ErrorCode.CENTRAL_ERROR, "the database is busy or unavailable; nothing was changed"))

        return handle

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(doc)

    routes = [Route(ep.path, wrap(ep), methods=[ep.method]) for ep in eps]
    routes.append(Route("/api/openapi.json", openapi_json, methods=["GET"]))
    from licentia.central.portal import portal_routes

    routes += portal_routes(central, now_of)

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(LicentiaError(ErrorCode.ENTRY_NOT_FOUND, f"no such endpoint {request.method} {request.url.path}"))

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return JSONResponse(
            {"error": {"code": int(ErrorCode.INVALID_PARAMETER), "name": "METHOD_NOT_ALLOWED",
                       "message": f"{request.method} is not allowed on {request.url.path}", "hint": ""}},
            status_code=405,
        )

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed},
                    middleware=[Middleware(BodyLimit, max_body=max_body)])
    app.state.central = central
    return app


def _authorize(central: Central, request: Request, role: str) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise LicentiaError(ErrorCode.UNAUTHORIZED, "this endpoint needs an API token (Authorization: Bearer …)")
    found = central.authenticate(token.strip())
    if found is None:
        raise LicentiaError(ErrorCode.UNAUTHORIZED, "the API token is not valid (unknown or revoked)")
    name, have = found
    if RANK[have] < RANK[role]:
        raise LicentiaError(ErrorCode.FORBIDDEN, f"token {name!r} has role {have}; this needs {role}")
    return f"token:{name}"


async def _json_body(request: Request, max_body: int) -> dict[str, Any]:
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_body:  # BodyLimit answers first; this holds for an app used without it
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"the request body is larger than {max_body} bytes")
    if not raw.strip():
        return {}
    body = parse_json(bytes(raw))
    if not isinstance(body, dict):
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, "the request body must be a JSON object")
    return body
