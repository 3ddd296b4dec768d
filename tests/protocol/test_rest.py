"""Reading central's REST answers: the JSON of a success, central's own refusal with its
code, and a clear error for answers that are neither (a proxy's page, an unknown code)."""

from __future__ import annotations

import httpx
import pytest

from licentia.model import ErrorCode, LicentiaError
from licentia.protocol.rest import read_reply, unreachable


def test_a_success_gives_its_json() -> None:
    assert read_reply(httpx.Response(200, json={"ticket": "ABCDE"})) == {"ticket": "ABCDE"}
    assert read_reply(httpx.Response(204)) is None


def test_centrals_refusal_keeps_its_code_message_and_hint() -> None:
    body = {"error": {"code": int(ErrorCode.NO_MORE_LICENSES), "message": "all 2 seats are in use", "hint": "wait"}}
    with pytest.raises(LicentiaError) as caught:
        read_reply(httpx.Response(409, json=body))
    assert caught.value.code is ErrorCode.NO_MORE_LICENSES
    assert caught.value.message == "all 2 seats are in use" and caught.value.hint == "wait"


@pytest.mark.parametrize("response", [
    httpx.Response(502, text="<html>bad gateway</html>"),  # a proxy's page, not central's JSON
    httpx.Response(500, json={"error": "boom"}),  # no code
    httpx.Response(400, json={"error": {"code": 999_999, "message": "?"}}),  # a code this side does not know
])
def test_anything_else_is_a_central_error_with_the_status(response: httpx.Response) -> None:
    with pytest.raises(LicentiaError) as caught:
        read_reply(response)
    assert caught.value.code is ErrorCode.CENTRAL_ERROR
    if response.status_code != 400:
        assert str(response.status_code) in caught.value.message


def test_no_answer_at_all_is_a_network_fault_naming_the_url() -> None:
    error = unreachable("http://127.0.0.1:1", httpx.ConnectError("refused"), "check the URL")
    assert error.code is ErrorCode.NETWORK_FAULT and "http://127.0.0.1:1" in error.message
