"""The containers of one licentia home, opened against this machine's fingerprint.

Soft containers are files in the home's containers directory. Token containers live in
PKCS#11 tokens; the store finds them through the configured module (the store's
`token_module`, else $LICENTIA_PKCS11_MODULE, else the module recorded when a token
container was created here) and remembers the ones made here in `tokens.json` beside
the soft containers: serial, token label and serial, and the file holding the PIN.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from licentia.containers.soft import SoftContainer, container_path, list_paths, read_header
from licentia.core.claims import ClaimState
from licentia.core.content import ContainerContent
from licentia.core.evaluate import status_of
from licentia.crypto import key_id
from licentia.fsutil import atomic_write
from licentia.model import (
    ContainerKind,
    ContainerSerial,
    ContainerStatus,
    ErrorCode,
    Fingerprint,
    LicentiaError,
    Tolerance,
)

if TYPE_CHECKING:
    # Imported when first used: loading a PKCS#11 library costs time soft containers need not pay.
    from licentia.containers.pkcs11 import TokenInfo
    from licentia.containers.token import FoundToken, TokenContainer


@dataclass(frozen=True)
class Inspection:
    """A container as seen from here, whatever state it is in."""

    serial: str
    kind: str
    path: Path
    status: ContainerStatus
    detail: str  # binding health, or what is wrong
    container: SoftContainer | None = None
    content: ContainerContent | None = None
    error: LicentiaError | None = None


@dataclass(frozen=True)
class TokenInspection:
    """A token container as seen from here: present or not, opened or why not."""

    serial: str
    kind: str
    status: str  # ok, clock manipulated, invalid, absent, locked out, PIN needed, PIN refused, ...
    detail: str  # the token (label, slot) and who holds it, or what is wrong
    token_label: str = ""
    slot: int | None = None
    content: ContainerContent | None = None
    claims: ClaimState | None = None
    error: LicentiaError | None = None


TOKENS_FILE = "tokens.json"


class ContainerStore:
    def __init__(
        self,
        directory: Path,
        fingerprint: Fingerprint,
        *,
        token_module: str | None = None,
        token_pin: str | None = None,
    ) -> None:
        self.directory = directory
        self.fingerprint = fingerprint
        self.token_module = token_module
        self.token_pin = token_pin

    def create_soft(self, tolerance: Tolerance, now: int) -> SoftContainer:
        """A new soft container bound to this store's machine, at the shipped binding cost."""
        return SoftContainer.create(self.directory, self.fingerprint, tolerance, now)

    def path_of(self, serial: ContainerSerial) -> Path:
        return container_path(self.directory, serial)

    def open(self, serial: ContainerSerial, now: int | None = None) -> SoftContainer:
        path = self.path_of(serial)
        if not path.exists():
            raise LicentiaError(ErrorCode.CONTAINER_NOT_FOUND, f"no container {serial} in {self.directory}")
        return SoftContainer.open(path, self.fingerprint, now)

    def inspect_all(self, now: int) -> list[Inspection]:
        return [self.inspect(p, now) for p in list_paths(self.directory)]

    def inspect(self, path: Path, now: int) -> Inspection:
        name = path.name.removesuffix(".lcsc")
        try:
            header = read_header(path)
        except LicentiaError as exc:
            return Inspection(name, "soft", path, ContainerStatus.INVALID, exc.message, error=exc)
        try:
            container = SoftContainer.open(path, self.fingerprint, now)
            content = container.observe_clock(now)
        except LicentiaError as exc:
            status = (
                ContainerStatus.BROKEN if exc.code is ErrorCode.REACTIVATION_REQUIRED else ContainerStatus.INVALID
            )
            return Inspection(str(header.serial), "soft", path, status, exc.message, error=exc)
        return Inspection(
            str(header.serial), "soft", path, container.status(content), container.health.describe(),
            container, content,
        )


    # -- token containers ---------------------------------------------------------------

    @property
    def tokens_file(self) -> Path:
        return self.directory / TOKENS_FILE

    def token_registry(self) -> dict[str, Any]:
        """What `tokens.json` records: {"module": path, "containers": {serial: entry}}."""
        try:
            data = json.loads(self.tokens_file.read_text())
        except FileNotFoundError:
            return {"module": None, "containers": {}}
        except (OSError, ValueError) as exc:
            raise LicentiaError(
                ErrorCode.INVALID_PARAMETER, f"cannot read {self.tokens_file}: {exc}"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("containers", {}), dict):
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"{self.tokens_file} is malformed")
        data.setdefault("module", None)
        data.setdefault("containers", {})
        return data

    def configured_module(self) -> str | None:
        """The PKCS#11 module token containers are looked for in, if one is configured."""
        return (
            self.token_module
            or os.environ.get("LICENTIA_PKCS11_MODULE")
            or self.token_registry().get("module")
            or None
        )

    def create_token(
        self,
        *,
        module: str | None = None,
        label: str | None = None,
        slot: int | None = None,
        pin: str,
        now: int,
        pin_file: Path | None = None,
    ) -> TokenContainer:
        """Make a token into a container and record it in this home."""
        from licentia.containers.pkcs11 import find_module
        from licentia.containers.token import TokenContainer

        module_path = str(find_module(module or self.configured_module()))
        container = TokenContainer.create(
            module_path, label=label, slot=slot, pin=pin, now=now, lock_dir=self.lock_dir()
        )
        registry = self.token_registry()
        registry["module"] = module_path
        registry["containers"][str(container.serial)] = {
            "token_label": container.token.label,
            "token_serial": container.token.serial,
            "pin_file": None if pin_file is None else str(Path(pin_file).resolve()),
        }
        self._save_registry(registry)
        return container

    def lock_dir(self) -> Path:
        """Where token lock files go for this home (see `licentia.containers.token.default_lock_dir`)."""
        from licentia.containers.token import default_lock_dir

        return default_lock_dir(self.directory.parent)

    def _save_registry(self, registry: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write(self.tokens_file, json.dumps(registry, indent=2).encode() + b"\n", mode=0o644)

    def _pin_for(self, serial: str, explicit: str | None) -> str | None:
        """The PIN for token container `serial`: `explicit`, else the store's `token_pin`
        (what the user gave: --pin-file, $LICENTIA_PIN_FILE or $LICENTIA_PIN), else the PIN
        file recorded at creation. What the user gives now wins over what was recorded, so a
        changed PIN is never sent in its old form (each wrong try counts on a real card)."""
        if explicit is not None:
            return explicit
        if self.token_pin is not None:
            return self.token_pin
        entry = self.token_registry()["containers"].get(serial) or {}
        pin_file = entry.get("pin_file")
        if pin_file:
            try:
                return Path(pin_file).read_text().rstrip("\r\n")
            except OSError as exc:
                raise LicentiaError(
                    ErrorCode.INVALID_PARAMETER,
                    f"cannot read the PIN file {pin_file} of token container {serial}: {exc.strerror}",
                ) from None
        return None

    def _require_module(self) -> str:
        module = self.configured_module()
        if not module:
            raise LicentiaError(
                ErrorCode.PKCS11_MODULE_NOT_FOUND,
                "no PKCS#11 module is configured for token containers",
                hint="set $LICENTIA_PKCS11_MODULE or create a token container here with "
                "`licentia container create --token --module PATH`",
            )
        return module

    def _locate_token(self, serial: ContainerSerial) -> TokenInfo | None:
        """The token holding `serial`, found through its public description (no PIN tried)."""
        from licentia.containers.token import find_containers

        for found in find_containers(self._require_module()):
            if found.description is not None and found.description.serial == serial:
                return found.token
        return None

    def open_token(
        self,
        serial: ContainerSerial,
        *,
        pin: str | None = None,
        now: int | None = None,
    ) -> TokenContainer:
        """Open the token container `serial`, wherever its token sits in the module's slots."""
        from licentia.containers.token import TokenContainer

        info = self._locate_token(serial)
        if info is None:
            entry = self.token_registry()["containers"].get(str(serial))
            where = f" (token '{entry['token_label']}' is not plugged in)" if entry else ""
            raise LicentiaError(
                ErrorCode.CONTAINER_NOT_FOUND, f"token container {serial} is not present{where}"
            )
        chosen = self._pin_for(str(serial), pin)
        if chosen is None:
            raise LicentiaError(
                ErrorCode.INVALID_PARAMETER,
                f"no PIN for token '{info.label}' holding container {serial}",
                hint="give --pin-file FILE, or set $LICENTIA_PIN_FILE or $LICENTIA_PIN",
            )
        return TokenContainer.open(
            self._require_module(), slot=info.slot_id, pin=chosen, serial=serial, lock_dir=self.lock_dir()
        )

    def open_any(
        self, serial: ContainerSerial, now: int | None = None, *, pin: str | None = None
    ) -> SoftContainer | TokenContainer:
        """A soft container from this home's directory, or a token container from its token."""
        if serial.kind is ContainerKind.TOKEN:
            return self.open_token(serial, pin=pin, now=now)
        return self.open(serial, now)

    def inspect_tokens(self, now: int) -> list[TokenInspection]:
        """Every token container of the configured module, and the recorded ones missing.

        Only tokens that carry a container description are logged in to, and not when
        the token reports its PIN locked or on its final try (so a listing never locks a
        PIN); a token that only reports wrong PINs entered (COUNT_LOW) is tried once.
        """
        module = self.configured_module()
        if not module:
            return []
        from licentia.containers.token import find_containers

        registry = self.token_registry()["containers"]
        rows: list[TokenInspection] = []
        try:
            found_all = find_containers(module)
        except LicentiaError as exc:
            return [TokenInspection("-", "token", "unavailable", exc.message, error=exc)]
        seen: set[str] = set()
        for found in found_all:
            if found.description is None:
                if found.problem is not None:
                    rows.append(
                        TokenInspection(
                            "-", "token", "invalid", f"token '{found.token.label}': {found.problem.message}",
                            found.token.label, found.token.slot_id, error=found.problem,
                        )
                    )
                continue
            serial = str(found.description.serial)
            seen.add(serial)
            rows.append(self._inspect_found(found, now))
        for serial, entry in sorted(registry.items()):
            if serial not in seen:
                rows.append(
                    TokenInspection(
                        serial, "token", "absent",
                        f"token '{entry.get('token_label', '?')}' is not plugged in",
                        str(entry.get("token_label", "")),
                    )
                )
        return rows

    def inspect_token(self, serial: ContainerSerial, now: int) -> TokenInspection:
        """One token container; only its own token is logged in to."""
        from licentia.containers.token import find_containers

        for found in find_containers(self._require_module()):
            if found.description is not None and found.description.serial == serial:
                return self._inspect_found(found, now, careful=self.token_pin is None)
        entry = self.token_registry()["containers"].get(str(serial))
        if entry is not None:
            return TokenInspection(
                str(serial), "token", "absent",
                f"token '{entry.get('token_label', '?')}' is not plugged in",
                str(entry.get("token_label", "")),
            )
        raise LicentiaError(ErrorCode.CONTAINER_NOT_FOUND, f"token container {serial} is not present")

    def _inspect_found(self, found: FoundToken, now: int, *, careful: bool = True) -> TokenInspection:
        """One found token container, opened with its PIN unless the token says not to try:
        never when its PIN is locked; on its final try only when not `careful` (a PIN the
        user gave for this one container)."""
        from licentia.containers.pkcs11 import count_low_note, unattended_refusal
        from licentia.containers.token import TokenContainer
        from licentia.core.claims import lockout_remaining

        assert found.description is not None
        info = found.token
        serial = str(found.description.serial)
        where = f"token '{info.label}' slot {info.slot_id}"

        def row(status: str, detail: str, **kw: Any) -> TokenInspection:
            return TokenInspection(serial, "token", status, detail, info.label, info.slot_id, **kw)

        refusal = unattended_refusal(info)
        if refusal is not None and (careful or refusal.code is ErrorCode.PIN_LOCKED):
            status = "PIN locked" if refusal.code is ErrorCode.PIN_LOCKED else "PIN not tried"
            return row(status, f"{where}: {refusal.message}", error=refusal)
        try:
            pin = self._pin_for(serial, None)
        except LicentiaError as exc:
            return row("PIN needed", f"{where}: {exc.message}", error=exc)
        if pin is None:
            return row("PIN needed", f"{where}: set $LICENTIA_PIN_FILE or $LICENTIA_PIN to read it")
        try:
            with TokenContainer.open(
                self._require_module(), slot=info.slot_id, pin=pin, lock_dir=self.lock_dir()
            ) as c:
                content = c.read()
                claims = c.claim_state(now)
        except LicentiaError as exc:
            status = {
                ErrorCode.PIN_INCORRECT: "PIN refused",
                ErrorCode.PIN_LOCKED: "PIN locked",
                ErrorCode.TOKEN_REMOVED: "absent",
            }.get(exc.code, "invalid")
            return row(status, f"{where}: {exc.message}", error=exc)
        if claims.locked(now):
            status = "locked out"
            holder = f"locked out for {lockout_remaining(claims, now)} s more"
        else:
            status = ContainerStatus.CLOCK_MANIPULATED.value if content.clock.manipulated else "ok"
            holder = (
                f"held by runtime {claims.holder.runtime_id}" if claims.holder else "not claimed"
            )
        note = count_low_note(info)
        return row(status, f"{where}; {holder}" + (f"; warning: {note}" if note else ""),
                   content=content, claims=claims)


def item_rows(content: ContainerContent, now: int) -> list[dict[str, Any]]:
    """Every item with its options and status, as plain data for display and the JSON API."""
    rows: list[dict[str, Any]] = []
    for firm_code, entry in content.entries():
        verdict = status_of(entry.item, entry.state, content.clock, now)
        item = entry.item
        rows.append(
            {
                "firm_code": firm_code,
                "firm_key": key_id(content.firms[firm_code].firm_public_key),
                "item_id": entry.item_id,
                "product_code": item.product_code,
                "status": verdict.status.value,
                "error": None if verdict.error is None else int(verdict.error),
                "reason": verdict.reason,
                "valid_until": verdict.valid_until,
                "quantity": "unlimited" if item.quantity is None else item.quantity,
                "feature_map": item.feature_map,
                "expires_at": item.expires_at,
                "activates_at": item.activates_at,
                "usage_period": item.usage_period,
                "usage_started_at": entry.state.usage_started_at,
                "units": item.units,
                "units_remaining": entry.state.units_remaining,
                "maintenance_from": item.maintenance_from,
                "maintenance_until": item.maintenance_until,
                "versions": None if item.versions is None else str(item.versions),
                "text": entry.state.text if entry.state.text is not None else item.text,
                "user_data": entry.state.user_data if entry.state.user_data is not None else item.user_data,
                "protected_data": item.protected_data,
                "hidden_data": "<sealed>" if item.hidden_data else "",
                "tmr_id": item.tmr_id,
                "tmr_constituents": [serial for serial, _ in item.tmr_constituents],
                "borrow_max": item.borrow_max,
                "checkpoint_period": item.checkpoint_period,
                "vm_allowed": item.vm_allowed,
                "locked": entry.state.locked,
            }
        )
    return rows
