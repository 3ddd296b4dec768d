"""The back office's decisions, against real SQLite and real PostgreSQL, with containers run
by the real core (request → update → receipt)."""

from __future__ import annotations

import pytest
from central_helpers import FIRM_CODE, T0, Box, make_firm
from sqlalchemy import text

from licentia.central.service import Central
from licentia.core import updates
from licentia.model import ErrorCode, ItemStatus, LicentiaError

DAY = 86_400


def setup_ticket(central: Central, *, count: int = 1, customer: str | None = None, template: dict | None = None,
                 policy: dict | None = None, product_code: int = 42, quantity: int | None = 5) -> str:
    try:
        central.create_product("ops", T0, product_code, "CAD Pro", template or {"feature_map": 3}, policy)
    except LicentiaError as exc:
        assert exc.code == ErrorCode.ALREADY_EXISTS
    order = central.create_order(
        "sales", T0, [{"product_code": product_code, "quantity": quantity, "count": count}], customer_id=customer
    )
    return str(order["ticket"])


def activate(central: Central, ticket: str, box: Box, now: int = T0) -> updates.Receipt:
    issued = central.activate(ticket, box.request(now), now)
    receipt = box.apply(issued.update, now)
    central.confirm_receipt(receipt, now)
    return updates.read_receipt(receipt)


def codes(exc: pytest.ExceptionInfo[LicentiaError]) -> ErrorCode:
    return exc.value.code


def test_offline_activation_round_trip(central: Central) -> None:
    ticket = setup_ticket(central, count=2)
    box = Box.new()
    issued = central.activate(ticket, box.request(), T0)
    assert issued.counter_to == 1
    info = central.get_ticket(ticket)
    assert [lic["status"] for lic in info["licenses"]] == ["pending", "pending"]
    receipt = box.apply(issued.update)
    result = central.confirm_receipt(receipt, T0)
    assert result["confirmed"] and result["counter"] == 1
    info = central.get_ticket(ticket)
    assert [lic["status"] for lic in info["licenses"]] == ["active", "active"]
    assert {lic["serial"] for lic in info["licenses"]} == {box.serial}
    items = box.items()
    assert sorted(items) == sorted(lic["id"] for lic in info["licenses"])
    assert all(e.item.quantity == 5 and e.item.feature_map == 3 for e in items.values())
    # the same receipt again is harmless
    assert central.confirm_receipt(receipt, T0)["already"]
    # nothing left: a second activation is refused with a reason
    with pytest.raises(LicentiaError) as exc:
        central.activate(ticket, Box.new().request(), T0)
    assert codes(exc) == ErrorCode.LICENSE_NOT_AVAILABLE


def test_unapplied_update_is_carried_and_either_receipt_counts(central: Central) -> None:
    ticket = setup_ticket(central)
    box = Box.new()
    first = central.activate(ticket, box.request(), T0)
    # the user lost the update file and asks again: the new update carries the same license
    second = central.activate(ticket, box.request(), T0 + 1)
    assert first.counter_to == second.counter_to == 1
    receipt = box.apply(first.update)  # ... but then found and applied the first one
    central.confirm_receipt(receipt, T0 + 2)
    assert central.get_ticket(ticket)["licenses"][0]["status"] == "active"
    with pytest.raises(LicentiaError) as exc:
        box.apply(second.update)
    assert codes(exc) == ErrorCode.UPDATE_TOO_OLD


def test_applied_without_receipt_is_confirmed_by_the_next_request(central: Central) -> None:
    ticket = setup_ticket(central, count=2)
    box = Box.new()
    lic1, lic2 = (lic["id"] for lic in central.get_ticket(ticket)["licenses"])
    box.apply(central.activate(ticket, box.request(), T0, licenses=[lic1]).update)
    # no receipt sent; the next activation's request shows step 1 with the item
    issued = central.activate(ticket, box.request(T0 + 5), T0 + 5, licenses=[lic2])
    assert issued.counter_to == 2
    central.confirm_receipt(box.apply(issued.update, T0 + 5), T0 + 5)
    assert [lic["status"] for lic in central.get_ticket(ticket)["licenses"]] == ["active", "active"]


