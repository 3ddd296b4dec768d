"""WebAdmin's HTML, rendered on the server: plain forms, no script, charts as inline SVG."""

from __future__ import annotations

import datetime as dt
import html
import time
from collections.abc import Iterable, Sequence
from typing import Any

from licentia.core.acl import AccessList, rule_fields
from licentia.runtime.webadmin.auth import Session
from licentia.runtime.webadmin.charts import bar_chart, line_chart
from licentia.runtime.webadmin.reportdata import ReportData

e = html.escape

NAV = (("/", "Overview"), ("/containers", "Containers and items"), ("/sessions", "Sessions"),
       ("/acl", "Access list"), ("/reports", "Reports"), ("/settings", "Search list and settings"),
       ("/diagnostics", "Diagnostics"))

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#1a202c}
header{background:#2d3748;color:#fff;padding:.6em 1.5em;display:flex;gap:1.2em;align-items:center;flex-wrap:wrap}
header a{color:#e2e8f0;text-decoration:none}header a.on{color:#fff;font-weight:bold}
header .who{margin-left:auto}main{padding:1em 1.5em}
table{border-collapse:collapse;margin:0 0 1.5em}td,th{border:1px solid #cbd5e0;padding:.25em .6em;text-align:left}
th{background:#edf2f7}.err{color:#9b2c2c;background:#fff5f5;padding:.5em;border:1px solid #feb2b2}
.ok{color:#22543d;background:#f0fff4;padding:.5em;border:1px solid #9ae6b4}
form.inline{display:inline}figure.chart{margin:0 0 1.5em}figcaption{font-weight:bold;margin-bottom:.3em}
label{margin-right:.8em}input,select{margin:.1em .3em}
"""


def t(at: float | None) -> str:
    if not at:
        return "-"
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def layout(title: str, body: str, session: Session | None, host: str, active: str = "") -> str:
    nav = ""
    if session is not None:
        links = "".join(f"<a href='{href}'{' class=on' if href == active else ''}>{e(name)}</a>"
                        for href, name in NAV)
        nav = (f"{links}<span class='who'>{e(session.user)} ({e(session.role)}) "
               f"<form class='inline' method='post' action='/logout'>{csrf(session)}"
               f"<button type='submit'>Log out</button></form></span>")
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{e(title)} · licentia on {e(host)}</title><style>{STYLE}</style></head><body>"
            f"<header><strong>licentia WebAdmin · {e(host)}</strong>{nav}</header>"
            f"<main><h1>{e(title)}</h1>{body}</main></body></html>")


def csrf(session: Session) -> str:
    return f"<input type='hidden' name='csrf' value='{e(session.csrf)}'>"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], ident: str = "") -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, Raw) else e(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table{f' id={ident}' if ident else ''}><tr>{head}</tr>{body}</table>"


class Raw(str):
    """HTML already escaped (a cell with a form)."""


def message(ok: str | None, error: str | None) -> str:
    return (f"<p class='ok'>{e(ok)}</p>" if ok else "") + (f"<p class='err'>{e(error)}</p>" if error else "")


def login(error: str | None, no_users: bool) -> str:
    hint = ("<p class='err'>No WebAdmin user exists yet. On the server, run "
            "<code>licentia webadmin passwd USER --role admin</code>.</p>") if no_users else ""
    return (f"{hint}{message(None, error)}<form method='post' action='/login' id='login'>"
            "<p><label>User <input name='user' autocomplete='username' required></label></p>"
            "<p><label>Password <input name='password' type='password' autocomplete='current-password' required>"
            "</label></p><p><button type='submit'>Log in</button></p></form>")


def overview(info: dict[str, Any], acl: dict[str, Any]) -> str:
    rows = [("host", info["host"]), ("pid", info["pid"]), ("up since", t(info["started_at"])),
            ("role", "network server" if info["network"] else "local only"),
            ("sessions", info["sessions"]), ("connections", info["connections"]),
            ("containers", info["containers"]),
            ("access list", f"{acl['rules']} rule(s), {'in force' if acl['in_force'] else 'not applied'}")]
    return table(("", ""), rows, "overview") + "<p>JSON: <a href='/api/status'>/api/status</a> · " \
        "metrics: <a href='/metrics'>/metrics</a></p>"


def containers(rows: list[dict[str, Any]], items: list[dict[str, Any]]) -> str:
    c = table(("serial", "kind", "status", "items", "binding"),
              [(r["serial"], r.get("kind", ""), r["status"], "-" if r["items"] is None else r["items"], r["binding"])
               for r in rows], "containers")
    opts = ("feature_map", "expires_at", "activates_at", "usage_period", "maintenance_until", "versions",
            "borrow_max", "vm_allowed", "locked", "tmr_id")
    item_rows = []
    for i in items:
        units = "-" if i.get("units") is None else f"{i.get('units_remaining')}/{i['units']}"
        options = ", ".join(f"{k}={i[k]}" for k in opts if i.get(k) not in (None, "", 0, False, [], ()))
        item_rows.append((i["container"], i["firm_code"], i["product_code"], i["item_id"], i["status"],
                          i["quantity"], i["in_use"], units, t(i.get("valid_until")), options, i.get("text") or ""))
    return "<h2>Containers</h2>" + c + "<h2>Items</h2>" + table(
        ("container", "firm", "product", "item", "status", "quantity", "in use", "units", "valid until", "options",
         "text"), item_rows, "items")


def sessions(rows: list[dict[str, Any]], session: Session, ok: str | None, error: str | None) -> str:
    out = []
    for s in rows:
        action: Any = "-"
        if session.admin:
            action = Raw(f"<form class='inline' method='post' action='/sessions/{int(s['handle'])}/release'>"
                         f"{csrf(session)}<button type='submit'>Release</button></form>")
        out.append((s["handle"], f"{s['firm']}:{s['product']}", s["mode"], s["program"],
                    "-" if s["pid"] is None else s["pid"], s["user"], s["host"], s["location"], t(s["since"]),
                    action))
    return message(ok, error) + table(("handle", "product", "mode", "program", "PID", "user", "host", "where",
                                       "since", ""), out, "sessions")


def acl_page(acl: AccessList, status: dict[str, Any], session: Session, ok: str | None, error: str | None,
             held: list[tuple[str, int, int]]) -> str:
    rows = []
    for r in acl.rules:
        f = rule_fields(r)
        who = next((f"{k} {', '.join(v) if isinstance(v, list) else v}" for k in ("user", "host", "subnet", "group")
                    if (v := f.get(k))), "anyone")
        action: Any = "-"
        if session.admin:
            action = Raw(f"<form class='inline' method='post' action='/acl/remove'>{csrf(session)}"
                         f"<input type='hidden' name='name' value='{e(r.name)}'>"
                         f"<button type='submit'>Remove</button></form>")
        rows.append((r.name, str(r.scope), r.action.value, who, r.reserve or "-",
                     "-" if r.limit is None else r.limit, t(r.expires) if r.expires else "-", r.note, action))
    state = (f"<p>{len(acl.rules)} rule(s); {'applied' if status['in_force'] else 'not applied'}"
             f"{'' if acl.enabled else ' (enabled = false)'}. Precedence: product &gt; firm &gt; container &gt; "
             "server; in a scope, deny wins over allow.</p>")
    if status.get("problem"):
        state += f"<p class='err'>The file has a mistake; the list before it stays in force: {e(status['problem'])}</p>"
    form = ""
    if session.admin:
        form = (f"<h2>Add a rule</h2><form method='post' action='/acl/add' id='add-rule'>{csrf(session)}"
                "<label>Name <input name='name' required></label>"
                "<label>Scope <input name='scope' value='server' title='server, container SERIAL, firm FIRM or "
                "product FIRM:PRODUCT'></label>"
                "<label>Action <select name='action'>" + _options(("allow", "deny")) + "</select></label>"
                "<label>Who <select name='kind'>" + _options(("group", "user", "host", "subnet", "anyone"))
                + "</select></label>"
                "<label>Names <input name='values' title='comma-separated'></label>"
                "<label>Reserve <input name='reserve' type='number' min='0' value='0' size='4'></label>"
                "<label>Max <input name='max' type='number' min='0' size='4'></label>"
                "<label>Note <input name='note'></label>"
                "<button type='submit'>Add</button></form>")
    if session.admin:
        form += (f"<h2>Default action of a scope</h2><form method='post' action='/acl/default' id='set-default'>"
                 f"{csrf(session)}<label>Scope <input name='scope' value='server'></label>"
                 "<label>Action <select name='action'>" + _options(("deny", "allow", "unset"))
                 + "</select></label><button type='submit'>Set</button></form>")
    defaults = table(("scope", "default"), [(str(sc), act.value) for sc, act in acl.defaults.items()], "defaults") \
        if acl.defaults else ""
    held_table = table(("item", "seats held", "charged to a rule"), held, "held") if held else ""
    return message(ok, error) + state + table(
        ("name", "scope", "action", "who", "reserve", "max", "expires", "note", ""), rows, "rules") + defaults + form \
        + held_table


def _options(values: Sequence[str]) -> str:
    return "".join(f"<option value='{v}'>{v}</option>" for v in values)


def settings(servers: list[str], config: list[tuple[str, str, Any, Any]], session: Session, ok: str | None,
             error: str | None) -> str:
    rows = []
    for s in servers:
        action: Any = "-"
        if session.admin:
            action = Raw(f"<form class='inline' method='post' action='/settings/servers/remove'>{csrf(session)}"
                         f"<input type='hidden' name='address' value='{e(s)}'><button type='submit'>Remove</button>"
                         "</form>")
        rows.append((s, action))
    form = ""
    if session.admin:
        form = (f"<form method='post' action='/settings/servers/add' id='add-server'>{csrf(session)}"
                "<label>Server <input name='address' placeholder='host:port' required></label>"
                "<button type='submit'>Add</button></form><p>Settings are changed in runtime.toml "
                "(<code>licentia runtime config</code>) and apply at the next start.</p>")
    return (message(ok, error) + "<h2>Search list (servers.json)</h2>" + table(("server", ""), rows, "servers") + form
            + "<h2>Server settings</h2>"
            + table(("setting", "section", "value", "default"), config, "settings"))


def diagnostics(facts: list[tuple[str, Any]], problems: list[dict[str, Any]]) -> str:
    return (table(("", ""), facts, "facts") + "<h2>Recent problems</h2>"
            + table(("time", "what"), [(t(p.get("at")), p.get("detail") or p.get("message") or str(p))
                                       for p in problems], "problems")
            + "<p>For support: <code>licentia diag</code> writes one archive with versions, configuration, "
              "container health and the recent log.</p>")


def reports(data: ReportData, quantities: dict[tuple[int, int], int], products: list[tuple[int, int]],
            chosen: tuple[int, int] | None, start: str, end: str, error: str | None) -> str:
    opts = "".join(f"<option value='{f}:{p}'{' selected' if chosen == (f, p) else ''}>{f}:{p}</option>"
                   for f, p in products)
    form = (f"<form method='get' action='/reports' id='period'><label>From <input name='from' value='{e(start)}'>"
            f"</label><label>To <input name='to' value='{e(end)}'></label><label>Product <select name='product'>"
            f"<option value=''>all</option>{opts}</select></label><button type='submit'>Show</button></form>")
    if error:
        return message(None, error) + form
    until = min(data.end, time.time())
    out = [form, f"<p>{data.lines} log lines read; one point per {data.interval / 60:g} minutes.</p>"]
    for n, (key, points) in enumerate(sorted(data.timelines.items())):
        line = [(at, float(v)) for at, v in points]
        if line and line[-1][0] < until:  # the last level, to the end of the period (or now)
            line.append((until, line[-1][1]))
        out.append(line_chart(f"Concurrent seats of product {key[0]}:{key[1]} (peak {data.peaks.get(key, 0)})",
                              line, limit=quantities.get(key),
                              ident=f"usage-{n}"))
    if not data.timelines:
        out.append("<p class='empty'>No seat was taken in this period.</p>")
    codes = sorted({c for per in data.denials_per_day.values() for c in per})
    bars = [(dt.datetime.fromtimestamp(day, dt.UTC).strftime("%Y-%m-%d"),
             [float(per.get(c, 0)) for c in codes]) for day, per in sorted(data.denials_per_day.items())]
    names = [{212: "212 all seats in use", 1300: "1300 access list"}.get(c, str(c)) for c in codes]
    out.append(bar_chart("Denials per day", bars, series=names or ("",), ident="denials"))
    res = [(r.rule, [float(r.reserved), float(r.peak), float(max(r.reserved - r.peak, 0))])
           for r in data.reservations]
    out.append(bar_chart("Reservations: seats reserved, peak used, never used at the peak", res,
                         series=("reserved", "peak used", "unused"), ident="reservations"))
    unused = [r.rule for r in data.reservations if r.never_used]
    if unused:
        out.append(f"<p class='err'>Reserved seats never used in this period: {e(', '.join(unused))}</p>")
    return "".join(out)
