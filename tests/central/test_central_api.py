"""The HTTP API: tokens and roles, the activation cycle over HTTP, bad input answered with 4xx
and a message (never a 500, never a half-written change), the OpenAPI document, and a
property-based run of random bodies against every endpoint."""

from __future__ import annotations

import base64
import json
import os
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from central_helpers import T0, Box
from hypothesis import HealthCheck, given, settings, strategies as st

from licentia.central.api import create_app

with warnings.catch_warnings():  # starlette's note about its httpx transport
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient
from licentia.central.service import Central


class Clock:
    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


class Api:
    def __init__(self, central: Central) -> None:
        self.central = central
        self.clock = Clock(T0)
        self.http = TestClient(create_app(central, clock=self.clock), raise_server_exceptions=True)
        token = central.ensure_admin_token(T0)
        assert token is not None
        self.admin = {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, expect: int | None = None) -> Any:
        r = self.http.request(method, path, json=body, headers=self.admin if headers is None else headers)
        if expect is not None:
            assert r.status_code == expect, r.text
        assert r.status_code < 500, r.text
        return r.json()

    def token(self, role: str) -> dict[str, str]:
        t = self.call("POST", "/api/tokens", {"name": f"t-{role}", "role": role}, expect=201)["token"]
        return {"Authorization": f"Bearer {t}"}


@pytest.fixture
def api(central: Central) -> Iterator[Api]:
    a = Api(central)
    with a.http:
        yield a


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def make_ticket(api: Api, **line: Any) -> str:
    api.call("POST", "/api/products", {"product_code": 42, "name": "CAD Pro", "template": {"feature_map": 1}}, expect=201)
    order = api.call("POST", "/api/orders", {"lines": [{"product_code": 42, "quantity": 3, **line}], "reference": "PO-1"}, expect=201)
    return str(order["ticket"])


def test_tokens_and_roles(api: Api) -> None:
    err = api.call("GET", "/api/products", headers={}, expect=401)["error"]
    assert err["code"] == 1200 and "Bearer" in err["message"]
    assert api.call("GET", "/api/products", headers={"Authorization": "Bearer nope"}, expect=401)["error"]["code"] == 1200
    reader = api.token("read-only")
    assert api.call("GET", "/api/products", headers=reader, expect=200) == []
    err = api.call("POST", "/api/products", {"product_code": 1, "name": "x"}, headers=reader, expect=403)["error"]
    assert err["code"] == 1201 and "read-only" in err["message"]
    operator = api.token("operator")
    api.call("POST", "/api/products", {"product_code": 1, "name": "x"}, headers=operator, expect=201)
    api.call("POST", "/api/tokens", {"name": "y", "role": "admin"}, headers=operator, expect=403)
    tokens = api.call("GET", "/api/tokens", expect=200)
    reader_id = next(t["id"] for t in tokens if t["name"] == "t-read-only")
    api.call("DELETE", f"/api/tokens/{reader_id}", expect=200)
    api.call("GET", "/api/products", headers=reader, expect=401)
    actors = {e["actor"] for e in api.call("GET", "/api/audit", expect=200)}
    assert "token:t-operator" in actors and "token:admin" in actors


def test_activation_cycle_over_http(api: Api) -> None:
    ticket = make_ticket(api)
    box = Box.new()
    public: dict[str, str] = {}
    info = api.call("GET", f"/api/tickets/{ticket.lower().replace('-', '')}", headers=public, expect=200)
    assert info["ticket"] == ticket and info["licenses"][0]["status"] == "available"
    issued = api.call("POST", f"/api/tickets/{ticket}/activate", {"request": b64(box.request())}, headers=public, expect=200)
    assert issued["serial"] == box.serial and issued["counter"] == 1
    receipt = box.apply(base64.b64decode(issued["update"]))
    assert api.call("POST", "/api/receipts", {"receipt": b64(receipt)}, headers=public, expect=200)["confirmed"]
    container = api.call("GET", f"/api/containers/{box.serial}", expect=200)
    assert container["counter"] == 1 and container["licenses"] == [info["licenses"][0]["id"]]
    # same reference extends the ticket
    more = api.call("POST", "/api/orders", {"lines": [{"product_code": 42}], "reference": "PO-1"}, expect=201)
    assert more["ticket"] == ticket and more["extended"]
    # sync and blacklist via the API
    api.call("POST", f"/api/containers/{box.serial}/blacklist", {"reason": "stolen"}, expect=200)
    synced = api.call("POST", "/api/sync", {"request": b64(box.request())}, headers=public, expect=200)
    assert [op["op"] for op in synced["operations"]] == ["lock"]
    exported = api.call("POST", "/api/blacklist/export", {}, expect=200)
    assert base64.b64decode(exported["blacklist"])[:4] == b"LCBL"


