"""The portal page in a real headless Chromium: ticket in, licenses shown, activation by
request file with the update downloaded, receipt, return, cloud credential re-issue."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from central_browser import Browser, browser_available
from central_helpers import Box, live

from licentia.central.db import Database, sqlite_url
from licentia.central.service import Central, FirmKey

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not browser_available(), reason="chromium and chromedriver are not installed"),
]

DOWNLOAD = """
const a = document.getElementById(arguments[0]);
const buffer = await (await fetch(a.href)).arrayBuffer();
let s = ""; new Uint8Array(buffer).forEach((b) => s += String.fromCharCode(b));
return btoa(s);
"""


@pytest.fixture
def central(tmp_path: Path, firm: FirmKey) -> Iterator[Central]:
    """The browser test runs once, on SQLite; the API below the page is tested on both."""
    db = Database(sqlite_url(tmp_path / "central.db"))
    db.migrate()
    yield Central(db, firm)
    db.dispose()


def test_portal_in_headless_chromium(central: Central, tmp_path: Path) -> None:
    central.create_product("ops", 0, 42, "CAD Pro", {"feature_map": 1}, {"replace": {"allowed": True, "max_count": 2}})
    ticket = central.create_order("sales", 0, [{"product_code": 42, "quantity": 2}, {"product_code": 42}])["ticket"]
    box = Box.new()
    request = tmp_path / "request.lcrq"
    request.write_bytes(box.request())
    browser = Browser()
    try:
        with live(central) as url:
            browser.go(url + "/")
            browser.type("#ticket", ticket.replace("-", " ").lower())
            browser.click("#show")
            assert ticket in browser.wait_text("#ticket-id", ticket)
            assert "available" in browser.text("#licenses")
            # a mistyped ticket is explained
            mistyped = ticket[:-1] + ("Z" if ticket[-1] != "Z" else "Y")  # one character changed
            browser.script("document.getElementById('ticket').value = arguments[0]", mistyped)
            browser.click("#show")
            assert "mistyped" in browser.wait_text("#message", "mistyped")
            browser.script("document.getElementById('ticket').value = arguments[0]", ticket)
            browser.click("#show")
            browser.wait_text("#message", "")
            # activate with an uploaded request file, download the update, apply it, send the receipt
            browser.type("#activate-request", str(request))
            browser.click("#activate")
            assert "is ready" in browser.wait_text("#message", "is ready")
            update = base64.b64decode(browser.script(DOWNLOAD, "download"))
            receipt = tmp_path / "update.receipt"
            receipt.write_bytes(box.apply(update))
            browser.type("#receipt", str(receipt))
            browser.click("#confirm")
            assert "confirmed" in browser.wait_text("#message", "confirmed")
            assert browser.text("#licenses").count("active") == 2
            assert len(box.items()) == 2
            # return them
            request.write_bytes(box.request())
            browser.type("#return-request", str(request))
            browser.click("#return")
            browser.wait_text("#message", "Return update")
            receipt.write_bytes(box.apply(base64.b64decode(browser.script(DOWNLOAD, "download"))))
            browser.type("#receipt", str(receipt))
            browser.click("#confirm")
            browser.wait_text("#message", "confirmed")
            assert browser.text("#licenses").count("available") == 2 and box.items() == {}
            # the container is lost: ask for its licenses back in the portal
            central.confirm_receipt(box.apply(central.activate(ticket, box.request(), 0).update), 0)
            browser.type("#lost-serial", box.serial)
            browser.click("#replace")
            assert "approved by policy" in browser.wait_text("#message", "approved by policy")
            assert browser.text("#licenses").count("available") == 2
            # move to the cloud, then a new credential file
            browser.click("#cloud")
            assert "cloud container" in browser.wait_text("#message", "cloud container")
            first = browser.script(DOWNLOAD, "credential-download")
            browser.click("#credential")
            browser.wait_text("#message", "no longer works")
            second = browser.script(DOWNLOAD, "credential-download")
            assert base64.b64decode(first) != base64.b64decode(second)
            assert b'"format": "licentia-cloud-credential"' in base64.b64decode(second)
    finally:
        browser.close()


def test_portal_activates_a_tmr_license_with_group_files(central: Central, tmp_path: Path) -> None:
    from licentia.core import tmrgroup

    central.create_product("ops", 0, 44, "CAD Pro TMR", {"units": 50}, tmr=True)
    ticket = central.create_order("sales", 0, [{"product_code": 44, "quantity": 3}])["ticket"]
    boxes = [Box.new() for _ in range(3)]
    group = tmp_path / "group.lcgr"
    group.write_bytes(tmrgroup.make_group_request([b.request() for b in boxes]))
    browser = Browser()
    try:
        with live(central) as url:
            browser.go(url + "/")
            browser.type("#ticket", ticket)
            browser.click("#show")
            browser.wait_text("#ticket-id", ticket)
            browser.type("#activate-request", str(group))
            browser.click("#activate")
            said = browser.wait_text("#message", "is ready")
            assert "Group update of TMR license 1 for containers" in said and boxes[0].serial in said
            signed = tmrgroup.read_group_update(base64.b64decode(browser.script(DOWNLOAD, "download")))
            receipts = [b.apply(tmrgroup.part_for(signed, {b.content.serial}).update) for b in boxes]
            receipt = tmp_path / "group.lcgc"
            receipt.write_bytes(tmrgroup.make_group_receipt(receipts))
            browser.type("#receipt", str(receipt))
            browser.click("#confirm")
            assert "all three constituents" in browser.wait_text("#message", "confirmed")
            assert "active" in browser.text("#licenses")
    finally:
        browser.close()