def test_return_frees_the_license_only_after_the_receipt(central: Central) -> None:
    ticket = setup_ticket(central)
    box, other = Box.new(), Box.new()
    activate(central, ticket, box)
    issued = central.return_licenses(ticket, box.request(T0 + 10), T0 + 10)
    assert [op["op"] for op in issued.operations] == ["remove"]
    assert central.get_ticket(ticket)["licenses"][0]["status"] == "returning"
    with pytest.raises(LicentiaError) as exc:
        central.activate(ticket, other.request(T0 + 11), T0 + 11)
    assert codes(exc) == ErrorCode.LICENSE_NOT_AVAILABLE
    central.confirm_receipt(box.apply(issued.update, T0 + 12), T0 + 12)
    assert box.items() == {}
    assert central.get_ticket(ticket)["licenses"][0]["status"] == "available"
    # rehost: the returned license goes to another container
    activate(central, ticket, other, T0 + 13)
    assert len(other.items()) == 1


def test_forged_receipt_flags_manipulation(central: Central) -> None:
    ticket = setup_ticket(central)
    box = Box.new()
    issued = central.activate(ticket, box.request(), T0)
    # a receipt for an update central never issued: the user applied a different file
    twin = Box(box.content)
    fake = updates.issue_update(
        updates.read_request(twin.request()), FIRM_CODE, central.firm.private_key, [updates.SetFirmText("x")], T0
    )
    receipt = twin.apply(fake)
    with pytest.raises(LicentiaError) as exc:
        central.confirm_receipt(receipt, T0)
    assert codes(exc) == ErrorCode.MANIPULATION_DETECTED
    container = central.get_container(box.serial)
    assert container["state"] == "manipulated"
    assert any(e["action"] == "container.manipulation" for e in central.audit(subject=box.serial))
    # refused until an operator reviews it
    with pytest.raises(LicentiaError) as exc:
        central.confirm_receipt(box.apply(issued.update), T0)
    assert codes(exc) == ErrorCode.MANIPULATION_DETECTED


def test_restored_backup_flags_manipulation_and_review_resyncs(central: Central) -> None:
    ticket = setup_ticket(central, count=2)
    lic1, lic2 = (lic["id"] for lic in central.get_ticket(ticket)["licenses"])
    box = Box.new()
    backup = box.content
    activate(central, ticket, box)
    box.content = backup  # the user restores the container from before the activation
    with pytest.raises(LicentiaError) as exc:
        central.sync(box.request(T0 + 5), T0 + 5)
    assert codes(exc) == ErrorCode.MANIPULATION_DETECTED
    central.review_container("ops", T0 + 6, box.serial, "customer restored a backup")
    issued = central.sync(box.request(T0 + 7), T0 + 7)
    assert issued.update == b"" and issued.operations == []  # nothing to do: no update, the counter stays
    assert central.get_container(box.serial)["state"] == "ok"
    assert {lic["status"] for lic in central.get_ticket(ticket)["licenses"]} == {"available"}
    assert lic1 and lic2


def test_blacklisted_container_is_locked_at_next_sync(central: Central) -> None:
    ticket = setup_ticket(central)
    box = Box.new()
    activate(central, ticket, box)
    central.blacklist("ops", T0 + 1, box.serial, "stolen")
    issued = central.sync(box.request(T0 + 2), T0 + 2)
    assert [op["op"] for op in issued.operations] == ["lock"]
    central.confirm_receipt(box.apply(issued.update, T0 + 2), T0 + 2)
    (item_id,) = box.items()
    assert box.verdict(item_id, T0 + 3).status == ItemStatus.LOCKED
    assert central.get_container(box.serial)["lock"] == "locked"
    actions = [e["action"] for e in central.audit(subject=box.serial)]
    assert "blacklist.add" in actions and "blacklist.hit" in actions