def test_bad_input_is_4xx_with_a_message_and_changes_nothing(api: Api) -> None:
    ticket = make_ticket(api)
    audit_before = len(api.call("GET", "/api/audit", expect=200))
    tickets_before = api.call("GET", "/api/tickets", expect=200)
    r = api.http.post("/api/orders", content=b"{not json", headers=api.admin)
    assert r.status_code == 422 and "not JSON" in r.json()["error"]["message"]
    err = api.call("POST", "/api/orders", {"lines": [{"product_code": 42}, {"product_code": 999}]}, expect=404)["error"]
    assert "999" in err["message"]
    assert api.call("GET", "/api/tickets", expect=200) == tickets_before
    assert len(api.call("GET", "/api/audit", expect=200)) == audit_before
    err = api.call("POST", f"/api/tickets/{ticket}/activate", {"request": "***"}, headers={}, expect=422)["error"]
    assert "base64" in err["message"]
    err = api.call("POST", f"/api/tickets/{ticket}/activate", {"request": b64(b"LCRQ garbage")}, headers={}, expect=400)["error"]
    assert err["code"] == 264 and "request file is invalid" in err["message"]
    broken = ticket[:-1] + ("2" if ticket[-1] != "2" else "3")
    err = api.call("GET", f"/api/tickets/{broken}", headers={}, expect=400)["error"]
    assert err["code"] == 1202 and "mistyped" in err["message"]
    err = api.call("POST", "/api/customers", {"company": "A", "site": "B", "license_type": "multi-user",
                                              "server_host": "サーバ1", "server_ip": "10.0.0.1"}, expect=422)["error"]
    assert err["code"] == 1204 and "ASCII letters, digits and hyphens" in err["message"]
    assert api.call("GET", "/api/nowhere", expect=404)["error"]["code"] == 200
    assert api.http.put("/api/products", headers=api.admin).status_code == 405
    assert api.call("POST", "/api/products", {"product_code": "42", "name": "x"}, expect=422)["error"]["code"] == 105


def test_openapi_document_lists_every_route(api: Api) -> None:
    doc = api.call("GET", "/api/openapi.json", headers={}, expect=200)
    assert doc["openapi"].startswith("3.")
    assert {"/api/tickets/{ticket}/activate", "/api/receipts", "/api/sync", "/api/orders"} <= set(doc["paths"])
    assert doc["paths"]["/api/orders"]["post"]["security"] == [{"token": []}]
    assert "security" not in doc["paths"]["/api/receipts"]["post"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.integers(-3, 50) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


def _fields(schema: dict[str, Any]) -> list[str]:
    return list(schema.get("properties", {}))


@pytest.mark.slow
def test_random_bodies_never_500_and_never_half_written(api: Api) -> None:
    make_ticket(api)
    doc = api.call("GET", "/api/openapi.json", headers={}, expect=200)
    operations = [
        (method.upper(), path, op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {}))
        for path, ops in doc["paths"].items() for method, op in ops.items()
        if method in ("post", "patch", "delete") and path != "/api/tokens/{id}"  # keep the admin token
    ]

    @settings(max_examples=int(os.environ.get("CENTRAL_FUZZ_EXAMPLES", "100")), deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        method, path, schema = data.draw(st.sampled_from(operations))
        names = _fields(schema)
        keys = st.sampled_from(names) | st.text(max_size=8) if names else st.text(max_size=8)
        body = data.draw(st.dictionaries(keys, json_values, max_size=5) | json_values)
        concrete = path
        for part in ("{ticket}", "{serial}", "{product_code}", "{customer}", "{id}"):
            concrete = concrete.replace(part, data.draw(st.sampled_from(["1", "130-5", "AAAA", "x%20y", "42", "99999999999999999999", "-1", "140-1"])))
        r = api.http.request(method, concrete, content=json.dumps(body), headers=api.admin)
        assert r.status_code < 500, (method, concrete, body, r.text)
        if r.status_code >= 400:
            err = r.json()["error"]
            assert err["message"]

    run()
    # the audit log holds only entries of changes that succeeded: each names an existing subject kind
    actions = {e["action"] for e in api.call("GET", "/api/audit?limit=5000", expect=200)}
    assert actions <= {
        "token.create", "token.revoke", "product.create", "product.update", "customer.create", "order.create",
        "order.extend", "container.register", "container.manipulation", "update.issue", "ticket.activate",
        "blacklist.add", "blacklist.remove", "blacklist.export", "replacement.request", "replacement.approve",
        "replacement.refuse", "container.review", "customer.bind", "ticket.return", "blacklist.hit",
    }
