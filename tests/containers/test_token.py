"""Token containers on real SoftHSM2 tokens: the update cycle, presence, claims, lockout,
copied licenses, PINs, the key that cannot leave, and crash safety.

Every test has its own SoftHSM2 token directory (tests/tokens.py) and its own lock
directory inside it; both are removed when the test ends.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pkcs11 import Attribute, ObjectClass, TokenFlag, exceptions as p11e

from licentia.containers import token as tk
from licentia.containers.operations import spend_units, use_item
from licentia.containers.pkcs11 import open_session, reinitialize
from licentia.containers.token import TokenContainer, TokenEvent, TokenEventKind
from licentia.core import claims as C, updates as U
from licentia.core.content import ContainerContent
from licentia.crypto import new_signing_key
from licentia.crypto.artifacts import sign_artifact_with
from licentia.model import (
    ContainerKind,
    ErrorCode,
    ItemRequest,
    LicentiaError,
    ProductItem,
    envelope as env,
)
from tokens import SoftToken, TokenStore, softhsm_store

FIRM = 10_001
FIRM_KEY = new_signing_key()
T0 = 1_800_000_000
PIN = "1234"


@pytest.fixture
def token_store() -> Iterator[TokenStore]:
    """A SoftHSM2 token directory of this test's own, removed afterwards."""
    with softhsm_store() as store:
        yield store


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture(autouse=True)
def _private_locks(token_store: TokenStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(tk.LOCK_DIR_ENV, str(token_store.directory / "locks"))
    yield
    conf = str(token_store.conf)
    leaked = [key for key in tk._sessions if key[1] == conf]
    assert not leaked, f"token sessions left open: {leaked}"


def add_token(store: TokenStore, label: str) -> tuple[SoftToken, Path]:
    """A new token and the directory SoftHSM2 keeps it in."""
    before = set((store.directory / "tokens").iterdir())
    token = store.add_token(label, pin=PIN)
    (directory,) = set((store.directory / "tokens").iterdir()) - before
    return token, directory


@pytest.fixture
def lic(token_store: TokenStore) -> tuple[SoftToken, Path]:
    return add_token(token_store, "lic")


@pytest.fixture
def container(token_store: TokenStore, lic: tuple[SoftToken, Path]) -> Iterator[TokenContainer]:
    c = TokenContainer.create(token_store.module, label="lic", pin=PIN, now=T0, clock=Clock())
    yield c
    c.close()


def open_again(store: TokenStore, clock: Clock | None = None, label: str = "lic") -> TokenContainer:
    return TokenContainer.open(store.module, label=label, pin=PIN, clock=clock or Clock())


def issue(c: TokenContainer, *ops: U.Operation, now: int = T0) -> bytes:
    """The vendor's answer to the container's request (the request is signed in the token)."""
    request = U.read_request(U.make_request(c.read(), FIRM, now, {}, keys=c.keys))
    assert request.sign_public == c.sign_public and request.serial == c.serial
    return U.issue_update(request, FIRM, FIRM_KEY, list(ops), now)


def apply(c: TokenContainer, update: bytes, now: int = T0) -> U.Applied:
    def change(content: ContainerContent) -> tuple[ContainerContent, U.Applied]:
        applied = U.apply_update(content, update, now, in_vm=False, keys=c.keys)
        return applied.content, applied

    return c.transact(change)


def licensed(c: TokenContainer, product: int = 7, units: int | None = None) -> None:
    apply(c, issue(c, U.PutItem(1, ProductItem(product_code=product, units=units))))


# -- the update cycle ---------------------------------------------------------------------


def test_create_request_issue_apply_use(token_store: TokenStore, container: TokenContainer) -> None:
    c = container
    assert c.serial.kind is ContainerKind.TOKEN and c.serial.mask == 3
    assert c.serial == tk.serial_for(c.sign_public)
    assert c.read().sign_key == b""  # the signing key lives in the token only

    applied = apply(c, issue(c, U.PutItem(1, ProductItem(product_code=7, units=10))))
    receipt = U.read_receipt(applied.receipt, c.sign_public)  # signed inside the token
    assert receipt.serial == c.serial and receipt.update_counter == 1

    runtime = open_again(token_store)
    try:
        runtime.claim("rt-a", T0)
        entry = use_item(runtime, FIRM, 7, ItemRequest(), T0)
        assert entry.item.product_code == 7
        assert spend_units(runtime, FIRM, entry.item_id, 3, T0) == 7
    finally:
        runtime.close()
    again = open_again(token_store)
    try:
        assert again.read().find(FIRM, 7)[0].state.units_remaining == 7
    finally:
        again.close()


def test_the_same_update_twice_changes_nothing(container: TokenContainer) -> None:
    update = issue(container, U.PutItem(1, ProductItem(product_code=7)))
    apply(container, update)
    with pytest.raises(LicentiaError) as err:
        apply(container, update)
    assert err.value.code is ErrorCode.UPDATE_TOO_OLD


def test_description_is_public_and_no_pin_is_needed_to_find_containers(
    token_store: TokenStore, container: TokenContainer
) -> None:
    (found,) = tk.find_containers(token_store.module)
    assert found.description is not None and found.description.serial == container.serial
    assert found.token.pin_state == "ok"


# -- the key cannot leave the token ---------------------------------------------------------


def test_private_key_is_sensitive_and_not_extractable(token_store: TokenStore, container: TokenContainer) -> None:
    container.close()
    with open_session(token_store.module, label="lic", pin=PIN) as s:
        (priv,) = list(s._s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: tk.KEY_LABEL}))
        assert priv[Attribute.EXTRACTABLE] is False
        assert priv[Attribute.SENSITIVE] is True
        assert priv[Attribute.NEVER_EXTRACTABLE] is True
        assert priv[Attribute.LOCAL] is True  # generated inside, never imported
        with pytest.raises(p11e.AttributeSensitive):
            priv[Attribute.VALUE]
        # Nothing on the token holds the signing key as data either.
        values = [s.get_data(label) or b"" for label in s.data_labels()]
        assert all(len(v) != 32 or v != container.sign_public for v in values)


