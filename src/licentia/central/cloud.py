"""Cloud containers (mask 140): licenses that stay in central, used through a credential file.

A ticket's licenses move into a cloud container; central keeps them and hands out seats to a
runtime that presents the container's credential. The credential file can be re-issued at
any time (portal or API) and the old one stops working at once: only the digest of the
current secret is stored, and every call checks it.

Seats are rows of `cloud_seats` with a unique (license, slot) pair, slot < quantity, so
several central processes behind a load balancer over one PostgreSQL database can never
grant more seats than the license has: the database refuses the second insert of a slot.
A seat lives for a lease (default 5 minutes), renewed by heartbeats, and is reclaimed
once expired. Every grant is signed by the firm (magic LCCG) so the runtime can trust it.

The credential file format, the grant and the item wire form are `licentia.core.cloud`,
shared with the runtime. A runtime that sends its container key with an access gets a
license for that seat too, signed by the firm and naming the cloud serial and that key,
so a protected program verifies a cloud seat as it verifies any other license.
"""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from licentia.central.db import Activation, CloudCredential, CloudSeat, Container, License
from licentia.central.service import BUSY, Central, _err
from licentia.core.clock import VirtualClock
from licentia.core.cloud import (
    CLOUD_MASK,
    CREDENTIAL_FORMAT,
    DEFAULT_LEASE,
    GRANT_MAGIC,
    MAX_LEASE,
    Grant,
    issue_grant,
    item_to_wire,
    make_credential,
    read_credential,
    secret_digest as _digest,
)
from licentia.core.evaluate import evaluate
from licentia.core.licenses import License as SignedLicense, issue_license
from licentia.model import ContainerSerial, ErrorCode, ItemRequest, ItemState, LicentiaError

__all__ = ["CLOUD_MASK", "CREDENTIAL_FORMAT", "DEFAULT_LEASE", "GRANT_MAGIC", "MAX_LEASE", "Cloud", "read_credential"]