def test_activation_naming_a_blacklisted_container_locks_it(central: Central) -> None:
    ticket = setup_ticket(central, count=2)
    lic1, _ = (lic["id"] for lic in central.get_ticket(ticket)["licenses"])
    box = Box.new()
    activate_one = central.activate(ticket, box.request(), T0, licenses=[lic1])
    central.confirm_receipt(box.apply(activate_one.update), T0)
    central.blacklist("ops", T0 + 1, box.serial, "lost")
    issued = central.activate(ticket, box.request(T0 + 2), T0 + 2)
    assert [op["op"] for op in issued.operations] == ["lock"]
    box.apply(issued.update, T0 + 2)
    assert all(e.state.locked for e in box.items().values())
    # the second license was not given to the blacklisted container
    assert [lic["status"] for lic in central.get_ticket(ticket)["licenses"]] == ["active", "available"]


def test_checkpoint_lapses_offline_and_sync_renews_it(central: Central) -> None:
    ticket = setup_ticket(central, template={"checkpoint_period": 7 * DAY})
    box = Box.new()
    activate(central, ticket, box)
    (item_id,) = box.items()
    assert box.verdict(item_id, T0 + 6 * DAY).ok
    # renewed online before the checkpoint
    issued = central.sync(box.request(T0 + 6 * DAY), T0 + 6 * DAY)
    assert [op["op"] for op in issued.operations] == ["renew"]
    central.confirm_receipt(box.apply(issued.update, T0 + 6 * DAY), T0 + 6 * DAY)
    assert box.verdict(item_id, T0 + 12 * DAY).ok
    # offline past the checkpoint: it lapses
    verdict = box.verdict(item_id, T0 + 14 * DAY)
    assert verdict.error == ErrorCode.CHECKPOINT_LAPSED


def test_sync_carries_signed_time_that_heals_the_clock(central: Central) -> None:
    ticket = setup_ticket(central, template={"expires_at": T0 + 100 * DAY})
    box = Box.new()
    activate(central, ticket, box, T0 + 10 * DAY)
    box.content = box.content.with_clock(box.content.clock.observe(T0 + 10 * DAY).observe(T0))  # clock set back
    assert box.content.clock.manipulated
    issued = central.sync(box.request(T0 + 10 * DAY), T0 + 10 * DAY)
    assert issued.operations == [] and issued.update  # nothing to renew, but signed time to heal it
    box.apply(issued.update, T0 + 10 * DAY)
    assert not box.content.clock.manipulated
    assert box.content.clock.signed_at == T0 + 10 * DAY


def test_replacement_within_policy_revokes_at_next_contact(central: Central) -> None:
    policy = {"replace": {"allowed": True, "max_count": 1, "min_wait": 30 * DAY}}
    ticket = setup_ticket(central, policy=policy)
    lost, new = Box.new(), Box.new()
    activate(central, ticket, lost)
    result = central.request_replacement(ticket, lost.serial, T0 + DAY)
    assert [r["state"] for r in result["replacements"]] == ["approved"]
    activate(central, ticket, new, T0 + DAY)
    assert len(new.items()) == 1
    # the lost container turns up and syncs: its license is removed
    issued = central.sync(lost.request(T0 + 2 * DAY), T0 + 2 * DAY)
    assert [op["op"] for op in issued.operations] == ["remove"]
    central.confirm_receipt(lost.apply(issued.update, T0 + 2 * DAY), T0 + 2 * DAY)
    assert lost.items() == {}
    # a second replacement is beyond the policy (max 1): it waits for approval
    with pytest.raises(LicentiaError) as exc:
        central.request_replacement(ticket, new.serial, T0 + 40 * DAY)
    assert codes(exc) == ErrorCode.REPLACEMENT_PENDING
    (pending,) = central.list_replacements("pending")
    central.approve_replacement("ops", T0 + 41 * DAY, pending["id"])
    activate(central, ticket, Box.new(), T0 + 41 * DAY)


def test_replacement_waiting_period(central: Central) -> None:
    policy = {"replace": {"allowed": True, "max_count": None, "min_wait": 30 * DAY}}
    ticket = setup_ticket(central, policy=policy)
    a, b = Box.new(), Box.new()
    activate(central, ticket, a)
    central.request_replacement(ticket, a.serial, T0)
    activate(central, ticket, b)
    with pytest.raises(LicentiaError) as exc:
        central.request_replacement(ticket, b.serial, T0 + 10 * DAY)
    assert codes(exc) == ErrorCode.REPLACEMENT_PENDING
    assert "30 days" in exc.value.message or "s from now" in exc.value.message