# -- PINs -------------------------------------------------------------------------------------


def test_wrong_pin_is_a_clear_error_and_the_right_one_still_opens(
    token_store: TokenStore, container: TokenContainer
) -> None:
    container.close()
    with pytest.raises(LicentiaError) as err:
        TokenContainer.open(token_store.module, label="lic", pin="0000")
    assert err.value.code is ErrorCode.PIN_INCORRECT
    assert "wrong PIN for token 'lic'" in str(err.value)
    again = open_again(token_store)
    again.close()


def test_wrong_pin_beside_an_open_session_is_refused_without_trying_the_token(
    token_store: TokenStore, container: TokenContainer
) -> None:
    with pytest.raises(LicentiaError) as err:
        TokenContainer.open(token_store.module, label="lic", pin="0000")
    assert err.value.code is ErrorCode.PIN_INCORRECT
    assert "retry counter was not touched" in err.value.message
    (found,) = tk.find_containers(token_store.module)
    assert found.token.pin_state == "ok"


def test_a_token_reporting_its_pin_locked_is_not_asked(token_store: TokenStore, container: TokenContainer) -> None:
    container.close()
    _report_flags(token_store, TokenFlag.USER_PIN_LOCKED)
    with pytest.raises(LicentiaError) as err:
        open_again(token_store)
    assert err.value.code is ErrorCode.PIN_LOCKED and "no PIN was tried" in err.value.message


def _report_flags(store: TokenStore, bits: int) -> None:
    # SoftHSM2 never counts PIN tries down; make it report the flags a smart card would
    # (CKA_OS_TOKENFLAGS in its token file) and re-initialise the module.
    tag = bytes.fromhex("8000534b0000000000000002")
    for path in (store.directory / "tokens").rglob("token.object"):
        data = bytearray(path.read_bytes())
        at = data.find(tag) + len(tag)
        value = int.from_bytes(data[at : at + 8], "big") | bits
        data[at : at + 8] = value.to_bytes(8, "big")
        path.write_bytes(bytes(data))
    reinitialize(store.module)


# -- presence -------------------------------------------------------------------------------


