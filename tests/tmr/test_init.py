"""`licentia tmr init`: the files of a 3 upstream + 2 front end system, and an etcd cluster
started from them (three members on 127.0.0.1, .2 and .3)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.tmr.etcd import etcd_binary

from licentia.core.seats import Holder, ItemKey, Station
from licentia.model import AccessMode, ErrorCode, LicentiaError
from licentia.tmr.layout import Host, Layout, render
from licentia.tmr.seats import SeatStore

ADDRS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


def licentia(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LICENTIA_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "licentia.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def _ports_free_on_all() -> tuple[int, int]:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            a = int(s.getsockname()[1])
        b = a + 1
        try:
            held = []
            for addr in ADDRS:
                for port in (a, b):
                    t = socket.socket()
                    held.append(t)
                    t.bind((addr, port))
            return a, b
        except OSError:
            continue
        finally:
            for t in held:
                t.close()


def test_tmr_init_writes_a_layout_whose_etcd_members_form_a_cluster(tmp_path: Path) -> None:
    if etcd_binary() is None:
        pytest.skip("etcd is not installed: apt-get install etcd-server etcd-client")
    client_port, peer_port = _ports_free_on_all()
    out = tmp_path / "layout"
    done = licentia(
        "tmr", "init", "-o", str(out),
        *[a for i, addr in enumerate(ADDRS) for a in ("--upstream", f"up{i + 1}={addr}")],
        "--front-end", "fe1=127.0.0.4", "--front-end", "fe2=127.0.0.5",
        "--etcd-client-port", str(client_port), "--etcd-peer-port", str(peer_port),
        "--etcd-data-dir", str(tmp_path / "data" / "{name}"), "--virtual-address", "10.99.0.100/24",
        home=tmp_path / "home",
    )
    assert done.returncode == 0, done.stderr
    assert "TMR system: upstreams up1, up2, up3; front ends fe1, fe2" in done.stdout
    for host in ("up1", "up2", "up3"):
        for name in ("etcd.conf.yml", "runtime.toml", "licentia-etcd.service", "licentia-runtime.service"):
            assert (out / host / name).is_file()
    for host in ("fe1", "fe2"):
        for name in ("tmr.toml", "licentia-tmr.service", "keepalived.conf"):
            assert (out / host / name).is_file()
    assert "priority 150" in (out / "fe1" / "keepalived.conf").read_text()
    assert "priority 100" in (out / "fe2" / "keepalived.conf").read_text()
    # one server certificate for the twins (clients pin the virtual address's), its key private
    assert (out / "fe1" / "server.crt").read_bytes() == (out / "fe2" / "server.crt").read_bytes()
    assert (out / "fe1" / "server.key").read_bytes() == (out / "fe2" / "server.key").read_bytes()
    assert (out / "fe1" / "server.key").stat().st_mode & 0o077 == 0

    # the runtime reads its [tmr] section
    shown = licentia("runtime", "config", "--config", str(out / "up2" / "runtime.toml"), home=tmp_path / "home")
    assert shown.returncode == 0, shown.stderr
    cfg = json.loads(shown.stdout)
    assert cfg["tmr_role"] == "upstream" and cfg["network"] is True
    assert cfg["tmr_etcd"] == [f"http://{a}:{client_port}" for a in ADDRS]

    # a second init into the same directory is refused: it would make a second cluster token
    again = licentia("tmr", "init", "-o", str(out), "--upstream", "a=10.0.0.1", "--upstream", "b=10.0.0.2",
                     "--upstream", "c=10.0.0.3", "--front-end", "d=10.0.0.4", "--front-end", "e=10.0.0.5",
                     home=tmp_path / "home")
    assert again.returncode == 2 and "error 266" in again.stderr

    # the three members start from the written files and serve seats as one
    procs = []
    try:
        for host in ("up1", "up2", "up3"):
            log = open(tmp_path / f"{host}.log", "wb")  # noqa: SIM115
            procs.append(subprocess.Popen([etcd_binary() or "etcd", "--config-file", str(out / host / "etcd.conf.yml")],
                                          stdout=log, stderr=subprocess.STDOUT))
            log.close()

        async def serve() -> None:
            async with SeatStore(cfg["tmr_etcd"], op_timeout=30.0) as store:
                await store.open_client("c", 10)
                g = await store.access(key=ItemKey("131-1", 1, 2), quantity=1, mode=AccessMode.PER_ACCESS,
                                       station=Station("s"), holder=Holder.network("c"), now=time.time())
                assert g.used == 1
                await store.release(g.handle, time.time())

        asyncio.run(serve())
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_layout_refuses_what_cannot_work() -> None:
    ups = (Host.parse("a=10.0.0.1"), Host.parse("b=10.0.0.2"), Host.parse("c=10.0.0.3"))
    fes = (Host.parse("d=10.0.0.4"), Host.parse("e=10.0.0.5"))
    with pytest.raises(LicentiaError) as same:
        Layout(ups, (fes[0], Host.parse("a=10.0.0.9")), cluster_token="t")
    assert same.value.code is ErrorCode.INVALID_PARAMETER and "must differ" in same.value.message
    with pytest.raises(LicentiaError):
        Host.parse("Bad_Name=10.0.0.1")
    with pytest.raises(LicentiaError):
        Layout(ups, fes, cluster_token="t", virtual_address="10.0.0.300/24")
    # a member named by DNS listens on every address (etcd binds IP addresses only)
    dns = Layout((Host.parse("a=u1.example.net"), ups[1], ups[2]), fes, cluster_token="t")
    conf = render(dns)["a/etcd.conf.yml"]
    assert "listen-client-urls: http://0.0.0.0:2379" in conf
    assert "advertise-client-urls: http://u1.example.net:2379" in conf
    assert "keepalived.conf" not in " ".join(render(dns))  # no virtual address: none
    with pytest.raises(LicentiaError):
        Layout(ups, fes, cluster_token="t", virtual_address="10.0.0.100/24", advert_interval=0)
    with pytest.raises(LicentiaError):
        Layout(ups, fes, cluster_token="t", virtual_address="10.0.0.100/24", router_id=256)


def test_keepalived_conf_tracks_the_front_ends_port_and_takes_sub_second_adverts() -> None:
    """The shape tests/tmr/test_vip.py runs with keepalived (both BACKUP, nopreempt, unicast)."""
    ups = (Host.parse("a=10.0.0.1"), Host.parse("b=10.0.0.2"), Host.parse("c=10.0.0.3"))
    fes = (Host.parse("d=10.0.0.4"), Host.parse("e=10.0.0.5"))
    files = render(Layout(ups, fes, cluster_token="t", virtual_address="10.0.0.100/24", interface="ens3",
                          network_port=23000, advert_interval=0.25, router_id=9))
    d, e = files["d/keepalived.conf"], files["e/keepalived.conf"]
    for conf, me, peer in ((d, "10.0.0.4", "10.0.0.5"), (e, "10.0.0.5", "10.0.0.4")):
        assert "state BACKUP" in conf and "nopreempt" in conf and "vrrp_version 3" in conf
        assert f"unicast_src_ip {me}" in conf and f"unicast_peer {{\n        {peer}\n    }}" in conf
        assert "script \"/bin/bash -c '</dev/tcp/127.0.0.1/23000'\"" in conf
        assert "advert_int 0.25" in conf and "virtual_router_id 9" in conf
        assert "10.0.0.100/24 dev ens3" in conf and "interface ens3" in conf
    assert "priority 150" in d and "priority 100" in e
    assert "advert_int 1\n" in render(Layout(ups, fes, cluster_token="t", virtual_address="10.0.0.100/24"))[
        "d/keepalived.conf"]
    assert "keepalived.conf to /etc/keepalived/" in files["README.txt"]


def test_the_front_end_reads_the_tmr_toml_that_init_writes(tmp_path: Path) -> None:
    from licentia.tmr.config import load_config

    ups = [Host(f"up{i}", f"10.0.0.1{i}") for i in (1, 2, 3)]
    fes = [Host(f"fe{i}", f"10.0.0.2{i}") for i in (1, 2)]
    files = render(Layout(upstreams=(ups[0], ups[1], ups[2]), front_ends=(fes[0], fes[1]), cluster_token="t",
                          virtual_address="10.0.0.100/24", interface="eth0", etcd_client_port=2379,
                          etcd_peer_port=2380, network_port=22350, etcd_data_dir="/var/lib/licentia/etcd"))
    path = tmp_path / "tmr.toml"
    path.write_text(files["fe1/tmr.toml"])
    config = load_config(path, tmp_path / "state")
    assert config.upstreams == ("10.0.0.11:22350", "10.0.0.12:22350", "10.0.0.13:22350")
    assert config.etcd == ("http://10.0.0.11:2379", "http://10.0.0.12:2379", "http://10.0.0.13:2379")
    assert config.port == 22350 and config.certificate.name == "tmr-front-end.crt"
    twin = tmp_path / "twin.toml"
    twin.write_text(files["fe2/tmr.toml"])
    assert load_config(twin, tmp_path / "s2").serial == config.serial  # the twins show one virtual container
    with pytest.raises(LicentiaError) as info:  # two upstreams are not a TMR system
        load_config(path, tmp_path / "state", upstreams=["10.0.0.11:22350", "10.0.0.12:22350"])
    assert info.value.code is ErrorCode.INVALID_PARAMETER and "three" in info.value.message
    assert config.max_connections_per_peer == 64  # a runtime's default
    path.write_text(files["fe1/tmr.toml"] + "\n[limits]\nmax_connections_per_peer = 200\n")
    assert load_config(path, tmp_path / "state").max_connections_per_peer == 200
    assert load_config(path, tmp_path / "state", max_connections_per_peer=300).max_connections_per_peer == 300
