"""The back office's decisions over its database: one method, one transaction.

Central keeps, per container, the firm update counter it has confirmed and the updates it
issued but has not seen a receipt for. Every contact (activation, return, sync) starts
with `_reconcile`, which compares the counter and items a container reports with what
central issued:

- counter == confirmed, nothing outstanding: in step;
- counter == confirmed and an update is outstanding: the user did not apply it; the new
  update carries its operations too (it *supersedes* it; whichever of them the container
  applies first, its receipt decides);
- counter == confirmed + 1 and an update is outstanding: it was applied, the receipt was
  not sent; the items the container reports decide which one;
- anything else, or items that differ from what central issued: the container is flagged
  **manipulated**, recorded in the audit log, and refused until an operator reviews it.

A license counts as free only when the receipt of its removal arrives. Replaced licenses
(and the lock of a blacklisted container) go out with the container's next update,
whatever the occasion of its contact.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from licentia.central import ids
from licentia.central.db import (
    Activation,
    ApiToken,
    AuditEntry,
    Container,
    Customer,
    Database,
    License,
    Order,
    Product,
    Replacement,
    Ticket,
    Update,
)
from licentia.central.policy import decide, mismatched_properties, parse_policy
from licentia.core import updates as core_updates
from licentia.core.blacklist import BlacklistEntry, make_blacklist
from licentia.crypto import digest
from licentia.model import ContainerSerial, ErrorCode, LicentiaError, ProductItem, kind_of_mask

ROLES = ("admin", "operator", "read-only")
LICENSE_TYPES = ("single-user", "multi-user")
HELD = ("active", "returning", "revoking")  # in the container (central issued it, the receipt came)
BUSY = ("pending", "active", "returning")  # the license is not free for another activation
DEFAULT_AUTO_ACTIVATE_AFTER = 86_400
# A registered license server's sync takes a ticket up to this long before its wait ends:
# the runtime syncs every hour (plus the round trip) by default, so every ticket is in the
# server within the wait.
SYNC_GRACE = 3_900
_BYTES_OPTIONS = ("user_data", "protected_data", "hidden_data")


@dataclass(frozen=True)
class FirmKey:
    """The firm central signs for: from the vendor keystore."""

    firm_code: int
    name: str
    private_key: bytes
    public_key: bytes


@dataclass(frozen=True)
class Issued:
    """An update central issued, and what it does."""

    update: bytes
    serial: str
    counter_to: int
    operations: list[dict[str, Any]]
    purpose: str
    licenses: dict[int, bytes] = field(default_factory=dict)  # license id -> the license each put issued

    def to_json(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "counter": self.counter_to,
            "purpose": self.purpose,
            "operations": self.operations,
        }


Hook = Callable[[str, dict[str, Any]], dict[str, Any]]


def http_hook(url: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Ask the vendor's approval hook; its answer is JSON {"approve": bool, "reason": str}."""
    response = httpx.post(url, json=payload, timeout=10.0)
    response.raise_for_status()
    answer = response.json()
    if not isinstance(answer, dict):
        raise ValueError("the hook's answer is not a JSON object")
    return answer


def _no_tmr_options(options: dict[str, Any], what: str) -> None:
    if "tmr_id" in options or "tmr_constituents" in options:
        raise _err(ErrorCode.INVALID_PARAMETER,
                   f"{what} must not name a TMR id or constituents: central gives them when it activates a TMR product")


def _err(code: ErrorCode, message: str) -> LicentiaError:
    return LicentiaError(code, message)


def _not_found(what: str, key: object) -> LicentiaError:
    return LicentiaError(ErrorCode.ENTRY_NOT_FOUND, f"no {what} {key}")


def jsonable(value: Any, depth: int = 0) -> Any:
    """Plain JSON of what a container reported (bytes as hex), bounded in depth."""
    if depth > 8:
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [jsonable(v, depth + 1) for v in value][:256]
    if isinstance(value, dict):
        return {str(k): jsonable(v, depth + 1) for k, v in list(value.items())[:256]}
    return str(value)


def item_from_json(product_code: int, template: dict[str, Any], options: dict[str, Any]) -> ProductItem:
    """The product item of a license: the product's template, the license's options over it.

    Options are ProductItem fields in JSON; data options are hex strings.
    """
    merged: dict[str, Any] = {**template, **options, "product_code": product_code}
    for name in _BYTES_OPTIONS:
        if name in merged and isinstance(merged[name], str):
            try:
                merged[name] = bytes.fromhex(merged[name])
            except ValueError:
                raise _err(ErrorCode.INVALID_PARAMETER, f"item option {name!r} must be hex") from None
    named = merged.get("tmr_constituents")
    if isinstance(named, list):  # kept as [serial, key hex] pairs (central.tmr)
        try:
            merged["tmr_constituents"] = [[p[0], bytes.fromhex(p[1])] for p in named]
        except (ValueError, TypeError, IndexError, KeyError):
            raise _err(ErrorCode.INVALID_PARAMETER, "item option 'tmr_constituents' must be [serial, key hex] pairs") from None
    try:
        return ProductItem.from_dict(merged)
    except LicentiaError as exc:
        raise _err(ErrorCode.INVALID_PARAMETER, f"item options: {exc.message}") from None


