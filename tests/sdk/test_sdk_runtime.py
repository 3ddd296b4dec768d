"""The SDK against a real runtime process: decorator, asyncio, events, typed errors, and a
runtime that shrugs off malformed frames."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Iterator

import pytest
from tests.runtime.harness import (
    open_container,
    put_items,
    wait_for,
)
from tests.sdk.serving import Env, serve

import licentia
from licentia.model import ErrorCode, LicentiaError, ProductItem
from licentia.protocol.client import Client


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    yield from serve(tmp_path_factory.mktemp("sdk"), [
        ProductItem(product_code=7, quantity=5, units=50, text="Acme Pro"),
        ProductItem(product_code=8, quantity=1),
        ProductItem(product_code=9, quantity=2, expires_at=int(time.time()) - 10),
        ProductItem(product_code=10, quantity=3),
    ])


def test_with_block_info_decrement_and_release(env: Env) -> None:
    with env.take(7) as lic:
        info = lic.info
        assert info.verified and info.location == "local" and info.container == env.serial
        assert info.text == "Acme Pro" and info.quantity == 5 and info.units == 50 and info.expires_at is None
        assert lic.decrement(2) == 48 and lic.info.units == 48
        assert lic.check() == []
        assert [r["handle"] for r in env.runtime.sessions()] == [info.handle]
    assert env.runtime.sessions() == []


def test_require_decorator_sync_and_async(env: Env) -> None:
    @licentia.require(env.vendor.firm, 8, firm_key=env.vendor.public_file)
    def work(x: int, license: licentia.License) -> tuple[int, int]:
        return x * 2, license.handle

    value, handle = work(21)  # type: ignore[call-arg]  # the decorator passes `license`
    assert value == 42 and handle > 0 and env.runtime.sessions() == []

    @licentia.require(env.vendor.firm, 8, firm_key=env.vendor.public_file)
    async def async_work() -> int:
        with pytest.raises(LicentiaError) as e:  # the one seat is held by this very call
            env.take(8)
        return int(e.value.code)

    assert asyncio.run(async_work()) == 212


def test_asyncio_api(env: Env) -> None:
    async def main() -> tuple[int, list[licentia.Event], int]:
        async with licentia.access_async(env.vendor.firm, 7, firm_key=env.vendor.public_file) as lic:
            left = await lic.decrement(1)
            events = await lic.check()
            awaited = await licentia.access_async(env.vendor.firm, 10, firm_key=env.vendor.public_file)
            await awaited.release()
            return left, events, len(env.runtime.sessions())

    left, events, held = asyncio.run(main())
    assert left < 50 and events == [] and held == 1


def test_errors_are_typed_and_say_what_to_do(env: Env) -> None:
    with pytest.raises(LicentiaError) as e:
        env.take(99)
    assert e.value.code is ErrorCode.ENTRY_NOT_FOUND and e.value.hint
    with pytest.raises(LicentiaError) as e:
        env.take(9)
    assert e.value.code is ErrorCode.EXPIRED and "expired" in e.value.message
    with pytest.raises(LicentiaError) as e:
        env.take(7, mode="sometimes")
    assert e.value.code is ErrorCode.WRONG_ACCESS_MODE


def test_events_admin_release_item_changed_container_removed(env: Env) -> None:
    seen: list[licentia.Event] = []
    lic = env.take(10, on_event=lambda _lic, event, _detail: seen.append(event), watch_interval=0.1)
    other = env.take(10)
    with env.runtime.admin() as admin:
        admin.request("admin.release", handle=lic.handle)
    wait_for("the watcher to report the license gone", lambda: licentia.Event.LICENSE_GONE in seen)
    assert not lic.valid
    with pytest.raises(LicentiaError) as e:
        lic.decrement(1)
    assert e.value.code is ErrorCode.INVALID_HANDLE
    lic.release()

    container = open_container(env.home, env.root, env.serial)
    put_items(container, env.vendor, [ProductItem(product_code=10, quantity=4, text="more seats")], first_id=4)
    changed = wait_for("the item change to reach the program", lambda: other.check(), interval=0.2)
    assert changed == [licentia.Event.ITEM_CHANGED]

    path = next((env.home / "containers").glob("*.lcsc"))
    aside = path.with_name("aside.bak")
    path.rename(aside)
    try:
        removed = wait_for("the removal to reach the program", lambda: other.check(), interval=0.2)
        assert licentia.Event.CONTAINER_REMOVED in removed
    finally:
        aside.rename(path)
    other.release()
    wait_for("the container to come back", lambda: env.runtime.sessions() == [] and _can_take(env))


def _can_take(env: Env) -> bool:
    try:
        env.take(7).release()
        return True
    except LicentiaError:
        return False


def test_malformed_frames_get_an_error_and_do_not_disturb_others(env: Env) -> None:
    sock_path = env.runtime.socket
    with Client(sock_path) as good:
        good.hello({"kind": "program"})
        bad = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bad.settimeout(10)
        bad.connect(sock_path)
        bad.sendall(struct.pack(">IB", 4, 0x42) + b"abc")  # wrong version byte: an error frame, the connection lives
        first = bad.recv(65536)
        assert first and b"version" in first
        bad.sendall(struct.pack(">I", 1 << 30))  # a frame far over the limit: an error, then the connection closes
        data = b""
        while True:
            chunk = bad.recv(65536)
            if not chunk:
                break
            data += chunk
        assert b"larger than the limit" in data
        bad.close()
        assert good.request("info", what="server")["server"]["pid"] == env.runtime.status["pid"]
        with pytest.raises(LicentiaError) as e:
            good.request("access", firm="x", product=7)
        assert e.value.code is ErrorCode.INVALID_PARAMETER