def test_same_device_replacement_checks_properties_and_blacklists_old(central: Central) -> None:
    policy = {"same_device": {"allowed": True, "max_count": 2, "min_wait": 0, "match": ["hostname", "machine_id"]}}
    ticket = setup_ticket(central, policy=policy)
    old = Box.new(hostname="ws1", machine_id="abc")
    activate(central, ticket, old)
    elsewhere = Box.new(hostname="ws2", machine_id="abc")
    with pytest.raises(LicentiaError) as exc:
        central.request_replacement(ticket, old.serial, T0, same_device=True, request=elsewhere.request())
    assert codes(exc) == ErrorCode.REPLACEMENT_REFUSED and "hostname" in exc.value.message
    again = Box.new(hostname="ws1", machine_id="abc")
    central.request_replacement(ticket, old.serial, T0, same_device=True, request=again.request())
    activate(central, ticket, again)
    assert central.get_container(old.serial)["blacklisted"] == "replaced"


def test_single_user_one_machine_one_product(central: Central) -> None:
    customer = central.create_customer("sales", T0, "ACME", "Osaka", "single-user")
    ticket = setup_ticket(central, customer=customer["id"], count=1)
    central.create_product("ops", T0, 43, "Viewer", {})
    with pytest.raises(LicentiaError) as exc:
        central.create_order("sales", T0, [{"product_code": 43}], customer_id=customer["id"])
    assert codes(exc) == ErrorCode.LICENSE_TYPE_CONFLICT
    second = central.create_order("sales", T0, [{"product_code": 42}], customer_id=customer["id"])["ticket"]
    box = Box.new()
    activate(central, ticket, box)
    with pytest.raises(LicentiaError) as exc:
        central.activate(second, Box.new().request(), T0)
    assert codes(exc) == ErrorCode.LICENSE_TYPE_CONFLICT
    activate(central, second, box)
    # rehosting: once both tickets are returned, another machine may take them
    for t in (ticket, second):
        issued = central.return_licenses(t, box.request(), T0)
        central.confirm_receipt(box.apply(issued.update), T0)
    new_machine = Box.new()
    activate(central, ticket, new_machine)
    assert central.get_customer(customer["id"])["server_serial"] == new_machine.serial


def test_multi_user_host_names_are_checked(central: Central) -> None:
    for bad in ("サーバ", "lic_server", "-srv", "a b"):
        with pytest.raises(LicentiaError) as exc:
            central.create_customer("sales", T0, "ACME", "Kobe", "multi-user", bad, "10.0.0.5")
        assert codes(exc) == ErrorCode.HOST_NAME_INVALID
        assert "ASCII letters, digits and hyphens" in exc.value.message
    customer = central.create_customer("sales", T0, "ACME", "Kobe", "multi-user", "LicSrv-01", "10.0.0.5")
    assert customer["server_host"] == "licsrv-01"
    ticket = setup_ticket(central, customer=customer["id"])
    with pytest.raises(LicentiaError) as exc:
        central.activate(ticket, Box.new(hostname="laptop").request(), T0)
    assert codes(exc) == ErrorCode.LICENSE_TYPE_CONFLICT
    server = Box.new(hostname="licsrv-01")
    activate(central, ticket, server)


def test_automatic_activation_for_registered_server(central: Central) -> None:
    customer = central.create_customer("sales", T0, "ACME", "Kobe", "multi-user", "srv1", "10.0.0.5")
    server = Box.new(hostname="srv1")
    first = setup_ticket(central, customer=customer["id"])
    activate(central, first, server)
    later = central.create_order("sales", T0 + 100, [{"product_code": 42, "quantity": 10}], customer_id=customer["id"])
    issued = central.sync(server.request(T0 + 200), T0 + 200)
    assert issued.update == b"" and issued.operations == []  # not yet due, nothing to renew
    issued = central.sync(server.request(T0 + 100 + DAY), T0 + 100 + DAY)
    assert [op["op"] for op in issued.operations] == ["put"]
    central.confirm_receipt(server.apply(issued.update, T0 + 100 + DAY), T0 + 100 + DAY)
    assert central.get_ticket(later["ticket"])["licenses"][0]["status"] == "active"