class Central:
    def __init__(self, db: Database, firm: FirmKey, *, hook: Hook = http_hook) -> None:
        self.db = db
        self.firm = firm
        self.hook = hook

    # -- helpers --------------------------------------------------------------------------

    def _audit(self, s: Session, now: int, actor: str, action: str, subject: str, **detail: Any) -> None:
        s.add(AuditEntry(at=now, actor=actor, action=action, subject=subject, detail=jsonable(detail)))

    def _lock(self, s: Session, model: Any, key: Any) -> Any:
        return s.execute(select(model).where(model.__mapper__.primary_key[0] == key).with_for_update()).scalar_one_or_none()

    def _ticket(self, s: Session, ticket: str, *, lock: bool = True) -> Ticket:
        tid = ids.parse_ticket(ticket)
        row = self._lock(s, Ticket, tid) if lock else s.get(Ticket, tid)
        if row is None:
            raise _err(ErrorCode.TICKET_NOT_FOUND, f"ticket {tid} is not known")
        if row.state != "open":
            raise _err(ErrorCode.TICKET_NOT_FOUND, f"ticket {tid} was invalidated ({row.state})")
        return row

    def _product(self, s: Session, product_code: int) -> Product:
        row = s.execute(
            select(Product).where(Product.firm_code == self.firm.firm_code, Product.product_code == product_code)
        ).scalar_one_or_none()
        if row is None:
            raise _not_found("product with code", product_code)
        return row

    def _product_of(self, s: Session, lic: License) -> Product:
        product = s.get(Product, lic.product_id)
        assert product is not None
        return product

    def _item(self, s: Session, lic: License) -> ProductItem:
        product = s.get(Product, lic.product_id)
        assert product is not None
        return item_from_json(product.product_code, product.template, lic.options)

    def _busy(self, s: Session, license_id: int) -> Activation | None:
        """The activation holding a license (a TMR license's first of three), or None."""
        return s.execute(
            select(Activation).where(Activation.license_id == license_id, Activation.state.in_(BUSY))
            .order_by(Activation.id)
        ).scalars().first()

    def _is_tmr(self, s: Session, lic: License) -> bool:
        product = s.get(Product, lic.product_id)
        return product is not None and bool(product.tmr)

    def _no_tmr(self, lics: Sequence[License], s: Session, what: str) -> None:
        tmr = sorted(lic.id for lic in lics if self._is_tmr(s, lic))
        if tmr:
            raise _err(ErrorCode.ACCESS_DENIED, f"licenses {tmr} are TMR licenses (three constituents): they cannot be "
                                                f"{what} one container at a time; ask the vendor")

    def _held(self, s: Session, serial: str) -> list[Activation]:
        return list(
            s.execute(select(Activation).where(Activation.serial == serial, Activation.state.in_(HELD))).scalars()
        )

    def _outstanding(self, s: Session, serial: str) -> list[Update]:
        return list(
            s.execute(
                select(Update)
                .where(Update.serial == serial, Update.state.in_(("pending", "superseded")))
                .order_by(Update.id)
            ).scalars()
        )

    def _license_json(self, s: Session, lic: License) -> dict[str, Any]:
        product = s.get(Product, lic.product_id)
        assert product is not None
        busy = self._busy(s, lic.id)
        status = "available" if busy is None else busy.state
        if lic.state != "open":
            status = lic.state
        shown = {
            "id": lic.id,
            "product_code": product.product_code,
            "product": product.name,
            "quantity": self._item(s, lic).quantity,
            "options": lic.options,
            "status": status,
            "serial": busy.serial if busy else None,
        }
        if product.tmr:  # one TMR license in three constituents: its id and where each is
            shown["tmr_id"] = lic.options.get("tmr_id")
            shown["serials"] = sorted(a.serial for a in s.execute(select(Activation).where(
                Activation.license_id == lic.id, Activation.state.in_(BUSY))).scalars())
        return shown

    # -- API tokens -------------------------------------------------------------------------

    @staticmethod
    def _token_digest(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def ensure_admin_token(self, now: int) -> str | None:
        """Create the first admin token if the database has none; return it (once)."""
        with self.db.transaction() as s:
            if s.execute(select(func.count()).select_from(ApiToken)).scalar_one():
                return None
            token = "lct_" + secrets.token_urlsafe(32)
            s.add(ApiToken(name="admin", role="admin", digest=self._token_digest(token), created_at=now))
            self._audit(s, now, "central", "token.create", "admin", role="admin")
            return token

    def create_token(self, actor: str, now: int, name: str, role: str) -> dict[str, Any]:
        if role not in ROLES:
            raise _err(ErrorCode.INVALID_PARAMETER, f"role must be one of {', '.join(ROLES)}")
        if not name.strip() or len(name) > 100:
            raise _err(ErrorCode.INVALID_PARAMETER, "a token needs a name of 1-100 characters")
        token = "lct_" + secrets.token_urlsafe(32)
        with self.db.transaction() as s:
            row = ApiToken(name=name, role=role, digest=self._token_digest(token), created_at=now)
            s.add(row)
            s.flush()
            self._audit(s, now, actor, "token.create", name, role=role, id=row.id)
            return {"id": row.id, "name": name, "role": role, "token": token}

    def revoke_token(self, actor: str, now: int, token_id: int) -> dict[str, Any]:
        with self.db.transaction() as s:
            row = s.get(ApiToken, token_id)
            if row is None:
                raise _not_found("API token", token_id)
            if row.revoked_at is None:
                row.revoked_at = now
                self._audit(s, now, actor, "token.revoke", row.name, id=token_id)
            return {"id": row.id, "name": row.name, "role": row.role, "revoked_at": row.revoked_at}

    def list_tokens(self) -> list[dict[str, Any]]:
        with self.db.transaction() as s:
            return [
                {"id": t.id, "name": t.name, "role": t.role, "created_at": t.created_at, "revoked_at": t.revoked_at}
                for t in s.execute(select(ApiToken).order_by(ApiToken.id)).scalars()
            ]

    def authenticate(self, token: str) -> tuple[str, str] | None:
        """(name, role) of a valid token."""
        with self.db.transaction() as s:
            row = s.execute(select(ApiToken).where(ApiToken.digest == self._token_digest(token))).scalar_one_or_none()
            if row is None or row.revoked_at is not None:
                return None
            return row.name, row.role

    # -- products ---------------------------------------------------------------------------

    def create_product(
        self, actor: str, now: int, product_code: int, name: str,
        template: dict[str, Any] | None = None, policy: dict[str, Any] | None = None, *, tmr: bool = False,
    ) -> dict[str, Any]:
        from licentia.model import product_code as check_product_code

        check_product_code(product_code)
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise _err(ErrorCode.INVALID_PARAMETER, "a product needs a name of 1-200 characters")
        template = dict(template or {})
        if "product_code" in template:
            raise _err(ErrorCode.INVALID_PARAMETER, "the template must not name a product code; it is the product's")
        _no_tmr_options(template, "the template")
        item = item_from_json(product_code, template, {})  # validates
        if not isinstance(tmr, bool):
            raise _err(ErrorCode.INVALID_PARAMETER, "tmr must be true or false")
        if tmr and item.quantity == 0:
            raise _err(ErrorCode.INVALID_PARAMETER, "a TMR product is served over the network: quantity 0 (local only) does not fit")
        pol = parse_policy(policy)
        with self.db.transaction() as s:
            exists = s.execute(
                select(Product).where(Product.firm_code == self.firm.firm_code, Product.product_code == product_code)
            ).scalar_one_or_none()
            if exists is not None:
                raise _err(ErrorCode.ALREADY_EXISTS, f"product {product_code} already exists ({exists.name})")
            row = Product(
                firm_code=self.firm.firm_code, product_code=product_code, name=name.strip(),
                template=template, policy=pol.to_dict(), created_at=now, tmr=tmr,
            )
            s.add(row)
            s.flush()
            self._audit(s, now, actor, "product.create", str(product_code), name=name, template=template,
                        policy=pol.to_dict(), tmr=tmr)
            return self._product_json(row)

    def update_product(
        self, actor: str, now: int, product_code: int, *, name: str | None = None,
        template: dict[str, Any] | None = None, policy: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        with self.db.transaction() as s:
            row = self._product(s, product_code)
            changes: dict[str, Any] = {}
            if name is not None:
                if not name.strip() or len(name) > 200:
                    raise _err(ErrorCode.INVALID_PARAMETER, "a product needs a name of 1-200 characters")
                row.name = changes["name"] = name.strip()
            if template is not None:
                if "product_code" in template:
                    raise _err(ErrorCode.INVALID_PARAMETER, "the template must not name a product code")
                _no_tmr_options(template, "the template")
                item_from_json(product_code, template, {})
                row.template = changes["template"] = dict(template)
            if policy is not None:
                row.policy = changes["policy"] = parse_policy(policy).to_dict()
            self._audit(s, now, actor, "product.update", str(product_code), **changes)
            return self._product_json(row)

    @staticmethod
    def _product_json(p: Product) -> dict[str, Any]:
        return {
            "firm_code": p.firm_code, "product_code": p.product_code, "name": p.name,
            "template": p.template, "policy": p.policy, "created_at": p.created_at, "tmr": bool(p.tmr),
        }

    def list_products(self) -> list[dict[str, Any]]:
        with self.db.transaction() as s:
            return [self._product_json(p) for p in s.execute(select(Product).order_by(Product.product_code)).scalars()]

    def get_product(self, product_code: int) -> dict[str, Any]:
        with self.db.transaction() as s:
            return self._product_json(self._product(s, product_code))

    # -- customers --------------------------------------------------------------------------

    @staticmethod
    def _check_server(host: str | None, ip: str | None) -> tuple[str, str]:
        if not host or not ip:
            raise _err(
                ErrorCode.INVALID_PARAMETER,
                "a multi-user customer registers one license server: give its host name and IP address",
            )
        host = ids.check_host_name(host)
        try:
            ip = str(ipaddress.ip_address(ip))
        except ValueError:
            raise _err(ErrorCode.INVALID_PARAMETER, f"{ip!r} is not an IP address") from None
        return host, ip

    def create_customer(
        self, actor: str, now: int, company: str, site: str, license_type: str,
        server_host: str | None = None, server_ip: str | None = None,
        auto_activate_after: int | None = None, server_container: str | None = None,
    ) -> dict[str, Any]:
        for label, value in (("company", company), ("site", site)):
            if not isinstance(value, str) or not value.strip() or len(value) > 200:
                raise _err(ErrorCode.INVALID_PARAMETER, f"a customer needs a {label} of 1-200 characters")
        if license_type not in LICENSE_TYPES:
            raise _err(ErrorCode.INVALID_PARAMETER, f"license type must be one of {', '.join(LICENSE_TYPES)}")
        if license_type == "multi-user":
            server_host, server_ip = self._check_server(server_host, server_ip)
        elif server_host or server_ip:
            raise _err(
                ErrorCode.INVALID_PARAMETER,
                "a single-user customer has no license server; its licenses go to one machine",
            )
        self._check_wait(auto_activate_after)
        container = self._check_server_container(license_type, server_container)
        with self.db.transaction() as s:
            row = Customer(
                id=ids.new_customer_id(), company=company.strip(), site=site.strip(),
                license_type=license_type, server_host=server_host, server_ip=server_ip,
                server_container=container, auto_activate_after=auto_activate_after, state="active", created_at=now,
            )
            s.add(row)
            s.flush()
            self._audit(s, now, actor, "customer.create", row.id, company=company, site=site,
                        license_type=license_type, server_host=server_host, server_ip=server_ip,
                        server_container=container, auto_activate_after=auto_activate_after)
            return self._customer_json(row)

    @staticmethod
    def _check_wait(seconds: int | None) -> None:
        if seconds is not None and (
            isinstance(seconds, bool) or not isinstance(seconds, int) or not 0 <= seconds <= 10 * 365 * 86_400
        ):
            raise _err(ErrorCode.INVALID_PARAMETER, "auto_activate_after must be seconds, zero to ten years")

    @staticmethod
    def _check_server_container(license_type: str, serial: str | None) -> str | None:
        if serial is None:
            return None
        if license_type != "multi-user":
            raise _err(ErrorCode.INVALID_PARAMETER, "only a multi-user customer registers a license server's container")
        parsed = ContainerSerial.parse(serial)
        if kind_of_mask(parsed.mask).value not in ("soft", "token"):
            raise _err(ErrorCode.INVALID_PARAMETER, f"container {parsed} cannot be a license server (soft or token only)")
        return str(parsed)

    def update_customer(
        self, actor: str, now: int, customer_id: str, *, auto_activate_after: int | None = None,
        clear_auto_activate_after: bool = False, server_container: str | None = None,
    ) -> dict[str, Any]:
        """Set the wait before automatic activation, or register the license server's
        container (linked at its first contact from the registered host name)."""
        self._check_wait(auto_activate_after)
        with self.db.transaction() as s:
            c = self._customer(s, customer_id, lock=True)
            if c.state != "active":
                raise _err(ErrorCode.LICENSE_TYPE_CONFLICT, f"customer {c.id} was retired; use customer {c.successor_id}")
            changes: dict[str, Any] = {}
            if auto_activate_after is not None or clear_auto_activate_after:
                c.auto_activate_after = changes["auto_activate_after"] = auto_activate_after
            if server_container is not None:
                serial = self._check_server_container(c.license_type, server_container)
                if c.server_serial is not None and c.server_serial != serial:
                    raise _err(
                        ErrorCode.LICENSE_TYPE_CONFLICT,
                        f"customer {c.id} already uses container {c.server_serial} as its license server; "
                        "moving the server is a server change (a new customer id)",
                    )
                c.server_container = changes["server_container"] = serial
            self._audit(s, now, actor, "customer.update", c.id, **changes)
            return self._customer_json(c)

    @staticmethod
    def _customer_json(c: Customer) -> dict[str, Any]:
        return {
            "id": c.id, "company": c.company, "site": c.site, "license_type": c.license_type,
            "server_host": c.server_host, "server_ip": c.server_ip, "server_serial": c.server_serial,
            "server_container": c.server_container,
            "auto_activate_after": c.auto_activate_after, "state": c.state,
            "successor_id": c.successor_id, "created_at": c.created_at,
        }

    def _customer(self, s: Session, customer_id: str, *, lock: bool = False) -> Customer:
        cid = ids.parse_customer_id(customer_id)
        row = self._lock(s, Customer, cid) if lock else s.get(Customer, cid)
        if row is None:
            raise _not_found("customer", cid)
        return row

    def get_customer(self, customer_id: str) -> dict[str, Any]:
        with self.db.transaction() as s:
            c = self._customer(s, customer_id)
            out = self._customer_json(c)
            out["tickets"] = [
                t.id for t in s.execute(select(Ticket).where(Ticket.customer_id == c.id).order_by(Ticket.created_at)).scalars()
            ]
            return out

    def list_customers(self) -> list[dict[str, Any]]:
        with self.db.transaction() as s:
            return [self._customer_json(c) for c in s.execute(select(Customer).order_by(Customer.created_at, Customer.id)).scalars()]

    # -- orders and tickets -----------------------------------------------------------------

    def create_order(
        self, actor: str, now: int, lines: Sequence[dict[str, Any]],
        customer_id: str | None = None, reference: str | None = None,
    ) -> dict[str, Any]:
        """An order of licenses. It makes one ticket; an order with the same reference (for the
        same customer) extends that ticket instead."""
        if not isinstance(lines, list | tuple) or not lines:
            raise _err(ErrorCode.INVALID_PARAMETER, "an order needs at least one line (product_code, quantity, options, count)")
        if reference is not None and (not isinstance(reference, str) or not reference.strip() or len(reference) > 100):
            raise _err(ErrorCode.INVALID_PARAMETER, "an order reference has 1-100 characters")
        with self.db.transaction() as s:
            customer = self._customer(s, customer_id, lock=True) if customer_id else None
            if customer is not None and customer.state != "active":
                raise _err(ErrorCode.LICENSE_TYPE_CONFLICT, f"customer {customer.id} was retired (successor {customer.successor_id})")
            parsed: list[tuple[Product, dict[str, Any], int]] = []
            for n, line in enumerate(lines, 1):
                if not isinstance(line, dict):
                    raise _err(ErrorCode.INVALID_PARAMETER, f"order line {n} must be an object")
                unknown = set(line) - {"product_code", "quantity", "options", "count"}
                if unknown:
                    raise _err(ErrorCode.INVALID_PARAMETER, f"order line {n} has unknown fields {sorted(unknown)}")
                code = line.get("product_code")
                if isinstance(code, bool) or not isinstance(code, int):
                    raise _err(ErrorCode.INVALID_PARAMETER, f"order line {n} needs a product_code")
                product = self._product(s, code)
                options = line.get("options") or {}
                if not isinstance(options, dict):
                    raise _err(ErrorCode.INVALID_PARAMETER, f"order line {n}: options must be an object")
                if "product_code" in options or "quantity" in options:
                    raise _err(ErrorCode.INVALID_PARAMETER, f"order line {n}: give quantity beside the options, not inside")
                _no_tmr_options(options, f"order line {n}'s options")
                options = dict(options)
                if "quantity" in line:
                    quantity = line["quantity"]
                    if quantity is not None and (isinstance(quantity, bool) or not isinstance(quantity, int)):
                        raise _err(ErrorCode.INVALID_PARAMETER, f"order line {n}: quantity must be a count or null (unlimited)")
                    options["quantity"] = quantity
                item_from_json(product.product_code, product.template, options)
                count = line.get("count", 1)
                if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 1000:
                    raise _err(ErrorCode.INVALID_PARAMETER, f"order line {n}: count must be 1-1000")
                parsed.append((product, options, count))
            if customer is not None and customer.license_type == "single-user":
                codes = {p.product_code for p, _, _ in parsed}
                codes |= {
                    code for (code,) in s.execute(
                        select(Product.product_code)
                        .join(License, License.product_id == Product.id)
                        .join(Ticket, Ticket.id == License.ticket_id)
                        .where(Ticket.customer_id == customer.id, License.state == "open")
                    )
                }
                if len(codes) > 1:
                    raise _err(
                        ErrorCode.LICENSE_TYPE_CONFLICT,
                        f"customer {customer.id} has a single-user license type: one product per customer id "
                        f"(this would make {sorted(codes)}); create a customer id per product",
                    )
            ticket: Ticket | None = None
            order: Order | None = None
            if reference is not None:
                order = s.execute(
                    select(Order).where(
                        Order.reference == reference,
                        Order.customer_id == (customer.id if customer else None),
                    )
                ).scalar_one_or_none()
                if order is not None:
                    ticket = s.execute(select(Ticket).where(Ticket.order_id == order.id).with_for_update()).scalars().first()
            if order is None:
                order = Order(customer_id=customer.id if customer else None, reference=reference, created_at=now, created_by=actor)
                s.add(order)
                s.flush()
            if ticket is None:
                ticket = Ticket(id=ids.new_ticket(), order_id=order.id, customer_id=order.customer_id, state="open", created_at=now)
                s.add(ticket)
                s.flush()
                extended = False
            else:
                extended = True
            made: list[License] = []
            for product, options, count in parsed:
                for _ in range(count):
                    lic = License(ticket_id=ticket.id, product_id=product.id, quantity=options.get("quantity"),
                                  options=options, state="open", created_at=now)
                    s.add(lic)
                    made.append(lic)
            s.flush()
            self._audit(s, now, actor, "order.extend" if extended else "order.create", ticket.id,
                        order=order.id, reference=reference, customer=order.customer_id,
                        licenses=[m.id for m in made])
            lines = [self._license_json(s, lic) for lic in s.execute(
                select(License).where(License.ticket_id == ticket.id, License.state == "open")).scalars()]
            quantities = [lic["quantity"] for lic in lines]
            return {
                "order": order.id, "reference": reference, "customer": order.customer_id,
                "ticket": ticket.id, "extended": extended,
                "licenses": [self._license_json(s, m) for m in made],
                "total": {"licenses": len(lines),
                          "seats": None if None in quantities else sum(quantities)},
            }

    # -- license type and license server changes ----------------------------------------

    def _reissue(self, s: Session, old: Customer, new: Customer, actor: str, now: int, why: str) -> list[str]:
        """Invalidate the customer's tickets (their licenses are revoked in the containers at
        their next contact) and issue the same licenses on new tickets of `new`."""
        made: list[str] = []
        tickets = list(s.execute(
            select(Ticket).where(Ticket.customer_id == old.id, Ticket.state == "open").order_by(Ticket.created_at, Ticket.id).with_for_update()
        ).scalars())
        for t in tickets:
            lics = list(s.execute(select(License).where(License.ticket_id == t.id, License.state == "open").order_by(License.id)).scalars())
            t.state = "void"
            order = Order(customer_id=new.id, reference=None, created_at=now, created_by=actor)
            s.add(order)
            s.flush()
            fresh = Ticket(id=ids.new_ticket(), order_id=order.id, customer_id=new.id, state="open", created_at=now)
            s.add(fresh)
            s.flush()
            revoked: list[int] = []
            for lic in lics:
                for a in s.execute(select(Activation).where(Activation.license_id == lic.id, Activation.state.in_(BUSY))).scalars():
                    a.state = "revoking"
                    revoked.append(lic.id)
                lic.state = "void"
                s.add(License(ticket_id=fresh.id, product_id=lic.product_id, quantity=lic.quantity,
                              options=dict(lic.options), state="open", created_at=now))
            s.flush()
            self._audit(s, now, actor, "ticket.invalidate", t.id, why=why, revoked=revoked, successor=fresh.id)
            self._audit(s, now, actor, "order.create", fresh.id, order=order.id, customer=new.id, reissue_of=t.id)
            made.append(fresh.id)
        return made

    def change_license_type(
        self, actor: str, now: int, customer_id: str, license_type: str,
        server_host: str | None = None, server_ip: str | None = None,
    ) -> dict[str, Any]:
        """Single-user ↔ multi-user: the licenses are invalidated and issued anew."""
        if license_type not in LICENSE_TYPES:
            raise _err(ErrorCode.INVALID_PARAMETER, f"license type must be one of {', '.join(LICENSE_TYPES)}")
        with self.db.transaction() as s:
            c = self._customer(s, customer_id, lock=True)
            if c.state != "active":
                raise _err(ErrorCode.LICENSE_TYPE_CONFLICT, f"customer {c.id} was retired; use customer {c.successor_id}")
            if c.license_type == license_type:
                raise _err(ErrorCode.INVALID_PARAMETER, f"customer {c.id} already has license type {license_type}")
            if license_type == "multi-user":
                server_host, server_ip = self._check_server(server_host, server_ip)
            else:
                if server_host or server_ip:
                    raise _err(ErrorCode.INVALID_PARAMETER, "a single-user customer has no license server")
                codes = set(s.execute(
                    select(Product.product_code).join(License, License.product_id == Product.id)
                    .join(Ticket, Ticket.id == License.ticket_id)
                    .where(Ticket.customer_id == c.id, License.state == "open")
                ).scalars())
                if len(codes) > 1:
                    raise _err(
                        ErrorCode.LICENSE_TYPE_CONFLICT,
                        f"customer {c.id} holds products {sorted(codes)}; a single-user customer id holds one product",
                    )
            previous = c.license_type
            c.license_type, c.server_host, c.server_ip, c.server_serial = license_type, server_host, server_ip, None
            self._audit(s, now, actor, "customer.license-type", c.id, previous=previous, license_type=license_type,
                        server_host=server_host, server_ip=server_ip)
            tickets = self._reissue(s, c, c, actor, now, f"license type changed from {previous} to {license_type}")
            return {"customer": self._customer_json(c), "tickets": tickets}

    def change_server(self, actor: str, now: int, customer_id: str, server_host: str, server_ip: str) -> dict[str, Any]:
        """Move a multi-user customer's licenses to a new license server: a new customer id
        for the new server, the old licenses invalidated, the same licenses issued anew."""
        host, ip = self._check_server(server_host, server_ip)
        with self.db.transaction() as s:
            old = self._customer(s, customer_id, lock=True)
            if old.state != "active":
                raise _err(ErrorCode.LICENSE_TYPE_CONFLICT, f"customer {old.id} was retired; use customer {old.successor_id}")
            if old.license_type != "multi-user":
                raise _err(ErrorCode.LICENSE_TYPE_CONFLICT, f"customer {old.id} is single-user; it has no license server to change")
            new = Customer(
                id=ids.new_customer_id(), company=old.company, site=old.site, license_type="multi-user",
                server_host=host, server_ip=ip, auto_activate_after=old.auto_activate_after, state="active", created_at=now,
            )
            s.add(new)
            s.flush()
            old.state, old.successor_id = "retired", new.id
            self._audit(s, now, actor, "customer.server-change", old.id, successor=new.id,
                        old_server=[old.server_host, old.server_ip, old.server_serial], new_server=[host, ip])
            self._audit(s, now, actor, "customer.create", new.id, company=new.company, site=new.site,
                        license_type="multi-user", server_host=host, server_ip=ip, predecessor=old.id)
            tickets = self._reissue(s, old, new, actor, now, f"license server moved to {host} ({ip})")
            return {"customer": self._customer_json(new), "previous": old.id, "tickets": tickets}

    def get_ticket(self, ticket: str) -> dict[str, Any]:
        with self.db.transaction() as s:
            t = self._ticket(s, ticket, lock=False)
            lics = s.execute(select(License).where(License.ticket_id == t.id).order_by(License.id)).scalars()
            return {
                "ticket": t.id, "customer": t.customer_id, "state": t.state, "created_at": t.created_at,
                "licenses": [self._license_json(s, lic) for lic in lics],
            }

    def list_tickets(self) -> list[dict[str, Any]]:
        with self.db.transaction() as s:
            return [
                {"ticket": t.id, "customer": t.customer_id, "order": t.order_id, "state": t.state, "created_at": t.created_at}
                for t in s.execute(select(Ticket).order_by(Ticket.created_at, Ticket.id)).scalars()
            ]

    # -- containers: reconciliation ---------------------------------------------------------

    def _flag(self, s: Session, c: Container, now: int, reason: str, **detail: Any) -> LicentiaError:
        if c.state != "manipulated":
            c.state = "manipulated"
            c.state_reason = reason
            self._audit(s, now, "central", "container.manipulation", c.serial, reason=reason, **detail)
        return _err(ErrorCode.MANIPULATION_DETECTED, f"container {c.serial}: {reason}")

    def _reconcile(self, s: Session, req: core_updates.Request, now: int) -> tuple[Container, LicentiaError | None]:
        """Bring central's record of the container in step with its request (see module doc)."""
        serial = str(req.serial)
        c: Container | None = self._lock(s, Container, serial)
        reported = sorted(i.item_id for i in req.items)
        if c is None:
            c = Container(
                serial=serial, kind=kind_of_mask(req.serial.mask).value, sign_public=req.sign_public,
                box_public=req.box_public, environment=jsonable(req.environment), counter=req.update_counter,
                state="ok", lock="none", first_seen=now, last_contact=now,
            )
            s.add(c)
            s.flush()
            self._audit(s, now, "central", "container.register", serial, kind=c.kind, environment=c.environment)
            if req.update_counter != 0 or req.items:
                return c, self._flag(
                    s, c, now,
                    f"it reports update step {req.update_counter} of firm {self.firm.firm_code}, "
                    "but central never issued it an update",
                )
            return c, None
        if c.sign_public != req.sign_public:
            raise _err(
                ErrorCode.LICENSE_INVALID,
                f"the request names container {serial}, but its key is not that container's; it is refused",
            )
        c.last_contact = now
        c.environment = jsonable(req.environment)  # what it says now (same-device checks compare it)
        if c.state == "review":
            # An operator accepted the container as it is: adopt its counter and items.
            held = self._held(s, serial)
            for a in held:
                if a.license_id not in reported:
                    a.state, a.ended_at = "cancelled", now
            for u in self._outstanding(s, serial):
                self._void(s, u, keep=None, now=now)
            c.counter, c.state, c.state_reason = req.update_counter, "ok", None
            self._audit(s, now, "central", "container.resync", serial, counter=req.update_counter, items=reported)
            return c, None
        if c.state == "manipulated":
            return c, _err(
                ErrorCode.MANIPULATION_DETECTED,
                f"container {serial} is flagged as manipulated ({c.state_reason}); an operator must review it",
            )
        outstanding = self._outstanding(s, serial)
        if req.update_counter == c.counter:
            expected = sorted(a.license_id for a in self._held(s, serial))
            if reported != expected:
                return c, self._flag(
                    s, c, now, f"it holds items {reported} at step {c.counter}, central issued {expected}",
                    reported=reported, expected=expected,
                )
            return c, None
        if req.update_counter == c.counter + 1 and outstanding:
            # Applied without a receipt: the reported items tell which update it was.
            for u in reversed(outstanding):
                if sorted(self._items_after(s, serial, u)) == reported:
                    self._confirm(s, c, u, now, "request")
                    return c, None
            return c, self._flag(
                s, c, now, f"it reports step {req.update_counter} with items {reported}, which no update central issued explains",
                reported=reported,
            )
        return c, self._flag(
            s, c, now,
            f"it reports update step {req.update_counter}, central confirmed step {c.counter}"
            + (f" and issued step {c.counter + 1}" if outstanding else ""),
            reported=req.update_counter, confirmed=c.counter,
        )

    def _items_after(self, s: Session, serial: str, u: Update) -> set[int]:
        items = {a.license_id for a in self._held(s, serial)}
        for op in u.operations:
            if op["op"] == "put":
                items.add(op["license"])
            elif op["op"] == "remove":
                items.discard(op["license"])
        return items

    def _confirm(self, s: Session, c: Container, u: Update, now: int, how: str) -> None:
        u.state, u.confirmed_at = "confirmed", now
        for op in u.operations:
            kind = op["op"]
            if kind in ("put", "remove"):
                a = s.get(Activation, op["activation"])
                assert a is not None
                if kind == "put" and a.state == "pending":
                    a.state, a.confirmed_at = "active", now
                elif kind == "remove" and a.state in ("returning", "revoking"):
                    a.state, a.ended_at = ("returned" if a.state == "returning" else "revoked"), now
            elif kind == "lock" and c.lock != "unlocking":
                c.lock = "locked"
            elif kind == "unlock" and c.lock == "unlocking":
                c.lock = "none"
        c.counter = u.counter_to
        for other in self._outstanding(s, c.serial):
            if other.id != u.id:
                self._void(s, other, keep=u, now=now)
        self._audit(s, now, "central", "update.confirm", c.serial, update=u.id, counter=u.counter_to, by=how,
                    operations=u.operations)

    def _void(self, s: Session, u: Update, keep: Update | None, now: int) -> None:
        """An update that can no longer be applied: undo what it alone would have done."""
        u.state = "void"
        kept = {(op["op"], op.get("activation")) for op in keep.operations} if keep else set()
        for op in u.operations:
            if (op["op"], op.get("activation")) in kept or op["op"] not in ("put", "remove"):
                continue
            a = s.get(Activation, op["activation"])
            assert a is not None
            if op["op"] == "put" and a.state == "pending":
                a.state, a.ended_at = "cancelled", now
            elif op["op"] == "put" and a.state == "revoking":
                a.state, a.ended_at = "revoked", now  # invalidated before it ever arrived
            elif op["op"] == "remove" and a.state == "returning":
                a.state = "active"

    def _issue(
        self, s: Session, c: Container, req: core_updates.Request, new_ops: list[dict[str, Any]],
        purpose: str, now: int, *, renew: bool = False,
    ) -> Issued:
        """Issue the container's next update: what is outstanding, what is due, and `new_ops`."""
        ops: list[dict[str, Any]] = []
        seen: set[tuple[str, int | None]] = set()

        def add(op: dict[str, Any]) -> None:
            key = (op["op"], op.get("activation"))
            if key not in seen:
                seen.add(key)
                ops.append(op)

        outstanding = self._outstanding(s, c.serial)
        for u in outstanding:
            for op in u.operations:
                if op["op"] != "renew":
                    add(op)
        for a in self._held(s, c.serial):
            if a.state == "revoking":
                add({"op": "remove", "activation": a.id, "license": a.license_id})
        for op in new_ops:
            add(op)
        if c.blacklisted and c.lock != "locked":
            c.lock = "pending"
        if c.lock == "pending":
            add({"op": "lock"})
        if c.lock == "unlocking":  # taken off the blacklist: a lock still on its way is dropped
            ops[:] = [op for op in ops if op["op"] != "lock"]
            seen.discard(("lock", None))
            add({"op": "unlock"})
        if renew and not c.blacklisted:
            add({"op": "renew"})
        order = {"remove": 0, "put": 1, "unlock": 2, "lock": 3, "renew": 4}
        ops.sort(key=lambda o: order[o["op"]])
        if not ops and purpose == "sync" and not req.clock_set_back:
            # Nothing to renew, deliver or revoke, and no clock to heal: no update, the
            # counter stays where it is.
            return Issued(b"", c.serial, req.update_counter, [], "none")

        core_ops: list[core_updates.Operation] = []
        puts: list[int] = []
        for op in ops:
            if op["op"] == "put":
                puts.append(op["license"])
                lic = s.get(License, op["license"])
                assert lic is not None
                core_ops.append(core_updates.PutItem(lic.id, self._item(s, lic)))
            elif op["op"] == "remove":
                core_ops.append(core_updates.RemoveItem(op["license"]))
            elif op["op"] == "lock":
                core_ops.append(core_updates.LockFirm())
            elif op["op"] == "unlock":
                core_ops.append(core_updates.UnlockFirm())
            else:
                core_ops.append(core_updates.RenewCheckpoint())
        data, issued_licenses = core_updates.issue_update_with_licenses(
            req, self.firm.firm_code, self.firm.private_key, core_ops, now)
        for u in outstanding:
            u.state = "superseded"
        row = Update(
            serial=c.serial, counter_from=req.update_counter, counter_to=req.update_counter + 1,
            digest=digest(data).hex(), data=data, purpose=purpose, operations=ops, state="pending",
            signed_time=now, created_at=now,
        )
        s.add(row)
        s.flush()
        self._audit(s, now, "central", "update.issue", c.serial, update=row.id, purpose=purpose,
                    counter=row.counter_to, operations=ops, supersedes=[u.id for u in outstanding])
        return Issued(data, c.serial, row.counter_to, ops, purpose, dict(zip(puts, issued_licenses, strict=True)))

    def _holds_checkpoint(self, s: Session, serial: str) -> bool:
        for a in self._held(s, serial):
            lic = s.get(License, a.license_id)
            if a.state != "revoking" and lic is not None and self._item(s, lic).checkpoint_period is not None:
                return True
        return False

    def _read_request(self, request: bytes) -> core_updates.Request:
        return self._check_request(core_updates.read_request(request))

    def _check_request(self, req: core_updates.Request) -> core_updates.Request:
        """A request central answers: for this firm, trusting this firm's key."""
        if req.firm_code != self.firm.firm_code:
            raise _err(ErrorCode.UPDATE_WRONG_FIRM, f"the request is for firm {req.firm_code}; this central serves firm {self.firm.firm_code}")
        if req.firm_public_key is not None and req.firm_public_key != self.firm.public_key:
            raise _err(ErrorCode.UPDATE_WRONG_FIRM, f"the container trusts another key for firm {self.firm.firm_code}")
        return req

    def _run(self, body: Callable[[Session], Any]) -> Any:
        """One transaction; a refusal found on the way is raised after the flag it set is committed."""
        deferred: list[LicentiaError] = []
        with self.db.transaction() as s:
            result = body_result = body(s)
            if isinstance(body_result, LicentiaError):
                deferred.append(body_result)
        if deferred:
            raise deferred[0]
        return result

    def _honeypot(self, s: Session, c: Container, req: core_updates.Request, now: int, occasion: str) -> Issued:
        self._audit(s, now, "central", "blacklist.hit", c.serial, occasion=occasion, reason=c.blacklisted)
        return self._issue(s, c, req, [], "lock", now)

    # -- activation -------------------------------------------------------------------------

    def activate(
        self, ticket: str, request: bytes, now: int, *, licenses: Sequence[int] | None = None,
        how: str = "offline", actor: str = "user",
    ) -> Issued:
        if how not in ("online", "offline", "portal"):
            raise _err(ErrorCode.INVALID_PARAMETER, "how must be online, offline or portal")
        req = self._read_request(request)

        def body(s: Session) -> Issued | LicentiaError:
            t = self._ticket(s, ticket)
            c, refusal = self._reconcile(s, req, now)
            if refusal is not None:
                return refusal
            if c.blacklisted:
                return self._honeypot(s, c, req, now, f"activation of ticket {t.id}")
            if t.customer_id is not None:
                customer = self._customer(s, t.customer_id, lock=True)
                self._check_customer_container(s, customer, c, req, now)
            wanted = list(s.execute(select(License).where(License.ticket_id == t.id, License.state == "open").order_by(License.id)).scalars())
            if licenses:
                unknown = set(licenses) - {lic.id for lic in wanted}
                if unknown:
                    raise _err(ErrorCode.ENTRY_NOT_FOUND, f"ticket {t.id} has no licenses {sorted(unknown)}")
                wanted = [lic for lic in wanted if lic.id in set(licenses)]
            tmr = [lic for lic in wanted if self._is_tmr(s, lic)]
            if tmr and (licenses or len(tmr) == len(wanted)):
                raise _err(
                    ErrorCode.TMR_PRODUCT_NEEDS_GROUP,
                    f"license{'s' if len(tmr) > 1 else ''} {', '.join(str(lic.id) for lic in tmr)} of ticket {t.id} "
                    "are TMR licenses: each goes into three constituent containers at once, by a group request",
                )
            wanted = [lic for lic in wanted if lic not in tmr]
            new_ops: list[dict[str, Any]] = []
            carried = 0
            elsewhere: list[str] = []
            for lic in wanted:
                busy = self._busy(s, lic.id)
                if busy is None:
                    a = Activation(license_id=lic.id, serial=c.serial, state="pending", how=how, created_at=now)
                    s.add(a)
                    s.flush()
                    new_ops.append({"op": "put", "activation": a.id, "license": lic.id})
                elif busy.serial == c.serial and busy.state == "pending":
                    carried += 1  # issued before, not applied: the new update carries it again
                else:
                    elsewhere.append(f"{lic.id} ({busy.state} in {busy.serial})")
            if not new_ops and not carried:
                raise _err(
                    ErrorCode.LICENSE_NOT_AVAILABLE,
                    f"no license of ticket {t.id} is free to activate: " + ", ".join(elsewhere),
                )
            issued = self._issue(s, c, req, new_ops, "activation", now)
            self._audit(s, now, actor, "ticket.activate", t.id, serial=c.serial, how=how,
                        licenses=[op["license"] for op in new_ops], update_counter=issued.counter_to)
            return issued

        result: Issued = self._run(body)
        return result

    @staticmethod
    def _server_host_refusal(customer: Customer, req: core_updates.Request) -> LicentiaError | None:
        """A multi-user customer's licenses go only to its registered license server: the
        request (file or online, signed by the container) must come from that host name."""
        host = req.environment.get("hostname")
        if isinstance(host, str) and customer.server_host and host.lower() == customer.server_host:
            return None
        came = f"this request comes from {host!r}" if isinstance(host, str) and host else (
            "this request names no host name (write it again with this version of licentia)")
        return _err(
            ErrorCode.LICENSE_TYPE_CONFLICT,
            f"customer {customer.id} registered license server {customer.server_host!r}; {came}",
        )

    def _link_server(self, s: Session, customer: Customer, c: Container, now: int, how: str) -> None:
        customer.server_serial = c.serial
        c.customer_id = customer.id
        self._audit(s, now, "central", "customer.bind", customer.id, serial=c.serial,
                    license_type=customer.license_type, how=how)

    def _check_customer_container(self, s: Session, customer: Customer, c: Container, req: core_updates.Request, now: int) -> None:
        """Single-user: one machine per customer id; multi-user: the registered license server."""
        if customer.state != "active":
            raise _err(ErrorCode.LICENSE_TYPE_CONFLICT, f"customer {customer.id} was retired; use customer {customer.successor_id}")
        if customer.license_type == "multi-user":
            refusal = self._server_host_refusal(customer, req)
            if refusal is not None:
                raise refusal
        if customer.server_serial is None:
            if customer.server_container is not None and customer.server_container != c.serial:
                raise _err(
                    ErrorCode.LICENSE_TYPE_CONFLICT,
                    f"customer {customer.id} registered container {customer.server_container} as its license "
                    f"server; its licenses cannot go to container {c.serial}",
                )
            self._link_server(s, customer, c, now, "activation")
        elif customer.server_serial != c.serial:
            if customer.license_type == "single-user" and not self._customer_holds(s, customer, customer.server_serial):
                # Rehosting: every license came back from the old machine, so the new one may take them.
                self._audit(s, now, "central", "customer.rebind", customer.id, previous=customer.server_serial, serial=c.serial)
                customer.server_serial = c.serial
                c.customer_id = customer.id
                return
            what = "license server" if customer.license_type == "multi-user" else "machine"
            raise _err(
                ErrorCode.LICENSE_TYPE_CONFLICT,
                f"customer {customer.id} ({customer.license_type}) uses the {what} with container "
                f"{customer.server_serial}; its licenses cannot go to container {c.serial}",
            )

    def _customer_holds(self, s: Session, customer: Customer, serial: str) -> bool:
        """Does `serial` hold (or is it about to receive) any license of the customer's tickets?"""
        row = s.execute(
            select(Activation.id).join(License, License.id == Activation.license_id)
            .join(Ticket, Ticket.id == License.ticket_id)
            .where(Ticket.customer_id == customer.id, Activation.serial == serial,
                   Activation.state.in_(("pending", "active", "returning")))
            .limit(1)
        ).first()
        return row is not None

    def return_licenses(
        self, ticket: str, request: bytes, now: int, *, licenses: Sequence[int] | None = None, actor: str = "user",
    ) -> Issued:
        req = self._read_request(request)

        def body(s: Session) -> Issued | LicentiaError:
            t = self._ticket(s, ticket)
            c, refusal = self._reconcile(s, req, now)
            if refusal is not None:
                return refusal
            if c.blacklisted:
                return self._honeypot(s, c, req, now, f"return of ticket {t.id}")
            rows = s.execute(
                select(Activation, License)
                .join(License, License.id == Activation.license_id)
                .where(License.ticket_id == t.id, Activation.serial == c.serial, Activation.state == "active")
            ).all()
            if licenses:
                rows = [r for r in rows if r[1].id in set(licenses)]
            if not rows:
                raise _err(ErrorCode.LICENSE_NOT_AVAILABLE, f"no license of ticket {t.id} is active in container {c.serial}")
            self._no_tmr([lic for _, lic in rows], s, "returned")
            new_ops = []
            for a, lic in rows:
                product = s.get(Product, lic.product_id)
                assert product is not None
                if not parse_policy(product.policy).returnable:
                    raise _err(ErrorCode.ACCESS_DENIED, f"licenses of product {product.product_code} cannot be returned")
                a.state = "returning"
                new_ops.append({"op": "remove", "activation": a.id, "license": lic.id})
            issued = self._issue(s, c, req, new_ops, "return", now)
            self._audit(s, now, actor, "ticket.return", t.id, serial=c.serial,
                        licenses=[op["license"] for op in new_ops], update_counter=issued.counter_to)
            return issued

        result: Issued = self._run(body)
        return result

    def confirm_receipt(self, receipt: bytes, now: int) -> dict[str, Any]:
        rc = core_updates.read_receipt(receipt)
        result: dict[str, Any] = self._run(lambda s: self._confirm_receipt(s, rc, now))
        return result

    def _confirm_receipt(self, s: Session, rc: core_updates.Receipt, now: int) -> dict[str, Any] | LicentiaError:
        """Confirm one receipt in the transaction `s` (a refusal found is returned, see `_run`)."""
        c: Container | None = self._lock(s, Container, str(rc.serial))
        if c is None:
            raise _err(ErrorCode.CONTAINER_NOT_FOUND, f"central issued no update for container {rc.serial}")
        if c.sign_public != rc.sign_public:
            raise _err(ErrorCode.LICENSE_INVALID, f"the receipt was not signed by container {rc.serial}")
        if rc.firm_code != self.firm.firm_code:
            raise _err(ErrorCode.UPDATE_WRONG_FIRM, f"the receipt is for firm {rc.firm_code}")
        c.last_contact = now
        u = s.execute(
            select(Update).where(Update.serial == c.serial, Update.counter_to == rc.update_counter,
                                 Update.digest == rc.update_digest.hex())
        ).scalar_one_or_none()
        if u is not None and u.state == "confirmed":
            return {"serial": c.serial, "counter": u.counter_to, "confirmed": True, "already": True}
        if c.state != "ok":
            return _err(ErrorCode.MANIPULATION_DETECTED, f"container {c.serial} is flagged as manipulated ({c.state_reason}); an operator must review it")
        if u is None or u.state not in ("pending", "superseded") or u.counter_from != c.counter:
            return self._flag(
                s, c, now,
                f"its receipt names update step {rc.update_counter} with a digest central did not issue "
                f"(central confirmed step {c.counter})",
                receipt_counter=rc.update_counter, digest=rc.update_digest.hex(),
            )
        self._confirm(s, c, u, now, "receipt")
        reported = sorted(i.item_id for i in rc.items)
        expected = sorted(a.license_id for a in self._held(s, c.serial))
        if reported != expected:
            return self._flag(s, c, now, f"after step {u.counter_to} it holds items {reported}, central issued {expected}",
                              reported=reported, expected=expected)
        return {"serial": c.serial, "counter": u.counter_to, "confirmed": True, "already": False,
                "operations": u.operations}

    # -- sync: checkpoints, signed time, revocations, honeypots, automatic activation ----------

    def sync(self, request: bytes, now: int) -> Issued:
        req = self._read_request(request)

        def body(s: Session) -> Issued | LicentiaError:
            # Lock order as in activation: customer and tickets first, then the container.
            serial = str(req.serial)
            customer = s.execute(
                select(Customer).where(Customer.state == "active", or_(
                    Customer.server_serial == serial,
                    and_(Customer.server_serial.is_(None), Customer.server_container == serial),
                )).order_by(Customer.created_at).with_for_update()
            ).scalars().first()
            linking = customer is not None and customer.server_serial is None
            if linking:
                assert customer is not None
                refusal = self._server_host_refusal(customer, req)
                if refusal is not None:  # not the registered host: an ordinary sync, no link
                    self._audit(s, now, "central", "customer.link-refused", customer.id, serial=serial,
                                reason=refusal.message)
                    customer, linking = None, False
            due: list[License] = []
            if customer is not None:
                delay = customer.auto_activate_after if customer.auto_activate_after is not None else DEFAULT_AUTO_ACTIVATE_AFTER
                tickets = list(
                    s.execute(
                        select(Ticket).where(Ticket.customer_id == customer.id, Ticket.state == "open",
                                             Ticket.created_at + delay <= now + min(delay, SYNC_GRACE))
                        .order_by(Ticket.id).with_for_update()
                    ).scalars()
                )
                for t in tickets:
                    due += list(s.execute(select(License).where(License.ticket_id == t.id, License.state == "open").order_by(License.id)).scalars())
            c, refusal = self._reconcile(s, req, now)
            if refusal is not None:
                return refusal
            if c.blacklisted:
                return self._honeypot(s, c, req, now, "sync")
            if linking:
                assert customer is not None
                self._link_server(s, customer, c, now, "first contact")
            new_ops: list[dict[str, Any]] = []
            for lic in due:
                if self._busy(s, lic.id) is None and not self._is_tmr(s, lic):  # a TMR license needs a group
                    a = Activation(license_id=lic.id, serial=c.serial, state="pending", how="automatic", created_at=now)
                    s.add(a)
                    s.flush()
                    new_ops.append({"op": "put", "activation": a.id, "license": lic.id})
            issued = self._issue(s, c, req, new_ops, "sync", now, renew=self._holds_checkpoint(s, c.serial))
            if new_ops:
                self._audit(s, now, "central", "ticket.auto-activate", c.serial, customer=customer.id if customer else None,
                            licenses=[op["license"] for op in new_ops])
            return issued

        result: Issued = self._run(body)
        return result

    # -- containers: review, blacklist -----------------------------------------------------

    def _container(self, s: Session, serial: str, *, lock: bool = True) -> Container:
        key = str(ContainerSerial.parse(serial))
        c = self._lock(s, Container, key) if lock else s.get(Container, key)
        if c is None:
            raise _err(ErrorCode.CONTAINER_NOT_FOUND, f"central knows no container {key}")
        return c

    def _container_json(self, s: Session, c: Container) -> dict[str, Any]:
        return {
            "serial": c.serial, "kind": c.kind, "counter": c.counter, "state": c.state,
            "state_reason": c.state_reason, "blacklisted": c.blacklisted, "blacklisted_at": c.blacklisted_at,
            "lock": c.lock, "customer": c.customer_id, "first_seen": c.first_seen, "last_contact": c.last_contact,
            "environment": c.environment,
            "licenses": sorted(a.license_id for a in self._held(s, c.serial)),
            "outstanding": [u.counter_to for u in self._outstanding(s, c.serial)],
        }

    def list_containers(self) -> list[dict[str, Any]]:
        with self.db.transaction() as s:
            return [self._container_json(s, c) for c in s.execute(select(Container).order_by(Container.serial)).scalars()]

    def get_container(self, serial: str) -> dict[str, Any]:
        with self.db.transaction() as s:
            return self._container_json(s, self._container(s, serial, lock=False))

    def review_container(self, actor: str, now: int, serial: str, note: str = "") -> dict[str, Any]:
        """An operator accepts a manipulated container: its next contact is taken as it is."""
        with self.db.transaction() as s:
            c = self._container(s, serial)
            if c.state != "manipulated":
                raise _err(ErrorCode.INVALID_PARAMETER, f"container {c.serial} is not flagged (state {c.state})")
            c.state = "review"
            self._audit(s, now, actor, "container.review", c.serial, previous_reason=c.state_reason, note=note)
            return self._container_json(s, c)

    def blacklist(self, actor: str, now: int, serial: str, reason: str) -> dict[str, Any]:
        if reason not in ("lost", "stolen"):
            raise _err(ErrorCode.INVALID_PARAMETER, "a container is blacklisted as lost or stolen")
        with self.db.transaction() as s:
            c = self._container(s, serial)
            self._blacklist(s, c, now, actor, reason)
            return self._container_json(s, c)

    def _blacklist(self, s: Session, c: Container, now: int, actor: str, reason: str) -> None:
        if c.blacklisted is None:
            c.blacklisted, c.blacklisted_at = reason, now
        if c.lock != "locked":
            c.lock = "pending"
        self._audit(s, now, actor, "blacklist.add", c.serial, reason=reason)

    def unblacklist(self, actor: str, now: int, serial: str) -> dict[str, Any]:
        with self.db.transaction() as s:
            c = self._container(s, serial)
            if c.blacklisted is None:
                raise _err(ErrorCode.INVALID_PARAMETER, f"container {c.serial} is not blacklisted")
            c.blacklisted = c.blacklisted_at = None
            sent = any(op["op"] == "lock" for u in self._outstanding(s, c.serial) for op in u.operations)
            if c.lock == "locked" or sent:
                c.lock = "unlocking"  # the unlock goes out, signed, at the container's next contact
            else:
                c.lock = "none"
            self._audit(s, now, actor, "blacklist.remove", c.serial, lock=c.lock)
            return self._container_json(s, c)

    def blacklist_entries(self) -> list[BlacklistEntry]:
        with self.db.transaction() as s:
            return [
                BlacklistEntry(ContainerSerial.parse(c.serial), c.blacklisted_at or 0, c.blacklisted or "lost")
                for c in s.execute(select(Container).where(Container.blacklisted.is_not(None)).order_by(Container.serial)).scalars()
            ]

    def export_blacklist(self, actor: str, now: int) -> bytes:
        entries = self.blacklist_entries()
        data = make_blacklist(self.firm.firm_code, entries, self.firm.private_key, now)
        with self.db.transaction() as s:
            self._audit(s, now, actor, "blacklist.export", str(self.firm.firm_code),
                        serials=[str(e.serial) for e in entries], digest=digest(data).hex())
        return data

    # -- replacement of lost licenses ------------------------------------------------------

    def request_replacement(
        self, ticket: str, old_serial: str, now: int, *, same_device: bool = False,
        request: bytes | None = None, actor: str = "user",
    ) -> dict[str, Any]:
        """Replace the ticket's licenses held in a lost container.

        Within the product's policy they are free at once for a new activation and revoked in
        the old container at its next contact; beyond it, the approval hook decides, else an
        operator.
        """
        new_req = self._read_request(request) if request is not None else None
        if same_device and new_req is None:
            raise _err(ErrorCode.INVALID_PARAMETER, "a replacement on the same device needs the new container's request file")
        old_key = str(ContainerSerial.parse(old_serial))
        asks: list[tuple[int, str, dict[str, Any]]] = []  # (replacement id, hook url, payload)

        def phase1(s: Session) -> list[dict[str, Any]]:
            t = self._ticket(s, ticket)
            old = self._container(s, old_key)
            rows = s.execute(
                select(Activation, License)
                .join(License, License.id == Activation.license_id)
                .where(License.ticket_id == t.id, Activation.serial == old.serial, Activation.state.in_(("active", "returning")))
            ).all()
            if not rows:
                raise _err(ErrorCode.LICENSE_NOT_AVAILABLE, f"container {old.serial} holds no license of ticket {t.id}")
            self._no_tmr([lic for _, lic in rows], s, "replaced")
            if new_req is not None and str(new_req.serial) == old.serial:
                raise _err(ErrorCode.INVALID_PARAMETER, "the new container must not be the lost one")
            out = []
            for _, lic in rows:
                waiting = s.execute(
                    select(Replacement).where(Replacement.license_id == lic.id, Replacement.old_serial == old.serial,
                                              Replacement.same_device == same_device, Replacement.state == "pending")
                ).scalars().first()
                if waiting is not None:
                    out.append(self._replacement_json(waiting))  # asked again: the same request, not another
                    continue
                product = s.get(Product, lic.product_id)
                assert product is not None
                policy = parse_policy(product.policy)
                if same_device:
                    assert new_req is not None
                    differ = mismatched_properties(policy.same_device.match, old.environment, jsonable(new_req.environment))
                    if differ:
                        raise _err(
                            ErrorCode.REPLACEMENT_REFUSED,
                            f"the new container is not on the same device: {', '.join(differ)} differ(s) from the lost one",
                        )
                earlier = [
                    r.requested_at for r in s.execute(
                        select(Replacement).where(Replacement.license_id == lic.id, Replacement.state == "approved",
                                                  Replacement.same_device == same_device)
                    ).scalars()
                ]
                d = decide(policy, same_device=same_device, earlier=earlier, now=now)
                r = Replacement(license_id=lic.id, old_serial=old.serial, same_device=same_device,
                                state="pending", reason=d.reason, requested_at=now)
                s.add(r)
                s.flush()
                self._audit(s, now, actor, "replacement.request", t.id, replacement=r.id, license=lic.id,
                            old_serial=old.serial, same_device=same_device, within_policy=d.within_policy, reason=d.reason)
                if d.within_policy:
                    self._approve(s, r, now, "policy")
                elif policy.approval_hook:
                    asks.append((r.id, policy.approval_hook, {
                        "replacement": r.id, "ticket": t.id, "customer": t.customer_id, "license": lic.id,
                        "product_code": product.product_code, "old_serial": old.serial,
                        "same_device": same_device, "earlier": earlier, "reason": d.reason,
                    }))
                out.append(self._replacement_json(r))
            return out

        results: list[dict[str, Any]] = self._run(phase1)
        if asks:
            answers: dict[int, tuple[bool, str]] = {}
            for rid, url, payload in asks:
                try:
                    answer = self.hook(url, payload)
                    answers[rid] = (answer.get("approve") is True, str(answer.get("reason", "")))
                except (httpx.HTTPError, ValueError) as exc:
                    answers[rid] = (False, f"the approval hook did not answer ({type(exc).__name__}); an operator decides")
            with self.db.transaction() as s:
                for rid, (ok, why) in answers.items():
                    r = s.get(Replacement, rid)
                    assert r is not None
                    if r.state != "pending":
                        continue
                    if ok:
                        self._approve(s, r, now, "hook", why)
                    elif "did not answer" not in why:
                        r.state, r.decided_at, r.decided_by = "refused", now, "hook"
                        r.reason = why or "the vendor's approval hook refused it"
                        self._audit(s, now, "hook", "replacement.refuse", str(r.id), reason=r.reason)
                    else:
                        self._audit(s, now, "central", "replacement.hook-failed", str(r.id), reason=why)
                results = [self._replacement_json(s.get(Replacement, r["id"])) for r in results]  # type: ignore[arg-type]
        pending = [r for r in results if r["state"] == "pending"]
        refused = [r for r in results if r["state"] == "refused"]
        if refused and len(refused) == len(results):
            raise LicentiaError(ErrorCode.REPLACEMENT_REFUSED, f"replacement refused: {refused[0]['reason']} (replacement {refused[0]['id']})")
        if pending and len(pending) + len(refused) == len(results):
            raise LicentiaError(
                ErrorCode.REPLACEMENT_PENDING,
                f"replacement {', '.join(str(r['id']) for r in pending)} is beyond the product's policy "
                f"({pending[0]['reason']}); it waits for the vendor's approval",
            )
        return {"ticket": ids.parse_ticket(ticket), "old_serial": old_key, "replacements": results}

    def _approve(self, s: Session, r: Replacement, now: int, by: str, why: str = "") -> None:
        """Approve `r`; `by` is "policy", "hook" or the operator's actor name."""
        r.state, r.decided_at = "approved", now
        r.decided_by, r.decided_actor = (by, None) if by in ("policy", "hook") else ("operator", by)
        a = s.execute(
            select(Activation).where(Activation.license_id == r.license_id, Activation.serial == r.old_serial,
                                     Activation.state.in_(("active", "returning")))
        ).scalar_one_or_none()
        if a is not None:
            a.state = "revoking"  # the license is free now; the old container loses it at its next contact
        self._audit(s, now, by, "replacement.approve", str(r.id), license=r.license_id, old_serial=r.old_serial, why=why)
        if r.same_device:
            old = self._lock(s, Container, r.old_serial)
            if old is not None and old.blacklisted is None:
                old.blacklisted, old.blacklisted_at = "replaced", now
                old.lock = "pending" if old.lock != "locked" else old.lock
                self._audit(s, now, "central", "blacklist.add", old.serial, reason="replaced", replacement=r.id)

    def approve_replacement(self, actor: str, now: int, replacement_id: int) -> dict[str, Any]:
        with self.db.transaction() as s:
            r = self._lock(s, Replacement, replacement_id)
            if r is None:
                raise _not_found("replacement", replacement_id)
            if r.state == "approved":
                return self._replacement_json(r)
            self._approve(s, r, now, actor)
            return self._replacement_json(r)

    def refuse_replacement(self, actor: str, now: int, replacement_id: int, reason: str = "") -> dict[str, Any]:
        with self.db.transaction() as s:
            r = self._lock(s, Replacement, replacement_id)
            if r is None:
                raise _not_found("replacement", replacement_id)
            if r.state == "approved":
                raise _err(ErrorCode.INVALID_PARAMETER, f"replacement {replacement_id} was already approved")
            r.state, r.decided_at, r.decided_by, r.decided_actor = "refused", now, "operator", actor
            if reason:
                r.reason = reason
            self._audit(s, now, actor, "replacement.refuse", str(r.id), reason=reason)
            return self._replacement_json(r)

    @staticmethod
    def _replacement_json(r: Replacement) -> dict[str, Any]:
        return {
            "id": r.id, "license": r.license_id, "old_serial": r.old_serial, "same_device": r.same_device,
            "state": r.state, "reason": r.reason, "requested_at": r.requested_at,
            "decided_at": r.decided_at, "decided_by": r.decided_by, "decided_actor": r.decided_actor,
        }

    def list_replacements(self, state: str | None = None) -> list[dict[str, Any]]:
        with self.db.transaction() as s:
            q = select(Replacement).order_by(Replacement.id)
            if state:
                q = q.where(Replacement.state == state)
            return [self._replacement_json(r) for r in s.execute(q).scalars()]

    # -- audit -------------------------------------------------------------------------------

    def audit(self, *, subject: str | None = None, after: int = 0, limit: int = 500) -> list[dict[str, Any]]:
        with self.db.transaction() as s:
            q = select(AuditEntry).where(AuditEntry.id > after).order_by(AuditEntry.id).limit(max(1, min(limit, 5000)))
            if subject:
                q = q.where(AuditEntry.subject == subject)
            return [
                {"id": e.id, "at": e.at, "actor": e.actor, "action": e.action, "subject": e.subject, "detail": e.detail}
                for e in s.execute(q).scalars()
            ]
