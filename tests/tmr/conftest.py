"""Fixtures for the TMR tests: a real 3-member etcd cluster (Debian's etcd-server)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.tmr.etcd import EtcdCluster, etcd_binary


def _need_etcd() -> None:
    if etcd_binary() is None:
        pytest.skip("etcd is not installed: apt-get install etcd-server etcd-client (scripts/system-packages.sh)")
    pytest.importorskip("aetcd", reason="the tmr extra is not installed: pip install -e '.[tmr]'")


@pytest.fixture(scope="session")
def etcd_cluster() -> Iterator[EtcdCluster]:
    """One cluster for the tests that do not harm it; each test uses its own key prefix."""
    _need_etcd()
    with EtcdCluster() as cluster:
        yield cluster


@pytest.fixture
def faulty_etcd_cluster() -> Iterator[EtcdCluster]:
    """A cluster of the test's own, for killing and stopping members."""
    _need_etcd()
    with EtcdCluster() as cluster:
        yield cluster
