"""Bodies an attacker sends anonymously: each is refused with 4xx and a typed error, never a
500 (each of these answered 500 with a traceback before central bounded its JSON)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
from hypothesis import given, settings, strategies as st

from licentia.central.api import create_app
from licentia.central.guard import MAX_DEPTH, parse_json
from licentia.central.service import Central
from licentia.model import ErrorCode, LicentiaError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


@pytest.fixture
def http(central: Central) -> Iterator[TestClient]:
    with TestClient(create_app(central), raise_server_exceptions=True) as client:
        yield client


@pytest.fixture
def small(central: Central) -> Iterator[TestClient]:
    with TestClient(create_app(central, max_body=64 * 1024), raise_server_exceptions=True) as client:
        yield client


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(("path", "body"), [
    ("/api/cloud/items", b'{"serial": "\\ud800", "secret": "x"}'),
    ("/api/cloud/items", b'{"serial": "140-1", "secret": "\\udfff"}'),
    ("/api/cloud/access", b'{"serial": "140-1", "secret": "\\ud800", "product_code": 1, "station": "s"}'),
    ("/api/cloud/access", b'{"serial": "140-1", "secret": "s", "product_code": 1, "station": "\\ud800x"}'),
    ("/api/receipts", b"[" * 100_000 + b"]" * 100_000),
    ("/api/receipts", b'{"receipt": ' + b"[" * 500 + b"]" * 500 + b"}"),
    ("/api/cloud/access", b'{"serial": "140-1", "secret": "s", "product_code": 1e999, "station": "s"}'),
    ("/api/cloud/access", b'{"serial": "140-1", "secret": "s", "product_code": 99999999999999999999999, "station": "s"}'),
    ("/api/cloud/access", b'{"serial": "140-1", "secret": "s", "product_code": NaN, "station": "s"}'),
])
def test_hostile_json_is_refused_with_422(http: TestClient, path: str, body: bytes) -> None:
    r = http.post(path, content=body, headers=JSON)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["name"] == "INVALID_PARAMETER"


def test_a_body_over_the_limit_is_refused_with_413_by_its_length_or_as_it_streams(small: TestClient) -> None:
    http = small
    big = b'{"receipt": "' + b"A" * (65 * 1024) + b'"}'
    r = http.post("/api/receipts", content=big, headers=JSON)
    assert r.status_code == 413, r.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked
        yield b'{"receipt": "'
        for _ in range(80):
            yield b"A" * 1024
        yield b'"}'

    r = http.post("/api/receipts", content=chunks(), headers=JSON)
    assert r.status_code == 413, r.text
    assert http.get("/api/health").status_code == 200


def test_nesting_up_to_the_limit_is_parsed() -> None:
    assert parse_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None
    with pytest.raises(LicentiaError):
        parse_json(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_parse_json_raises_only_its_typed_error(raw: bytes) -> None:
    try:
        parse_json(raw)
    except LicentiaError as exc:
        assert exc.code == ErrorCode.INVALID_PARAMETER


@pytest.mark.parametrize("serial", [130, 1.5, None, ["130-1"], b"130-1"])
def test_a_self_signed_request_whose_serial_is_not_text_is_refused(http: TestClient, serial: object) -> None:
    """Found by fuzz/request_file: anyone can sign a request with a key of their own, and a
    serial that was not text raised AttributeError (500) inside the request reader."""
    import base64

    from licentia.core import updates
    from licentia.crypto import new_signing_key, sign, signing_public_key
    from licentia.crypto.artifacts import sign_artifact_with
    from licentia.model import envelope as env

    key = new_signing_key()
    body = {"serial": serial, "firm_code": 6000010, "update_counter": 0, "box_public": b"\0" * 32,
            "firm_public_key": None, "items": [], "created_at": 1_750_000_000, "environment": {}}
    request = sign_artifact_with(updates.REQUEST_MAGIC, updates.VERSION, signing_public_key(key) + env.encode(body),
                                 lambda data: sign(key, data))
    for path in ("/api/sync", "/api/tickets/T-AAAAA-AAAAA-AAAAA/activate"):
        r = http.post(path, json={"request": base64.b64encode(request).decode()})
        assert 400 <= r.status_code < 500, r.text
