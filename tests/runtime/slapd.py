"""A real OpenLDAP server for tests: `slapd` on 127.0.0.1 with its own database.

Each `Slapd` writes a slapd.conf (mdb back end, the memberof overlay, the Debian schemas)
into its directory, starts slapd in the foreground on a free port, and loads `LDIF` with
`ldapadd` (so the overlay fills in `memberOf`, as it does for a live directory).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from tests.runtime.harness import wait_for

SUFFIX = "dc=example,dc=org"
ADMIN = f"cn=admin,{SUFFIX}"
PASSWORD = "test-secret"
READER = f"uid=reader,ou=services,{SUFFIX}"
READER_PASSWORD = "reader-secret"

# alice: support; bob: development; carol: team-a < engineering < staff (nested);
# dave: ops (a posixGroup, by memberUid); erin: no group
LDIF = f"""\
dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: ou=people,{SUFFIX}
objectClass: organizationalUnit
ou: people

dn: ou=groups,{SUFFIX}
objectClass: organizationalUnit
ou: groups

dn: ou=services,{SUFFIX}
objectClass: organizationalUnit
ou: services

dn: {READER}
objectClass: inetOrgPerson
uid: reader
cn: reader
sn: reader
userPassword: {READER_PASSWORD}
""" + "".join(f"""
dn: uid={u},ou=people,{SUFFIX}
objectClass: inetOrgPerson
uid: {u}
cn: {u.title()}
sn: {u.title()}
""" for u in ("alice", "bob", "carol", "dave", "erin")) + f"""
dn: cn=support,ou=groups,{SUFFIX}
objectClass: groupOfNames
cn: support
member: uid=alice,ou=people,{SUFFIX}

dn: cn=development,ou=groups,{SUFFIX}
objectClass: groupOfNames
cn: development
member: uid=bob,ou=people,{SUFFIX}

dn: cn=team-a,ou=groups,{SUFFIX}
objectClass: groupOfNames
cn: team-a
member: uid=carol,ou=people,{SUFFIX}

dn: cn=engineering,ou=groups,{SUFFIX}
objectClass: groupOfNames
cn: engineering
member: cn=team-a,ou=groups,{SUFFIX}

dn: cn=staff,ou=groups,{SUFFIX}
objectClass: groupOfNames
cn: staff
member: cn=engineering,ou=groups,{SUFFIX}

dn: cn=ops,ou=groups,{SUFFIX}
objectClass: posixGroup
cn: ops
gidNumber: 5000
memberUid: dave
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _find(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}",) if Path(p).exists()), None)


def need_slapd() -> tuple[str, str]:
    slapd, ldapadd = _find("slapd"), _find("ldapadd")
    if slapd is None or ldapadd is None or not Path("/etc/ldap/schema/core.schema").exists():
        pytest.skip("OpenLDAP is not installed: apt-get install slapd ldap-utils (scripts/system-packages.sh)")
    return slapd, ldapadd


class Slapd:
    def __init__(self, directory: Path) -> None:
        self.slapd, self.ldapadd = need_slapd()
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "db").mkdir(exist_ok=True)
        self.port = _free_port()
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.conf = self.dir / "slapd.conf"
        modules = next((d for d in ("/usr/lib/ldap", "/usr/lib/x86_64-linux-gnu/ldap",
                                    "/usr/lib/aarch64-linux-gnu/ldap") if Path(d, "back_mdb.so").exists()),
                       "/usr/lib/ldap")
        self.conf.write_text(f"""\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath {modules}
moduleload back_mdb
moduleload memberof
pidfile {self.dir}/slapd.pid
argsfile {self.dir}/slapd.args

database mdb
maxsize 16777216
suffix "{SUFFIX}"
rootdn "{ADMIN}"
rootpw {PASSWORD}
directory {self.dir}/db
access to attrs=userPassword by anonymous auth by * none
access to * by * read
overlay memberof
""")
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()
        self.load(LDIF)

    def start(self) -> None:
        self.log = (self.dir / "slapd.log").open("ab")
        self.proc = subprocess.Popen([self.slapd, "-f", str(self.conf), "-h", self.url + "/", "-d", "0"],
                                     stdout=self.log, stderr=self.log)
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"slapd exited with {proc.returncode}: "
                                     f"{(self.dir / 'slapd.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                return False

        wait_for("slapd to listen", up)

    def load(self, ldif: str) -> None:
        path = self.dir / "data.ldif"
        path.write_text(ldif)
        done = subprocess.run([self.ldapadd, "-x", "-H", self.url, "-D", ADMIN, "-w", PASSWORD, "-f", str(path)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        self.log.close()
