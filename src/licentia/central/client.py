"""Talking to central over HTTP: the user side (activate, return, receipts, sync) and the
operator side (any API call with a token). Refusals come back as the LicentiaError central
raised, with the same code."""

from __future__ import annotations

import base64
import ssl
from typing import Any

import httpx

from licentia.protocol.rest import read_reply, unreachable


class CentralClient:
    def __init__(self, url: str, *, token: str | None = None, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None, verify: ssl.SSLContext | None = None) -> None:
        """`verify`: the TLS context that trusts central (`protocol.rest.central_context`);
        None trusts the system's CAs for https://."""
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport,
                                 verify=verify if verify is not None else True)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> CentralClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, params: dict[str, Any] | None = None) -> Any:
        try:
            response = self.http.request(method, path, json=body, params=params)
        except httpx.HTTPError as exc:
            raise unreachable(self.url, exc, "check the URL and the network, then try again") from None
        return read_reply(response)

    # -- user side ---------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", "/api/health")
        return result

    def ticket(self, ticket: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", f"/api/tickets/{ticket}")
        return result

    def activate(self, ticket: str, request: bytes, licenses: list[int] | None = None, how: str = "online") -> tuple[bytes, dict[str, Any]]:
        body: dict[str, Any] = {"request": _b64(request), "how": how}
        if licenses:
            body["licenses"] = licenses
        result = self.call("POST", f"/api/tickets/{ticket}/activate", body)
        return base64.b64decode(result["update"]), result

    def return_licenses(self, ticket: str, request: bytes, licenses: list[int] | None = None) -> tuple[bytes, dict[str, Any]]:
        body: dict[str, Any] = {"request": _b64(request)}
        if licenses:
            body["licenses"] = licenses
        result = self.call("POST", f"/api/tickets/{ticket}/return", body)
        return base64.b64decode(result["update"]), result

    def receipt(self, receipt: bytes) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", "/api/receipts", {"receipt": _b64(receipt)})
        return result

    def sync(self, request: bytes) -> tuple[bytes, dict[str, Any]]:
        result = self.call("POST", "/api/sync", {"request": _b64(request)})
        # b"": central had nothing to renew, deliver or revoke; the counter stays
        return (base64.b64decode(result["update"]) if result.get("update") else b""), result

    def replace(self, ticket: str, old_serial: str, *, same_device: bool = False, request: bytes | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"old_serial": old_serial, "same_device": same_device}
        if request is not None:
            body["request"] = _b64(request)
        result: dict[str, Any] = self.call("POST", f"/api/tickets/{ticket}/replace", body)
        return result


class CloudClient:
    """What a runtime does with a cloud credential file: list items, take and keep seats."""

    def __init__(self, credential: dict[str, Any], *, timeout: float = 30.0, verify: ssl.SSLContext | None = None) -> None:
        self.serial = str(credential["serial"])
        self._secret = str(credential["secret"])
        self.client = CentralClient(str(credential["central"]), timeout=timeout, verify=verify)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> CloudClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, path: str, **body: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.client.call("POST", path, {"serial": self.serial, "secret": self._secret, **body})
        return result

    def items(self) -> dict[str, Any]:
        return self._call("/api/cloud/items")

    def access(self, product_code: int, station: str, *, feature_code: int = 0, lease: int = 300) -> dict[str, Any]:
        return self._call("/api/cloud/access", product_code=product_code, station=station, feature_code=feature_code, lease=lease)

    def heartbeat(self, handle: str, *, lease: int = 300) -> dict[str, Any]:
        return self._call("/api/cloud/heartbeat", handle=handle, lease=lease)

    def release(self, handle: str) -> dict[str, Any]:
        return self._call("/api/cloud/release", handle=handle)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