def _pull(directory: Path, how: str) -> None:
    if how == "directory":
        shutil.rmtree(directory)
    else:
        for f in directory.iterdir():
            f.unlink()


@pytest.mark.parametrize("how", ["directory", "files"])
def test_every_access_proves_presence_and_fails_cleanly_after_removal(
    container: TokenContainer, lic: tuple[SoftToken, Path], how: str
) -> None:
    licensed(container)
    container.claim("rt-a", T0)
    challenge = os.urandom(32)
    signature = container.prove(challenge, T0)
    assert tk.verify_proof(container.sign_public, challenge, signature)
    assert not tk.verify_proof(container.sign_public, os.urandom(32), signature)
    assert container.is_present()

    _pull(lic[1], how)

    for access in (
        lambda: container.prove(os.urandom(32), T0),
        lambda: use_item(container, FIRM, 7, ItemRequest(), T0),
        container.read,
        lambda: container.keys.sign(b"anything"),
    ):
        with pytest.raises(LicentiaError) as err:
            access()
        assert err.value.code is ErrorCode.TOKEN_REMOVED, err.value
        assert "no longer present" in err.value.message
    assert not container.is_present()
    container.release(T0)  # quiet on a token that is gone


@pytest.mark.parametrize("how", ["directory", "files"])
def test_watch_reports_a_pulled_token(container: TokenContainer, lic: tuple[SoftToken, Path], how: str) -> None:
    container.claim("rt-a", T0)
    events: list[TokenEvent] = []
    seen = threading.Event()

    def on_event(event: TokenEvent) -> None:
        events.append(event)
        seen.set()

    watch = container.watch(on_event, interval=tk.POLL_INTERVAL)
    assert container.poll(T0) is None
    pulled = time.monotonic()
    _pull(lic[1], how)
    assert seen.wait(30), "the watch never reported the pulled token"
    noticed = time.monotonic() - pulled
    (event,) = events
    assert event.kind is TokenEventKind.GONE and event.error.code is ErrorCode.TOKEN_REMOVED
    assert event.serial == container.serial
    watch.stop()
    assert not watch.running
    print(f"pulled token noticed after {noticed:.3f} s (poll interval {tk.POLL_INTERVAL} s)")


def test_a_token_plugged_back_is_found_again_and_the_other_tokens_keep_working(
    token_store: TokenStore, lic: tuple[SoftToken, Path]
) -> None:
    add_token(token_store, "other")
    container = TokenContainer.create(token_store.module, label="lic", pin=PIN, now=T0, clock=Clock())
    other = TokenContainer.create(token_store.module, label="other", pin=PIN, now=T0, clock=Clock())
    try:
        container.claim("rt-a", T0)
        other.claim("rt-a", T0)
        pulled = token_store.directory / "pulled"
        lic[1].rename(pulled)  # pulled, all at once

        # SoftHSM2 now fails the whole slot list (GeneralError); it is read afresh, and only 'lic' is missing
        assert [f.token.label for f in tk.find_containers(token_store.module)] == ["other"]
        with pytest.raises(LicentiaError) as err:
            container.prove(os.urandom(32), T0)
        assert err.value.code is ErrorCode.TOKEN_REMOVED
        # the other token's session was opened again behind its back: it still proves, reads and writes
        assert tk.verify_proof(other.sign_public, b"x" * 8, other.prove(b"x" * 8, T0))
        licensed(other)
        assert other.read().firms[FIRM].items[1].item.product_code == 7

        pulled.rename(lic[1])  # plugged back in
        found = {f.token.label: f for f in tk.find_containers(token_store.module, refresh=True)}
        assert set(found) == {"lic", "other"} and found["lic"].description is not None
        again = open_again(token_store)
        try:
            assert again.serial == container.serial
            assert again.claim("rt-a", T0 + 1).outcome is not C.Outcome.TOOK_OVER
            assert tk.verify_proof(again.sign_public, b"y" * 8, again.prove(b"y" * 8, T0 + 1))
        finally:
            again.close()
        assert tk.verify_proof(other.sign_public, b"z" * 8, other.prove(b"z" * 8, T0 + 1))
    finally:
        other.close()
        container.close()


