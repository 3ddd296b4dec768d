"""The portal: one page where an end user enters a ticket, sees its licenses, activates them
into a container by uploading a request file (and downloads the update), confirms with the
receipt, returns licenses, moves licenses to the cloud and downloads a new credential file.
It uses the public ticket endpoints of the API, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from licentia.central.service import Central

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__FIRM__ — license portal</title>
<style>
 body { font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
 h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 1.6rem; }
 input[type=text] { font-family: monospace; font-size: 1.1rem; width: 22rem; text-transform: uppercase; }
 table { border-collapse: collapse; width: 100%; margin-top: .8rem; }
 th, td { border-bottom: 1px solid #ddd; padding: .3rem .5rem; text-align: left; }
 .error { color: #a00; } .ok { color: #070; }
 section[hidden] { display: none; }
</style>
</head>
<body>
<h1>__FIRM__ — license portal</h1>
<form id="ticket-form">
  <label for="ticket">Ticket</label>
  <input id="ticket" type="text" autocomplete="off" placeholder="XXXXX-XXXXX-XXXXX-XXXXX-XXXXX">
  <button id="show" type="submit">Show licenses</button>
</form>
<p id="message" role="status"></p>
<section id="licenses-section" hidden>
  <h2>Licenses of ticket <span id="ticket-id"></span></h2>
  <table><thead><tr><th>#</th><th>Product</th><th>Quantity</th><th>Status</th><th>Container</th></tr></thead>
  <tbody id="licenses"></tbody></table>
  <h2>Activate into a container</h2>
  <p>On the computer that holds the container, write a request file
  (<code>licentia update request SERIAL --firm-code __FIRMCODE__ -o request.lcrq</code>),
  upload it here, then apply the update file you receive
  (<code>licentia update apply update.lcup</code>) and upload its receipt. A TMR license goes
  into its three upstreams' containers at once: upload their group request
  (<code>licentia update group-request up1.lcrq up2.lcrq up3.lcrq -o group.lcgr</code>), apply the
  group update on each upstream, and upload their group receipt
  (<code>licentia update group-receipt up1.receipt up2.receipt up3.receipt -o group.lcgc</code>).</p>
  <label for="activate-request">Request file</label> <input id="activate-request" type="file">
  <button id="activate" type="button">Activate</button>
  <h2>Return licenses</h2>
  <label for="return-request">Request file</label> <input id="return-request" type="file">
  <button id="return" type="button">Return</button>
  <h2>Confirm with the receipt</h2>
  <label for="receipt">Receipt file</label> <input id="receipt" type="file">
  <button id="confirm" type="button">Send receipt</button>
  <p><a id="download" hidden>Download the update file</a></p>
  <h2>Replace licenses of a lost container</h2>
  <p>If the container that holds this ticket's licenses is lost or broken, ask for its
  licenses back; within the product's policy they are free at once for a new activation.
  On the same computer (a reinstalled system), tick the box and upload a request file of
  the new container: it proves the machine is the same.</p>
  <label for="lost-serial">Lost container</label> <input id="lost-serial" type="text" placeholder="130-…">
  <label><input id="same-device" type="checkbox"> same computer</label>
  <label for="replace-request">Request file of the new container</label> <input id="replace-request" type="file">
  <button id="replace" type="button">Ask for replacement</button>
  <h2>Cloud</h2>
  <p>Licenses in the cloud stay with the vendor; a runtime uses them with a credential file.
  A new credential file replaces the old one at once.</p>
  <button id="cloud" type="button">Move free licenses to the cloud</button>
  <button id="credential" type="button">New credential file</button>
  <p><a id="credential-download" hidden>Download the credential file</a></p>
</section>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let ticket = "";
function say(text, ok) { const m = $("message"); m.textContent = text; m.className = ok ? "ok" : "error"; }
async function api(method, path, body) {
  const r = await fetch(path, { method, headers: { "Content-Type": "application/json" },
                                body: body ? JSON.stringify(body) : undefined });
  const data = await r.json();
  if (!r.ok) { const e = data.error || {}; throw new Error(`error ${e.code}: ${e.message}` + (e.hint ? ` — ${e.hint}` : "")); }
  return data;
}
function b64(buffer) { let s = ""; new Uint8Array(buffer).forEach((b) => s += String.fromCharCode(b)); return btoa(s); }
function unb64(text) { const s = atob(text); const a = new Uint8Array(s.length); for (let i = 0; i < s.length; i++) a[i] = s.charCodeAt(i); return a; }
async function fileB64(input) {
  const f = $(input).files[0]; if (!f) throw new Error("choose a file first"); return b64(await f.arrayBuffer());
}
async function show() {
  ticket = $("ticket").value.trim();
  const t = await api("GET", `/api/tickets/${encodeURIComponent(ticket)}`);
  ticket = t.ticket; $("ticket-id").textContent = t.ticket;
  const rows = $("licenses"); rows.textContent = "";
  for (const l of t.licenses) {
    const tr = document.createElement("tr"); tr.dataset.license = l.id;
    for (const v of [l.id, `${l.product} (${l.product_code})`, l.quantity === null ? "unlimited" : l.quantity, l.status, l.serial || ""]) {
      const td = document.createElement("td"); td.textContent = v; tr.appendChild(td);
    }
    rows.appendChild(tr);
  }
  $("licenses-section").hidden = false;
}
function offer(update, serial, counter, name) {
  const a = $("download");
  a.href = URL.createObjectURL(new Blob([unb64(update)], { type: "application/octet-stream" }));
  a.download = name || `update-${serial}-${counter}.lcup`; a.hidden = false;
}
function offerCredential(r) {
  const a = $("credential-download");
  a.href = URL.createObjectURL(new Blob([JSON.stringify(r.credential, null, 2)], { type: "application/json" }));
  a.download = `cloud-${r.serial}.credential.json`; a.hidden = false;
}
async function run(fn) { try { await fn(); } catch (e) { say(e.message, false); } }
$("ticket-form").addEventListener("submit", (ev) => { ev.preventDefault(); run(async () => { await show(); say("", true); }); });
$("activate").addEventListener("click", () => run(async () => {
  const r = await api("POST", `/api/tickets/${ticket}/activate`, { request: await fileB64("activate-request"), how: "portal" });
  if (r.tmr_id !== undefined) {
    offer(r.update, "", 0, `group-tmr-${r.tmr_id}.lcgu`); await show();
    say(`Group update of TMR license ${r.tmr_id} for containers ${r.parts.map((p) => p.serial).join(", ")} is ready: `
        + "apply it on each upstream, then send their group receipt.", true);
    return;
  }
  offer(r.update, r.serial, r.counter); await show();
  say(`Update for container ${r.serial} (step ${r.counter}) is ready: download and apply it, then send its receipt.`, true);
}));
$("return").addEventListener("click", () => run(async () => {
  const r = await api("POST", `/api/tickets/${ticket}/return`, { request: await fileB64("return-request") });
  offer(r.update, r.serial, r.counter); await show();
  say(`Return update for container ${r.serial} (step ${r.counter}) is ready: apply it, then send its receipt.`, true);
}));
$("confirm").addEventListener("click", () => run(async () => {
  const r = await api("POST", "/api/receipts", { receipt: await fileB64("receipt") });
  await show();
  if (r.tmr_id !== undefined) say(`Group receipt of TMR license ${r.tmr_id} confirmed: all three constituents.`, true);
  else say(`Receipt of container ${r.serial} confirmed (step ${r.counter}).`, true);
}));
$("replace").addEventListener("click", () => run(async () => {
  const same = $("same-device").checked;
  const body = { old_serial: $("lost-serial").value.trim(), same_device: same };
  if (same) body.request = await fileB64("replace-request");
  const r = await api("POST", `/api/tickets/${ticket}/replace`, body);
  await show();
  say(r.replacements.map((x) => `Replacement ${x.id}: license ${x.license} ${x.state} by ${x.decided_by || "nobody yet"}`).join("; ")
      + ". Activate the licenses into your new container.", true);
}));
$("cloud").addEventListener("click", () => run(async () => {
  const r = await api("POST", `/api/tickets/${ticket}/cloud`);
  offerCredential(r); await show();
  say(`Licenses ${r.licenses.join(", ")} are in cloud container ${r.serial}: download its credential file.`, true);
}));
$("credential").addEventListener("click", () => run(async () => {
  const r = await api("POST", `/api/tickets/${ticket}/cloud/credential`);
  offerCredential(r);
  say(`New credential file for cloud container ${r.serial}: the previous one no longer works.`, true);
}));
</script>
</body>
</html>
"""


def portal_routes(central: Central, now: Callable[[], int]) -> list[Route]:
    page = (
        PAGE.replace("__FIRMCODE__", str(central.firm.firm_code))
        .replace("__FIRM__", _escape(central.firm.name))
    )

    async def portal(request: Request) -> Response:
        return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'self'; connect-src 'self' blob:; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob:"})

    return [Route("/", portal, methods=["GET"]), Route("/portal", portal, methods=["GET"])]


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
