"""The pure parts of WebAdmin: passwords, sessions and CSRF, charts, metrics, the
diagnostics' scrubbing of secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from licentia.crypto import check_password, hash_password
from licentia.model import LicentiaError
from licentia.runtime.diag import scrub
from licentia.runtime.webadmin.auth import (
    SESSION_SECONDS,
    Sessions,
    csrf_ok,
    read_users,
    set_user,
    users_path,
)
from licentia.runtime.webadmin.charts import bar_chart, line_chart
from licentia.runtime.webadmin.metrics import Histogram, render


def test_passwords_are_salted_scrypt_and_checked() -> None:
    a, b = hash_password("s3cret-pass", cost=10), hash_password("s3cret-pass", cost=10)
    assert a != b and a.startswith("scrypt$10$") and "s3cret" not in a
    assert check_password(a, "s3cret-pass") and not check_password(a, "s3cret-pasS")
    kind, cost, salt, digest = a.split("$")
    assert not check_password(f"{kind}${cost}${salt}${digest[:-4]}AAA=", "s3cret-pass")
    assert not check_password(f"{kind}$30${salt}${digest}", "s3cret-pass")  # a cost that would take forever
    assert not check_password("plain", "plain") and not check_password("", "")


def test_users_roles_sessions_and_csrf(tmp_path: Path) -> None:
    path = users_path(tmp_path)
    with pytest.raises(LicentiaError):
        set_user(path, "ann", "root", "long enough")
    with pytest.raises(LicentiaError):
        set_user(path, "ann", "admin", "short")
    set_user(path, "ann", "admin", "long enough")
    set_user(path, "ro", "read-only", "also long enough")
    assert path.stat().st_mode & 0o777 == 0o600 and set(read_users(path)) == {"ann", "ro"}
    sessions = Sessions(path)
    assert sessions.check_password("ann", "long enough") == "admin"
    assert sessions.check_password("ro", "also long enough") == "read-only"
    assert sessions.check_password("ann", "wrong") is None and sessions.check_password("nobody", "x") is None
    token = sessions.open("ann", "admin", now=1000.0)
    s = sessions.get(token, now=1001.0)
    assert s is not None and s.admin and csrf_ok(s, s.csrf) and not csrf_ok(s, s.csrf[:-1] + "x")
    assert not csrf_ok(s, None) and not csrf_ok(s, "")
    assert sessions.get("forged", now=1001.0) is None
    assert sessions.get(token, now=1001.0 + SESSION_SECONDS + 1) is None  # expired after no use
    sessions.close(sessions.open("ro", "read-only", now=2000.0))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1e9), st.integers(0, 10_000)), min_size=1, max_size=200),
       st.one_of(st.none(), st.integers(1, 10_000)))
def test_line_chart_is_one_svg_within_its_box(points: list[tuple[float, int]], limit: int | None) -> None:
    points.sort()
    svg = line_chart("t <b>", [(t, float(v)) for t, v in points], limit=limit)
    assert svg.count("<svg") == 1 and svg.count("class='series'") == 1 and "<b>" not in svg
    assert ("class='limit'" in svg) == (limit is not None)
    import re

    for x, y in re.findall(r"[ML]([-0-9.]+),([-0-9.]+)", svg):
        assert 0 <= float(x) <= 720 and 0 <= float(y) <= 260


def test_bar_chart_and_empty_charts() -> None:
    svg = bar_chart("denials", [("2026-01-01", [3.0, 1.0]), ("2026-01-02", [0.0, 2.0])], series=("212", "1300"))
    assert svg.count("class='bar'") == 4 and "1300" in svg
    assert "nothing in this period" in bar_chart("x", []) and "nothing in this period" in line_chart("x", [])


def test_metrics_text() -> None:
    h = Histogram()
    h.observe("api", 0.003)
    h.observe("api", 7.0)
    text = render([{"container": "130-1", "firm_code": 10001, "product_code": 7, "item_id": 1, "in_use": 2,
                    "quantity": 10},
                   {"container": 'a"b', "firm_code": 1, "product_code": 2, "item_id": 3, "in_use": 0,
                    "quantity": None}],
                  sessions=2, connections=3, network_clients=1, denials={212: 4}, acl_rules=5, acl_in_force=True,
                  started_at=1.5, latency=h)
    lines = text.splitlines()
    assert 'licentia_seats_in_use{container="130-1",firm="10001",product="7",item="1"} 2' in lines
    assert 'licentia_seats_in_use{container="a\\"b",firm="1",product="2",item="3"} 0' in lines
    assert sum(ln.startswith("licentia_seats_quantity{") for ln in lines) == 1
    assert 'licentia_denials_total{code="212"} 4' in lines
    assert 'licentia_http_request_duration_seconds_bucket{path="api",le="0.005"} 1' in lines
    assert 'licentia_http_request_duration_seconds_bucket{path="api",le="5.0"} 1' in lines
    assert 'licentia_http_request_duration_seconds_bucket{path="api",le="+Inf"} 2' in lines
    assert 'licentia_http_request_duration_seconds_count{path="api"} 2' in lines


def test_diag_scrubs_secrets() -> None:
    doc = {"directory": {"url": "ldap://x", "password_file": "p", "bind_dn": "cn=r"},
           "central": {"token": "t", "url": "u"}, "network": {"private_key": "k.pem", "certificate": "c.pem"},
           "list": [{"secret": "s"}], "empty_password": ""}
    out = scrub(doc)
    assert out["directory"] == {"url": "ldap://x", "password_file": "(left out)", "bind_dn": "cn=r"}
    assert out["central"]["token"] == "(left out)" and out["network"]["private_key"] == "(left out)"
    assert out["list"] == [{"secret": "(left out)"}] and out["network"]["certificate"] == "c.pem"


def test_wrong_passwords_lock_an_address_out_for_a_while(tmp_path: Path) -> None:
    from licentia.runtime.webadmin.auth import FAILURE_WINDOW, FAILURES_ALLOWED, LOCKOUT

    sessions = Sessions(users_path(tmp_path))
    for i in range(FAILURES_ALLOWED - 1):
        sessions.failed("10.0.0.9", now=100.0 + i)
    assert sessions.locked_out("10.0.0.9", now=110.0) == 0
    sessions.failed("10.0.0.9", now=110.0)
    assert sessions.locked_out("10.0.0.9", now=111.0) == LOCKOUT - 1
    assert sessions.locked_out("10.0.0.8", now=111.0) == 0  # another address is not held up
    assert sessions.locked_out("10.0.0.9", now=110.0 + LOCKOUT) == 0
    assert sessions.locked_out("10.0.0.9", now=110.0 + FAILURE_WINDOW) == 0 and not sessions._failures