def test_challenges_are_checked(container: TokenContainer) -> None:
    with pytest.raises(LicentiaError) as err:
        container.prove(os.urandom(32), T0)  # not claimed yet
    assert err.value.code is ErrorCode.INVALID_PARAMETER
    container.claim("rt-a", T0)
    for bad in (b"", b"LCRQ" + os.urandom(16)):
        with pytest.raises(LicentiaError) as err:
            container.prove(bad, T0)
        assert err.value.code is ErrorCode.INVALID_PARAMETER


# -- claims: one runtime per token ------------------------------------------------------------


def test_a_second_runtime_takes_the_token_away_from_the_first(
    token_store: TokenStore, container: TokenContainer
) -> None:
    licensed(container, units=100)
    clock = Clock()
    first, second = open_again(token_store, clock), open_again(token_store, clock)
    try:
        assert first.claim("rt-a", T0).outcome is C.Outcome.CLAIMED
        events: list[TokenEvent] = []
        seen = threading.Event()
        watch = first.watch(lambda e: (events.append(e), seen.set()), interval=0.05)
        first.prove(os.urandom(32), T0)

        result = second.claim("rt-b", T0 + 1)
        assert result.outcome is C.Outcome.TOOK_OVER and result.previous == "rt-a"

        assert seen.wait(30)
        assert events[0].kind is TokenEventKind.TAKEN_AWAY
        watch.stop()
        for access in (
            lambda: first.prove(os.urandom(32), T0 + 2),
            lambda: spend_units(first, FIRM, 1, 1, T0 + 2),
        ):
            with pytest.raises(LicentiaError) as err:
                access()
            assert err.value.code is ErrorCode.TOKEN_TAKEN_AWAY
            assert "runtime rt-b claimed it" in err.value.message
        assert second.read().find(FIRM, 7)[0].state.units_remaining == 100  # nothing spent
        assert spend_units(second, FIRM, 1, 1, T0 + 2) == 99
        second.prove(os.urandom(32), T0 + 2)

        # Taking it back is a change of hands like any other.
        assert first.claim("rt-a", T0 + 3).outcome is C.Outcome.TOOK_OVER
        with pytest.raises(LicentiaError) as err:
            second.prove(os.urandom(32), T0 + 3)
        assert err.value.code is ErrorCode.TOKEN_TAKEN_AWAY
        # A tool that claims nothing (update apply, container show) is not refused.
        assert container.observe_clock(T0 + 3).serial == container.serial
    finally:
        first.close()
        second.close()


def test_release_leaves_the_token_unclaimed(token_store: TokenStore, container: TokenContainer) -> None:
    container.claim("rt-a", T0)
    container.release(T0 + 1)
    state = container.claim_state(T0 + 1)
    assert state.holder is None and state.last_runtime == "rt-a"
    with pytest.raises(LicentiaError) as err:
        container.prove(os.urandom(32), T0 + 1)
    assert err.value.code is ErrorCode.INVALID_PARAMETER  # released: claim again first


