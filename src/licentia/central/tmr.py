"""TMR products in central: a product marked TMR sells TMR licenses, each activated into three
constituent containers at once (docs/central.md, "TMR products"; docs/tmr.md).

- Activating a ticket's TMR license takes a **group request** (LCGR, the three upstreams'
  own requests, `licentia.core.tmrgroup`) and answers a **group update** (LCGU): each part
  is the constituent container's next update as central issues any update
  (`Central._issue`: whatever is outstanding or due to that container, and the TMR item),
  and the firm signs the whole.
- The TMR id is central's next one for the firm, taken from the `tmr_ids` row read FOR
  UPDATE in the activation's transaction (SQLite: BEGIN IMMEDIATE), so two activations at
  once never share one; a license keeps its id when it is activated again.
- The item names the three containers (`ProductItem.tmr_constituents`), kept in the
  license's options so that an update issued again carries the same item.
- A **group receipt** (LCGC) is checked against the group update central issued, as
  `licentia vendor check-receipt` does (`tmrgroup.check_group_receipt`); every receipt that
  belongs to it is confirmed as a single receipt is, and a part missing or wrong is 1462,
  naming its container.

A single container's request for a TMR license is refused (1475), a group request for an
ordinary license too (1476).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from licentia.central.db import Activation, License, TmrGroup, TmrIds
from licentia.central.service import BUSY, Central, _err
from licentia.core import tmrgroup, updates as core_updates
from licentia.crypto import digest
from licentia.model import ErrorCode, LicentiaError

__all__ = ["IssuedGroup", "TmrProducts"]


@dataclass(frozen=True)
class IssuedGroup:
    """A group update central issued: one TMR license into three constituents."""

    update: bytes
    tmr_id: int
    license_id: int
    parts: list[dict[str, Any]]  # per constituent: serial, counter, operations

    def to_json(self) -> dict[str, Any]:
        return {"tmr_id": self.tmr_id, "license": self.license_id, "purpose": "activation", "parts": self.parts}


class TmrProducts:
    def __init__(self, central: Central) -> None:
        self.central = central

    # -- activation by group request ---------------------------------------------------------

    def activate_group(
        self, ticket: str, data: bytes, now: int, *, licenses: Sequence[int] | None = None,
        how: str = "offline", actor: str = "user",
    ) -> IssuedGroup:
        c = self.central
        if how not in ("online", "offline", "portal"):
            raise _err(ErrorCode.INVALID_PARAMETER, "how must be online, offline or portal")
        group = tmrgroup.read_group_request(data)  # three distinct containers of one firm (1460)
        requests = [c._check_request(r) for r in group.requests]
        self._ensure_counter()

        def body(s: Session) -> IssuedGroup | LicentiaError:
            t = c._ticket(s, ticket)
            wanted = list(s.execute(select(License).where(License.ticket_id == t.id, License.state == "open")
                                    .order_by(License.id)).scalars())
            if licenses:
                unknown = set(licenses) - {lic.id for lic in wanted}
                if unknown:
                    raise _err(ErrorCode.ENTRY_NOT_FOUND, f"ticket {t.id} has no licenses {sorted(unknown)}")
                wanted = [lic for lic in wanted if lic.id in set(licenses)]
            ordinary = [lic for lic in wanted if not c._is_tmr(s, lic)]
            tmr = [lic for lic in wanted if lic not in ordinary]
            if (licenses and ordinary) or not tmr:
                what = (f"license{'s' if len(ordinary) > 1 else ''} {', '.join(str(lic.id) for lic in ordinary)} "
                        f"{'is' if len(ordinary) == 1 else 'are'} of an ordinary product" if ordinary
                        else "it has no open license")
                raise _err(ErrorCode.TMR_GROUP_NOT_TMR,
                           f"ticket {t.id}: {what}; a group request activates TMR licenses only")
            serials = sorted(str(r.serial) for r in requests)
            chosen, carried, taken = self._choose(tmr, s, serials)
            if chosen is None:
                raise _err(ErrorCode.LICENSE_NOT_AVAILABLE,
                           f"no TMR license of ticket {t.id} is free to activate: " + ", ".join(taken))
            containers = []
            for req in requests:
                cont, refusal = c._reconcile(s, req, now)
                if refusal is not None:
                    return refusal
                if cont.blacklisted:
                    raise _err(ErrorCode.CONTAINER_BLACKLISTED,
                               f"container {cont.serial} is on the blacklist ({cont.blacklisted}); it cannot be a "
                               "constituent of a TMR license")
                containers.append(cont)
            tmr_id = chosen.options.get("tmr_id")
            if not isinstance(tmr_id, int):
                tmr_id = self._next_tmr_id(s)
            item = tmrgroup.tmr_item(c._item(s, chosen), tmr_id, requests)
            chosen.options = {**chosen.options, "tmr_id": tmr_id,
                              "tmr_constituents": [[serial, key.hex()] for serial, key in item.tmr_constituents]}
            parts: list[tuple[core_updates.Request, int, bytes, bytes]] = []
            shown: list[dict[str, Any]] = []
            for req, cont in zip(requests, containers, strict=True):
                new_ops: list[dict[str, Any]] = []
                if not carried:
                    a = Activation(license_id=chosen.id, serial=cont.serial, state="pending", how=how, created_at=now)
                    s.add(a)
                    s.flush()
                    new_ops.append({"op": "put", "activation": a.id, "license": chosen.id})
                issued = c._issue(s, cont, req, new_ops, "activation", now)
                parts.append((req, chosen.id, issued.update, issued.licenses[chosen.id]))
                shown.append({"serial": cont.serial, "counter": issued.counter_to, "operations": issued.operations})
            product = c._product_of(s, chosen)
            update = tmrgroup.sign_group_update(c.firm.firm_code, c.firm.private_key, tmr_id, product.product_code,
                                                now, parts)
            for old in s.execute(select(TmrGroup).where(TmrGroup.license_id == chosen.id,
                                                        TmrGroup.state == "pending")).scalars():
                old.state = "superseded"
            s.add(TmrGroup(license_id=chosen.id, tmr_id=tmr_id, serials=serials, data=update, state="pending",
                           created_at=now))
            c._audit(s, now, actor, "ticket.activate-tmr", t.id, license=chosen.id, tmr_id=tmr_id, serials=serials,
                     how=how, carried=carried)
            return IssuedGroup(update, tmr_id, chosen.id, shown)

        result: IssuedGroup = c._run(body)
        return result

    def _choose(self, tmr: list[License], s: Session, serials: list[str]) -> tuple[License | None, bool, list[str]]:
        """The first TMR license free to activate (or issued to these three containers and not
        yet applied: carried again), whether it is carried, and where the others are."""
        taken: list[str] = []
        for lic in tmr:
            busy = list(s.execute(select(Activation).where(Activation.license_id == lic.id,
                                                           Activation.state.in_(BUSY))).scalars())
            if not busy:
                return lic, False, taken
            if all(a.state == "pending" for a in busy) and sorted(a.serial for a in busy) == serials:
                return lic, True, taken
            taken.append(f"{lic.id} ({', '.join(sorted(f'{a.state} in {a.serial}' for a in busy))})")
        return None, False, taken

    def _ensure_counter(self) -> None:
        """The firm's `tmr_ids` row, made by whichever activation comes first."""
        firm_code = self.central.firm.firm_code
        try:
            with self.central.db.transaction() as s:
                if s.get(TmrIds, firm_code) is None:
                    s.add(TmrIds(firm_code=firm_code, last=0))
        except IntegrityError:
            pass  # another central process made it at the same moment

    def _next_tmr_id(self, s: Session) -> int:
        row = self.central._lock(s, TmrIds, self.central.firm.firm_code)
        assert row is not None  # _ensure_counter made it before the transaction
        row.last = int(row.last) + 1
        return int(row.last)

    # -- group receipts ----------------------------------------------------------------------

    def confirm_group_receipt(self, data: bytes, now: int) -> dict[str, Any]:
        c = self.central
        receipts = tmrgroup.read_group_receipt(data)

        def body(s: Session) -> dict[str, Any] | LicentiaError:
            found = self._group_of(s, receipts)
            if found is None:
                raise _err(ErrorCode.TMR_GROUP_NOT_ISSUED,
                           "the group receipt names no group update this central issued to containers "
                           + ", ".join(sorted({str(rc.serial) for rc in receipts})))
            row, group = found
            check = tmrgroup.check_group_receipt(group, receipts)
            ours = {(p.serial, p.counter_to): p for p in group.parts}
            for rc in receipts:  # every receipt of a part of this group update, as a single receipt
                part = ours.get((rc.serial, rc.update_counter))
                if part is not None and rc.update_digest == digest(part.update):
                    outcome = c._confirm_receipt(s, rc, now)
                    if isinstance(outcome, LicentiaError):
                        return outcome
            if check.problems:
                return _err(ErrorCode.TMR_GROUP_INCOMPLETE,
                            f"TMR license {group.tmr_id}: " + "; ".join(check.problems)
                            + (f" (confirmed: {'; '.join(check.confirmed)})" if check.confirmed else ""))
            if row.state != "confirmed":
                row.state, row.confirmed_at = "confirmed", now
                c._audit(s, now, "central", "tmr.confirm", str(row.tmr_id), license=row.license_id,
                         serials=row.serials)
            return {"tmr_id": group.tmr_id, "license": row.license_id, "confirmed": list(check.confirmed),
                    "complete": True}

        result: dict[str, Any] = c._run(body)
        return result

    def _group_of(self, s: Session, receipts: Sequence[core_updates.Receipt]
                  ) -> tuple[TmrGroup, tmrgroup.GroupUpdate] | None:
        """The newest group update central issued whose parts the receipts answer."""
        answered = {(str(rc.serial), rc.update_digest) for rc in receipts}
        items = {i.item_id for rc in receipts for i in rc.items}  # a TMR item's id is its license's
        rows = s.execute(select(TmrGroup).where(TmrGroup.license_id.in_(items),
                                                TmrGroup.state.in_(("pending", "confirmed")))
                         .order_by(TmrGroup.id.desc())).scalars()
        for row in rows:
            group = tmrgroup.read_group_update(row.data, self.central.firm.public_key)
            if any((str(p.serial), digest(p.update)) in answered for p in group.parts):
                return row, group
        return None