class Cloud:
    def __init__(self, central: Central, public_url: str = "") -> None:
        self.central = central
        self.public_url = public_url

    # -- vendor/user side: moving licenses to the cloud, credentials -----------------------

    def _cloud_container(self, s: Session, ticket_id: str) -> Container | None:
        return s.execute(
            select(Container).join(Activation, Activation.serial == Container.serial)
            .join(License, License.id == Activation.license_id)
            .where(License.ticket_id == ticket_id, Container.kind == "cloud")
            .order_by(Container.first_seen)
        ).scalars().first()

    def _new_serial(self, s: Session) -> str:
        while True:
            serial = f"{CLOUD_MASK}-{secrets.randbelow(4_000_000_000) + 1}"
            if s.get(Container, serial) is None:
                return serial

    def _credential(self, s: Session, c: Container, now: int, actor: str, base_url: str) -> dict[str, Any]:
        for old in s.execute(select(CloudCredential).where(CloudCredential.serial == c.serial,
                                                           CloudCredential.revoked_at.is_(None))).scalars():
            old.revoked_at = now
        secret = secrets.token_urlsafe(32)
        s.add(CloudCredential(serial=c.serial, digest=_digest(secret), created_at=now))
        self.central._audit(s, now, actor, "cloud.credential", c.serial)
        return make_credential(base_url or self.public_url, self.central.firm.firm_code, c.serial, secret, now,
                               self.central.firm.public_key)

    def move_to_cloud(self, ticket: str, now: int, *, base_url: str = "", actor: str = "user") -> dict[str, Any]:
        """Put the ticket's free licenses into its cloud container (made on first use) and
        issue a credential file."""
        with self.central.db.transaction() as s:
            t = self.central._ticket(s, ticket)
            c = self._cloud_container(s, t.id)
            fresh = c is None
            if c is None:
                c = Container(serial=self._new_serial(s), kind="cloud", sign_public=b"", box_public=b"",
                              environment={}, counter=0, state="ok", lock="none", customer_id=t.customer_id,
                              first_seen=now, last_contact=now)
                s.add(c)
                s.flush()
            moved = []
            for lic in s.execute(select(License).where(License.ticket_id == t.id, License.state == "open").order_by(License.id)).scalars():
                if self.central._busy(s, lic.id) is None:
                    item = self.central._item(s, lic)
                    if item.local_only or self.central._is_tmr(s, lic):
                        continue  # a local license, or a TMR license (three constituents): not in the cloud
                    s.add(Activation(license_id=lic.id, serial=c.serial, state="active", how="cloud",
                                     created_at=now, confirmed_at=now))
                    moved.append(lic.id)
            if not moved and fresh:
                raise _err(ErrorCode.LICENSE_NOT_AVAILABLE, f"no license of ticket {t.id} is free to move to the cloud")
            s.flush()
            self.central._audit(s, now, actor, "cloud.activate", t.id, serial=c.serial, licenses=moved)
            credential = self._credential(s, c, now, actor, base_url)
            return {"serial": c.serial, "licenses": moved, "credential": credential}

    def reissue_credential(self, ticket: str, now: int, *, base_url: str = "", actor: str = "user") -> dict[str, Any]:
        with self.central.db.transaction() as s:
            t = self.central._ticket(s, ticket)
            c = self._cloud_container(s, t.id)
            if c is None:
                raise _err(ErrorCode.CONTAINER_NOT_FOUND, f"ticket {t.id} has no cloud container; move licenses to the cloud first")
            s.execute(select(Container).where(Container.serial == c.serial).with_for_update())
            return {"serial": c.serial, "credential": self._credential(s, c, now, actor, base_url)}

    def return_from_cloud(self, ticket: str, now: int, *, actor: str = "user") -> dict[str, Any]:
        """Licenses in the cloud are returned at once: central holds them."""
        with self.central.db.transaction() as s:
            t = self.central._ticket(s, ticket)
            c = self._cloud_container(s, t.id)
            if c is None:
                raise _err(ErrorCode.CONTAINER_NOT_FOUND, f"ticket {t.id} has no cloud container")
            ended = []
            for a in s.execute(select(Activation).join(License, License.id == Activation.license_id)
                               .where(License.ticket_id == t.id, Activation.serial == c.serial,
                                      Activation.state.in_(BUSY))).scalars():
                a.state, a.ended_at = "returned", now
                s.execute(delete(CloudSeat).where(CloudSeat.license_id == a.license_id))
                ended.append(a.license_id)
            self.central._audit(s, now, actor, "cloud.return", t.id, serial=c.serial, licenses=ended)
            return {"serial": c.serial, "returned": ended}

    # -- runtime side: items and seats -------------------------------------------------------

    def _authenticate(self, s: Session, serial: str, secret: str) -> Container:
        row = s.execute(select(CloudCredential).where(CloudCredential.serial == serial,
                                                      CloudCredential.digest == _digest(secret))).scalar_one_or_none()
        if row is None or row.revoked_at is not None:
            raise _err(ErrorCode.CREDENTIAL_INVALID, f"the credential for cloud container {serial} is not valid (replaced or revoked)")
        c = s.get(Container, serial)
        assert c is not None
        if c.blacklisted:
            raise _err(ErrorCode.LOCKED, f"cloud container {serial} is locked by the vendor")
        return c

    def _items(self, s: Session, serial: str) -> list[tuple[Activation, License]]:
        rows = s.execute(
            select(Activation, License).join(License, License.id == Activation.license_id)
            .where(Activation.serial == serial, Activation.state == "active").order_by(License.id)
        ).all()
        return [(a, lic) for a, lic in rows]

    def items(self, serial: str, secret: str, now: int) -> dict[str, Any]:
        with self.central.db.transaction() as s:
            c = self._authenticate(s, serial, secret)
            c.last_contact = now
            out = []
            for a, lic in self._items(s, serial):
                item = self.central._item(s, lic)
                used = s.execute(select(func.count()).select_from(CloudSeat).where(
                    CloudSeat.license_id == lic.id, CloudSeat.expires_at > now)).scalar_one()
                out.append({"item_id": lic.id, "product_code": item.product_code, "quantity": item.quantity,
                            "in_use": used, "item": item_to_wire(item), "since": a.confirmed_at})
            return {"serial": serial, "firm_code": self.central.firm.firm_code, "items": out, "time": now}

    def access(self, serial: str, secret: str, product_code: int, station: str, now: int,
               *, feature_code: int = 0, lease: int = DEFAULT_LEASE, container_key: str | None = None) -> dict[str, Any]:
        if not 30 <= lease <= MAX_LEASE:
            raise _err(ErrorCode.INVALID_PARAMETER, f"a lease lasts 30 to {MAX_LEASE} seconds")
        if not station or len(station) > 200:
            raise _err(ErrorCode.INVALID_PARAMETER, "name the station (1-200 characters)")
        key: bytes | None = None
        if container_key is not None:
            try:
                key = bytes.fromhex(container_key)
            except ValueError:
                key = None
            if key is None or len(key) != 32:
                raise _err(ErrorCode.INVALID_PARAMETER, "container_key must be an Ed25519 public key (64 hex digits)")
        with self.central.db.transaction() as s:
            self._authenticate(s, serial, secret)
            candidates = [(a, lic) for a, lic in self._items(s, serial)
                          if self.central._item(s, lic).product_code == product_code]
            if not candidates:
                raise _err(ErrorCode.ENTRY_NOT_FOUND, f"cloud container {serial} holds no license for product {product_code}")
            refusal: LicentiaError | None = None
            for a, lic in candidates:
                item = self.central._item(s, lic)
                state = ItemState(usage_started_at=a.confirmed_at, checkpoint_at=now if item.checkpoint_period else None)
                verdict = evaluate(item, state, ItemRequest(feature_code=feature_code), VirtualClock(high_water=now), now)
                if not verdict.ok:
                    refusal = LicentiaError(verdict.error or ErrorCode.ACCESS_DENIED, verdict.reason)
                    continue
                if item.units is not None:
                    refusal = _err(ErrorCode.ACCESS_DENIED, "unit counters are not kept for cloud licenses yet")
                    continue
                s.execute(delete(CloudSeat).where(CloudSeat.license_id == lic.id, CloudSeat.expires_at <= now))
                slots = (range(item.quantity) if item.quantity is not None
                         else [-(secrets.randbelow(2**31 - 1) + 1) for _ in range(5)])
                for slot in slots:
                    handle = secrets.token_hex(16)
                    try:
                        with s.begin_nested():
                            s.add(CloudSeat(license_id=lic.id, slot=slot, handle=handle, station=station,
                                            acquired_at=now, expires_at=now + lease))
                    except IntegrityError:
                        continue
                    self.central._audit(s, now, f"cloud:{serial}", "cloud.access", serial, license=lic.id, slot=slot,
                                        station=station, handle=handle)
                    grant = self._grant(serial, lic.id, product_code, handle, now + lease, now)
                    answer = {"handle": handle, "item_id": lic.id, "expires_at": now + lease, "lease": lease,
                              "item": item_to_wire(item), "grant": grant}
                    if key is not None:  # the runtime's key for this seat: a license a program can verify
                        answer["license"] = issue_license(
                            SignedLicense(ContainerSerial.parse(serial), key, self.central.firm.firm_code, lic.id, item, now),
                            self.central.firm.private_key).hex()
                    return answer
                refusal = _err(ErrorCode.NO_MORE_LICENSES, f"all {item.quantity} seats of product {product_code} are in use")
            assert refusal is not None
            raise refusal

    def _grant(self, serial: str, item_id: int, product_code: int, handle: str, expires_at: int, now: int) -> str:
        grant = Grant(serial, self.central.firm.firm_code, item_id, product_code, handle, expires_at, now)
        return issue_grant(grant, self.central.firm.private_key).hex()

    def _seat(self, s: Session, serial: str, handle: str) -> CloudSeat:
        seat = s.execute(select(CloudSeat).where(CloudSeat.handle == handle).with_for_update()).scalar_one_or_none()
        if seat is None:
            raise _err(ErrorCode.INVALID_HANDLE, "the seat is not (or no longer) held; access the license again")
        a = s.execute(select(Activation).where(Activation.license_id == seat.license_id, Activation.serial == serial,
                                               Activation.state == "active")).scalar_one_or_none()
        if a is None:
            raise _err(ErrorCode.INVALID_HANDLE, "the seat does not belong to this cloud container")
        return seat

    def heartbeat(self, serial: str, secret: str, handle: str, now: int, *, lease: int = DEFAULT_LEASE) -> dict[str, Any]:
        if not 30 <= lease <= MAX_LEASE:
            raise _err(ErrorCode.INVALID_PARAMETER, f"a lease lasts 30 to {MAX_LEASE} seconds")
        with self.central.db.transaction() as s:
            self._authenticate(s, serial, secret)
            seat = self._seat(s, serial, handle)
            if seat.expires_at <= now:
                s.delete(seat)
                raise _err(ErrorCode.INVALID_HANDLE, "the seat's lease ran out; access the license again")
            seat.expires_at = now + lease
            return {"handle": handle, "expires_at": seat.expires_at}

    def release(self, serial: str, secret: str, handle: str, now: int) -> dict[str, Any]:
        with self.central.db.transaction() as s:
            self._authenticate(s, serial, secret)
            seat = self._seat(s, serial, handle)
            s.delete(seat)
            self.central._audit(s, now, f"cloud:{serial}", "cloud.release", serial, license=seat.license_id, handle=handle)
            return {"handle": handle, "released": True}