def test_rapid_changes_of_hands_lock_the_token_out_for_five_minutes(
    token_store: TokenStore, container: TokenContainer
) -> None:
    licensed(container, units=10)
    clock = Clock()
    a, b, bystander = (open_again(token_store, clock) for _ in range(3))
    try:
        a.claim("rt-a", T0)
        b.claim("rt-b", T0 + 1)  # change 1
        a.claim("rt-a", T0 + 2)  # change 2
        b.claim("rt-b", T0 + 3)  # change 3
        with pytest.raises(LicentiaError) as err:
            a.claim("rt-a", T0 + 4)  # change 4 within 60 s: locked out
        assert err.value.code is ErrorCode.TOKEN_LOCKED_OUT
        assert f"{C.LOCKOUT} s more" in err.value.message
        assert "more than 3 times within 60 s" in err.value.message

        # Stored in the token: every runtime honours it, however it opened the token.
        clock.now = T0 + 5
        late = open_again(token_store, clock)
        try:
            assert late.claim_state(T0 + 5).locked_until == T0 + 4 + C.LOCKOUT
            for who, runtime in ((late, "rt-c"), (b, "rt-b")):
                with pytest.raises(LicentiaError) as err:
                    who.claim(runtime, T0 + 5)
                assert err.value.code is ErrorCode.TOKEN_LOCKED_OUT
            with pytest.raises(LicentiaError) as err:
                b.prove(os.urandom(32), T0 + 5)
            assert err.value.code is ErrorCode.TOKEN_LOCKED_OUT
            for who in (b, bystander):  # no item can be used, by anyone
                with pytest.raises(LicentiaError) as err:
                    use_item(who, FIRM, 7, ItemRequest(), T0 + 5)
                assert err.value.code is ErrorCode.TOKEN_LOCKED_OUT
            assert bystander.read().find(FIRM, 7)  # reading (container show) still works

            # One second before the end: still locked. At the end: free again.
            end = T0 + 4 + C.LOCKOUT
            clock.now = end - 1
            with pytest.raises(LicentiaError):
                late.claim("rt-c", end - 1)
            clock.now = end
            assert late.claim("rt-c", end).outcome is C.Outcome.CLAIMED
            late.prove(os.urandom(32), end)
            assert spend_units(late, FIRM, 1, 1, end) == 9
        finally:
            late.close()
    finally:
        for c in (a, b, bystander):
            c.close()


# -- two runtime processes ---------------------------------------------------------------------

CLAIMER = textwrap.dedent(
    """
    import sys
    from licentia.containers.token import TokenContainer
    from licentia.model import LicentiaError

    module, runtime, now = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with TokenContainer.open(module, label="lic", pin="1234", clock=lambda: now) as c:
        try:
            result = c.claim(runtime, now)
            c.prove(b"\\x01fresh challenge", now)
            print(result.outcome.value, result.previous or "-", flush=True)
        except LicentiaError as exc:
            print("refused", int(exc.code), flush=True)
    """
)


def claim_in_process(store: TokenStore, runtime: str, now: int) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", CLAIMER, store.module, runtime, str(now)],
        env={**store.env, tk.LOCK_DIR_ENV: os.environ[tk.LOCK_DIR_ENV]},
        capture_output=True, text=True, timeout=60, check=True,
    )
    return out.stdout.split()


def test_two_runtime_processes_one_token(token_store: TokenStore, container: TokenContainer) -> None:
    clock = Clock()
    here = open_again(token_store, clock)
    try:
        here.claim("rt-here", T0)
        events: list[TokenEvent] = []
        seen = threading.Event()
        watch = here.watch(lambda e: (events.append(e), seen.set()), interval=0.05)

        assert claim_in_process(token_store, "rt-there", T0 + 1) == ["took", "over", "rt-here"]
        assert seen.wait(30) and events[0].kind is TokenEventKind.TAKEN_AWAY
        watch.stop()
        with pytest.raises(LicentiaError) as err:
            here.prove(os.urandom(32), T0 + 1)
        assert err.value.code is ErrorCode.TOKEN_TAKEN_AWAY and "rt-there" in err.value.message

        # Hopping back and forth: the fourth change within a minute locks out both.
        here.claim("rt-here", T0 + 2)  # change 2
        assert claim_in_process(token_store, "rt-there", T0 + 3)[:2] == ["took", "over"]  # change 3
        with pytest.raises(LicentiaError) as err:
            here.claim("rt-here", T0 + 4)  # change 4
        assert err.value.code is ErrorCode.TOKEN_LOCKED_OUT
        assert claim_in_process(token_store, "rt-there", T0 + 5) == ["refused", str(int(ErrorCode.TOKEN_LOCKED_OUT))]
        assert claim_in_process(token_store, "rt-there", T0 + 4 + C.LOCKOUT)[0] == "claimed"
    finally:
        here.close()


# -- licenses cannot move between tokens ---------------------------------------------------------