def test_audit_log_is_append_only(central: Central) -> None:
    setup_ticket(central)
    assert central.audit()
    with pytest.raises(Exception, match="append-only"), central.db.transaction() as s:
        s.execute(text("UPDATE audit SET actor = 'someone else'"))
    with pytest.raises(Exception, match="append-only"), central.db.transaction() as s:
        s.execute(text("DELETE FROM audit"))


def test_wrong_firm_request_is_refused(central: Central) -> None:
    ticket = setup_ticket(central)
    with pytest.raises(LicentiaError) as exc:
        central.activate(ticket, Box.new().request(firm_code=FIRM_CODE + 1), T0)
    assert codes(exc) == ErrorCode.UPDATE_WRONG_FIRM
    other = make_firm()
    assert other.public_key != central.firm.public_key


def test_license_server_change_issues_a_new_customer_id_and_revokes_the_old(central: Central) -> None:
    customer = central.create_customer("sales", T0, "ACME", "Kobe", "multi-user", "srv1", "10.0.0.5")
    ticket = setup_ticket(central, customer=customer["id"], count=2)
    old_server = Box.new(hostname="srv1")
    activate(central, ticket, old_server)
    moved = central.change_server("ops", T0 + 10, customer["id"], "srv2", "10.0.0.6")
    new_id = moved["customer"]["id"]
    assert new_id != customer["id"] and moved["customer"]["server_host"] == "srv2"
    assert central.get_customer(customer["id"])["state"] == "retired"
    with pytest.raises(LicentiaError) as exc:
        central.get_ticket(ticket)
    assert codes(exc) == ErrorCode.TICKET_NOT_FOUND and "invalidated" in exc.value.message
    (fresh,) = moved["tickets"]
    assert len(central.get_ticket(fresh)["licenses"]) == 2
    # the new server activates the new ticket; the old one loses its items at its next sync
    activate(central, fresh, Box.new(hostname="srv2"), T0 + 20)
    issued = central.sync(old_server.request(T0 + 30), T0 + 30)
    assert [op["op"] for op in issued.operations] == ["remove", "remove"]
    central.confirm_receipt(old_server.apply(issued.update, T0 + 30), T0 + 30)
    assert old_server.items() == {}
    actions = [e["action"] for e in central.audit()]
    assert {"customer.server-change", "ticket.invalidate"} <= set(actions)
    with pytest.raises(LicentiaError) as exc:
        central.create_order("sales", T0, [{"product_code": 42}], customer_id=customer["id"])
    assert codes(exc) == ErrorCode.LICENSE_TYPE_CONFLICT and new_id in exc.value.message


def test_license_type_change_reissues(central: Central) -> None:
    customer = central.create_customer("sales", T0, "ACME", "Nagoya", "single-user")
    ticket = setup_ticket(central, customer=customer["id"])
    machine = Box.new()
    pending = central.activate(ticket, machine.request(), T0)  # issued, not yet applied
    changed = central.change_license_type("ops", T0 + 5, customer["id"], "multi-user", "srv9", "10.1.1.1")
    assert changed["customer"]["license_type"] == "multi-user"
    (fresh,) = changed["tickets"]
    # the old update is applied late: its item is revoked at the next contact
    central.confirm_receipt(machine.apply(pending.update, T0 + 6), T0 + 6)
    issued = central.sync(machine.request(T0 + 7), T0 + 7)
    assert [op["op"] for op in issued.operations] == ["remove"]
    central.confirm_receipt(machine.apply(issued.update, T0 + 7), T0 + 7)
    activate(central, fresh, Box.new(hostname="srv9"), T0 + 8)
    with pytest.raises(LicentiaError) as exc:
        central.change_license_type("ops", T0 + 9, changed["customer"]["id"], "multi-user", "x", "10.0.0.1")
    assert codes(exc) == ErrorCode.INVALID_PARAMETER


def test_two_first_starts_at_once_migrate_once(db_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from licentia.central.db import Database

    dbs = [Database(db_url) for _ in range(2)]
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda db: db.migrate(), dbs))
        with dbs[0].transaction() as s:
            assert s.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0003"
    finally:
        for db in dbs:
            db.dispose()
