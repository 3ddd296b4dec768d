"""Directory groups from a real OpenLDAP server (slapd on 127.0.0.1, its own database)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.runtime.harness import base_env
from tests.runtime.slapd import READER, READER_PASSWORD, SUFFIX, Slapd

from licentia.core.acl import Held, Identity, Refusal, decide, from_document
from licentia.core.seats import ItemKey
from licentia.runtime.directory import Directory, DirectoryConfig, DirectoryError, lookup_groups


@pytest.fixture(scope="module")
def ldap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    server = Slapd(tmp_path_factory.mktemp("slapd"))
    try:
        yield server
    finally:
        server.stop()


def config(server: Slapd, nested: str = "search", ttl: float = 300.0, retry: float = 30.0,
           stale: float = 3600.0) -> DirectoryConfig:
    return DirectoryConfig(url=server.url, base=SUFFIX, bind_dn=READER, password=READER_PASSWORD, nested=nested,
                           ttl=ttl, retry=retry, stale=stale)


def test_direct_nested_and_posix_groups(ldap: Slapd) -> None:
    c = config(ldap)
    assert lookup_groups(c, "alice") == {"support"}
    assert lookup_groups(c, "CORP\\bob") == {"development"}
    assert lookup_groups(c, "carol@example.org") == {"team-a", "engineering", "staff"}
    assert lookup_groups(config(ldap, nested="none"), "carol") == {"team-a"}
    assert lookup_groups(c, "dave") == {"ops"}
    assert lookup_groups(c, "erin") == frozenset()
    assert lookup_groups(c, "nobody") == frozenset()
    assert lookup_groups(c, "*)(uid=*") == frozenset()  # the name is escaped, not a filter


def test_a_wrong_bind_password_is_a_directory_error(ldap: Slapd) -> None:
    with pytest.raises(DirectoryError, match="invalidCredentials"):
        lookup_groups(DirectoryConfig(url=ldap.url, base=SUFFIX, bind_dn=READER, password="wrong"), "alice")


def test_cache_ttl_retry_and_a_directory_that_goes_away(tmp_path: Path) -> None:
    server = Slapd(tmp_path / "slapd")
    try:
        d = Directory(config(server, ttl=60.0, retry=10.0, stale=300.0))
        assert d.groups("alice", 0.0) == {"support"} and d.lookups == 1
        assert d.groups("ALICE", 30.0) == {"support"} and d.lookups == 1  # cached, names without case
    finally:
        server.stop()
    assert d.groups("alice", 59.0) == {"support"} and d.lookups == 1  # still fresh: not asked
    assert d.groups("alice", 61.0) == {"support"} and d.lookups == 2  # asked, failed: the stale answer
    assert d.last_error is not None and "refused" in d.last_error
    assert d.groups("alice", 65.0) == {"support"} and d.lookups == 2  # within retry: not asked again
    assert d.groups("alice", 301.0) is None and d.lookups == 3  # too stale: unknown
    assert d.groups("bob", 301.0) is None  # never known


def test_a_failed_directory_never_blocks_an_access_that_needs_no_group(tmp_path: Path) -> None:
    acl = from_document({"rule": [
        {"name": "support", "scope": "product 10001:7", "group": "support", "reserve": 3},
        {"name": "no-contractors", "scope": "product 10001:8", "action": "deny", "group": "contractors"},
    ]})
    down = Directory(DirectoryConfig(url="ldap://127.0.0.1:9", base=SUFFIX, timeout=1.0))
    other = ItemKey("130-1", 10002, 1)
    assert not acl.needs_groups(other)  # no group rule covers it: the directory is not asked
    assert decide(acl, other, Identity("alice"), 5, Held(), 0).granted
    groups = down.groups("alice", 0.0)
    assert groups is None and down.last_error
    seven = decide(acl, ItemKey("130-1", 10001, 7), Identity("alice", groups=groups), 10, Held(), 0)
    assert seven.granted and seven.charge is None  # a free seat, as for anyone outside the group
    eight = decide(acl, ItemKey("130-1", 10001, 8), Identity("alice", groups=groups), 10, Held(), 0)
    assert not eight.granted and eight.refusal is Refusal.DIRECTORY


def test_acl_check_asks_the_directory(ldap: Slapd, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "reader.password").write_text(READER_PASSWORD + "\n")
    (home / "runtime.toml").write_text(f'[directory]\nurl = "{ldap.url}"\nbase = "{SUFFIX}"\n'
                                       f'bind_dn = "{READER}"\npassword_file = "reader.password"\n')

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "licentia.cli.main", "--home", str(home), *args],
                              env=base_env(), capture_output=True, text=True, timeout=120)

    assert cli("acl", "add", "engineers", "--scope", "product 10001:7", "--group", "engineering",
               "--reserve", "2").returncode == 0
    carol = cli("acl", "check", "--firm", "10001", "--product", "7", "--quantity", "2", "--user", "carol",
                "--directory")
    assert carol.returncode == 0, carol.stderr
    assert "groups engineering, staff, team-a" in carol.stdout and 'charged to rule "engineers"' in carol.stdout
    erin = cli("acl", "check", "--firm", "10001", "--product", "7", "--quantity", "2", "--user", "erin",
               "--directory")
    assert erin.returncode == 2 and "error 1300" in erin.stderr and 'rule "engineers"' in erin.stderr


def test_groups_async_answers_from_the_cache_or_a_thread(ldap: Slapd) -> None:
    import asyncio

    d = Directory(config(ldap))
    assert asyncio.run(d.groups_async("bob", 0.0)) == {"development"} and d.lookups == 1
    assert asyncio.run(d.groups_async("bob", 1.0)) == {"development"} and d.lookups == 1


def test_report_usage_per_directory_group(ldap: Slapd, tmp_path: Path) -> None:
    from licentia.core.seats import Event, EventKind, Holder, ReleaseReason, Station
    from licentia.crypto import new_signing_key
    from licentia.model import AccessMode
    from licentia.runtime.usagelog import UsageLog

    home = tmp_path / "home"
    log = UsageLog(home / "logs" / "usage.jsonl", new_signing_key())
    key = ItemKey("130-1", 10001, 7)
    t, used = 1767225600.0, 0
    for handle, user in enumerate(["alice", "bob", "carol", "carol", "erin"], 1):
        h = Holder.network(f"c-{user}", user=user, host="pc")
        used += 1
        log.record(Event(EventKind.GRANT, t + handle, key, AccessMode.PER_ACCESS, Station("pc"), h, handle, used))
        used -= 1
        log.record(Event(EventKind.RELEASE, t + handle + 3600, key, AccessMode.PER_ACCESS, Station("pc"), h, handle,
                         used, ReleaseReason.PROGRAM))
    log.close()
    (home / "runtime.toml").write_text(f'[directory]\nurl = "{ldap.url}"\nbase = "{SUFFIX}"\n')
    done = subprocess.run([sys.executable, "-m", "licentia.cli.main", "--home", str(home), "report", "usage",
                           "--by-group"], env=base_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.split("use per directory group")[1].splitlines()
            if line and not line.startswith(("(", " ", "GROUP"))}
    assert rows["engineering"] == ["1", "2", "2.0"] and rows["staff"] == ["1", "2", "2.0"]
    assert rows["support"] == ["1", "1", "1.0"] and rows["development"] == ["1", "1", "1.0"]
    assert "(no group)" in done.stdout