def test_a_license_copied_to_another_token_is_refused(token_store: TokenStore) -> None:
    add_token(token_store, "a")
    add_token(token_store, "b")
    a = TokenContainer.create(token_store.module, label="a", pin=PIN, now=T0)
    b = TokenContainer.create(token_store.module, label="b", pin=PIN, now=T0)
    try:
        update_for_a = issue(a, U.PutItem(1, ProductItem(product_code=7)))
        apply(a, update_for_a)

        # The update file itself is for a, not b.
        with pytest.raises(LicentiaError) as err:
            apply(b, update_for_a)
        assert err.value.code is ErrorCode.UPDATE_WRONG_CONTAINER

        # A's content object copied verbatim onto b (under a newer generation): b's key
        # did not sign it, so b ignores it and holds no license.
        sa, sb = a._shared.session, b._shared.session
        (label_a,) = sa.data_labels(prefix=tk.CONTENT_PREFIX)
        raw_a = sa.get_data(label_a)
        assert raw_a is not None
        sb.put_data(f"{tk.CONTENT_PREFIX}{99:016x}-copied00", raw_a, replace=False)
        assert b.read().find(FIRM, 7) == []
        assert b.skipped_records == 1

        # Whoever holds b's PIN can make b sign anything; a record b signed that carries
        # a's license is still refused: the license names a's serial and key.
        foreign = a.read().firms[FIRM]
        forged = b.read().with_firm(foreign)
        body = {**tk._content_body(forged), "serial": str(b.serial)}
        record = {"content": body, "serial": str(b.serial), "generation": 200}
        sb.put_data(
            f"{tk.CONTENT_PREFIX}{200:016x}-forged00",
            sign_artifact_with(tk.CONTENT_MAGIC, tk.RECORD_VERSION, env.encode(record), b.keys.sign),
            replace=False,
        )
        with pytest.raises(LicentiaError) as err:
            b.read()
        assert err.value.code is ErrorCode.LICENSE_INVALID
        assert "cannot be copied between containers" in err.value.message
    finally:
        a.close()
        b.close()


# -- records: atomic changes and crash safety ------------------------------------------------------


