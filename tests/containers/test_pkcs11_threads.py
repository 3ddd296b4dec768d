"""Threads sharing a PKCS#11 module. python-pkcs11 initialises a module without locking
arguments, so the module does no locking of its own; licentia's calls hold one lock per
process. Without it, SoftHSM2 corrupts its heap when scans and signatures overlap (the
process dies with SIGSEGV or a malloc abort), which is what a runtime does: it scans for
tokens in one worker thread while another signs a challenge."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from tokens import TokenStore, softhsm_store

PROGRAM = """
import sys, threading, time
from licentia.containers.pkcs11 import KeyKind, list_tokens, open_public_session, open_session

module, label, pin, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
stop = time.monotonic() + seconds
done = {"scans": 0, "signatures": 0}
with open_session(module, label=label, pin=pin) as session:
    session.generate_keypair(KeyKind.EC_P256, "threads")

    def scan() -> None:
        while time.monotonic() < stop:
            list_tokens(module)
            with open_public_session(module, label=label) as public:
                public.objects()
            done["scans"] += 1

    def sign() -> None:
        while time.monotonic() < stop:
            session.sign("threads", b"x" * 32)
            session.get_data("absent")
            done["signatures"] += 1

    threads = [threading.Thread(target=scan), threading.Thread(target=scan), threading.Thread(target=sign)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
print(done["scans"], done["signatures"])
"""


@pytest.fixture
def store() -> Iterator[TokenStore]:
    with softhsm_store() as s:
        yield s


def test_scans_and_signatures_in_several_threads_do_not_corrupt_the_module(store: TokenStore) -> None:
    token = store.add_token("threads")
    done = subprocess.run([sys.executable, "-c", PROGRAM, store.module, "threads", token.pin, "2"], env=store.env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    scans, signatures = map(int, done.stdout.split())
    assert scans > 0 and signatures > 0