def test_each_change_leaves_one_record_and_the_newest_complete_one_wins(container: TokenContainer) -> None:
    licensed(container, units=50)
    s = container._shared.session
    for i in range(3):
        spend_units(container, FIRM, 1, 1, T0 + i)
    (label,) = s.data_labels(prefix=tk.CONTENT_PREFIX)
    current = s.get_data(label)
    assert current is not None

    # A crash after writing the new record and before deleting the old: both are there.
    generation = tk._generation(label, tk.CONTENT_PREFIX)
    assert generation is not None
    newer = f"{tk.CONTENT_PREFIX}{generation + 5:016x}-torn0000"
    s.put_data(newer, current[: len(current) // 2], replace=False)  # torn: does not verify
    assert container.read().find(FIRM, 7)[0].state.units_remaining == 47
    assert container.skipped_records == 1
    spend_units(container, FIRM, 1, 1, T0 + 10)  # the next change cleans up
    assert len(s.data_labels(prefix=tk.CONTENT_PREFIX)) == 1
    assert container.read().find(FIRM, 7)[0].state.units_remaining == 46


def test_a_token_without_contents_is_invalid_not_empty(container: TokenContainer) -> None:
    s = container._shared.session
    for label in s.data_labels(prefix=tk.CONTENT_PREFIX):
        s.delete_data(label)
    with pytest.raises(LicentiaError) as err:
        container.read()
    assert err.value.code is ErrorCode.LICENSE_INVALID


def test_creating_twice_and_opening_a_plain_token(token_store: TokenStore, container: TokenContainer) -> None:
    with pytest.raises(LicentiaError) as err:
        TokenContainer.create(token_store.module, label="lic", pin=PIN, now=T0)
    assert err.value.code is ErrorCode.ALREADY_EXISTS and str(container.serial) in err.value.message


def test_a_plain_token_is_no_container_and_an_interrupted_creation_is_redone(token_store: TokenStore) -> None:
    add_token(token_store, "plain")
    with pytest.raises(LicentiaError) as err:
        TokenContainer.open(token_store.module, label="plain", pin=PIN)
    assert err.value.code is ErrorCode.CONTAINER_NOT_FOUND
    (found,) = tk.find_containers(token_store.module)
    assert found.description is None and found.problem is None
    # A creation cut off before its description was written leaves a key and data.
    with open_session(token_store.module, label="plain", pin=PIN) as s:
        from licentia.containers.pkcs11 import KeyKind

        s.generate_keypair(KeyKind.ED25519, tk.KEY_LABEL)
        s.put_data(tk.BOX_LABEL, os.urandom(32))
    c = TokenContainer.create(token_store.module, label="plain", pin=PIN, now=T0)
    try:
        assert c.read().serial == c.serial
    finally:
        c.close()


CRASHER = textwrap.dedent(
    """
    import sys, time
    from licentia.containers.token import TokenContainer
    from licentia.containers.operations import spend_units

    module, firm = sys.argv[1], int(sys.argv[2])
    c = TokenContainer.open(module, label="lic", pin="1234")
    print("ready", flush=True)
    while True:
        spend_units(c, firm, 1, 1, int(time.time()))
    """
)


@pytest.mark.slow
def test_sigkill_during_unit_decrements_leaves_a_whole_state(
    token_store: TokenStore, container: TokenContainer
) -> None:
    licensed(container, units=1_000_000)
    container.close()
    rng = random.Random(5)
    last = 1_000_000
    env_ = {**token_store.env, tk.LOCK_DIR_ENV: os.environ[tk.LOCK_DIR_ENV]}
    for _ in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-c", CRASHER, token_store.module, str(FIRM)],
            env=env_, stdout=subprocess.PIPE, text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.02, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        opened = open_again(token_store)  # old or new state, never a third
        try:
            remaining = opened.read().find(FIRM, 7)[0].state.units_remaining
            assert remaining is not None and remaining <= last
            last = remaining
            assert len(opened._shared.session.data_labels(prefix=tk.CONTENT_PREFIX)) <= 2
        finally:
            opened.close()
    assert last < 1_000_000


# -- the home's store: token containers beside soft ones ----------------------------------------


def test_store_records_lists_and_opens_token_containers(token_store: TokenStore, tmp_path: Path) -> None:
    from licentia.containers.store import ContainerStore
    from licentia.model import ContainerSerial, Environment, Fingerprint, MachineProperty

    _, directory = add_token(token_store, "lic")
    add_token(token_store, "plain")  # not a container: never logged in to
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN + "\n")
    fingerprint = Fingerprint((MachineProperty("machine-id", b"a" * 32, 3),), Environment())
    store = ContainerStore(tmp_path / "containers", fingerprint)
    assert store.inspect_tokens(T0) == []  # no module configured: no token is looked at

    made = store.create_token(module=token_store.module, label="lic", pin=PIN, now=T0, pin_file=pin_file)
    made.close()
    serial = made.serial
    registry = store.token_registry()
    assert registry["module"] == token_store.module
    assert registry["containers"][str(serial)]["pin_file"] == str(pin_file.resolve())

    (row,) = store.inspect_tokens(T0)
    assert (row.serial, row.status, row.token_label) == (str(serial), "ok", "lic")
    assert "not claimed" in row.detail and row.content is not None
    opened = store.open_any(serial)
    assert isinstance(opened, TokenContainer)
    opened.claim("rt-a", T0)
    opened.close()
    assert "held by runtime rt-a" in store.inspect_token(serial, T0).detail

    # Without the recorded PIN file and no PIN given: listed, not opened.
    pin_file.unlink()
    (row,) = store.inspect_tokens(T0)
    assert row.status == "PIN needed" and "cannot read the PIN file" in row.detail
    store._save_registry({**registry, "containers": {str(serial): {**registry["containers"][str(serial)], "pin_file": None}}})
    assert store.inspect_token(serial, T0).status == "PIN needed"

    # Pulled: a process that starts afresh no longer sees the token; the record says so.
    shutil.rmtree(directory)
    reinitialize(token_store.module)
    assert store.inspect_token(serial, T0).status == "absent"
    with pytest.raises(LicentiaError) as err:
        store.open_token(serial, pin=PIN)
    assert err.value.code is ErrorCode.CONTAINER_NOT_FOUND and "not plugged in" in err.value.message
    with pytest.raises(LicentiaError) as err:
        store.open_any(ContainerSerial(3, 12345), pin=PIN)
    assert err.value.code is ErrorCode.CONTAINER_NOT_FOUND
