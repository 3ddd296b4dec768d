"""Stable error codes and the one exception type every layer raises.

Codes follow CodeMeter's numbering where a refusal has a CodeMeter twin, so an
administrator who knows "35" or "212" reads licentia's answers the same way.
Codes of 1000 and above are licentia's own. A code, once published, never changes
meaning; add new ones instead.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    # item options (1-99, CodeMeter "box" range)
    FEATURE_MAP_INCOMPATIBLE = 30
    UNITS_USED_UP = 32
    UNIT_COUNTER_UNDERRUN = 33
    EXPIRED = 35
    NOT_YET_ACTIVE = 37
    SIGNED_TIME_OBSOLETE = 39
    UPDATE_COUNTER_WRONG = 48
    CONTAINER_DISABLED = 52
    ITEM_DISABLED = 54
    USAGE_PERIOD_OVER = 71
    LOCKED = 73
    MAINTENANCE_MISSING = 76
    MAINTENANCE_NOT_STARTED = 77
    MAINTENANCE_OVER = 78
    CLOCK_MANIPULATED = 88

    # management (100-130)
    NETWORK_FAULT = 100
    SERVER_NOT_FOUND = 101
    INVALID_PARAMETER = 105
    INVALID_HANDLE = 106
    SECURITY_PROBLEM = 109
    NO_LOCAL_RUNTIME = 110
    REDUNDANCY_SERVER_MISSING = 130  # a TMR item with fewer than two of its three constituents

    # command execution (200-239)
    ENTRY_NOT_FOUND = 200
    CONTAINER_NOT_FOUND = 201
    NO_MORE_LICENSES = 212
    EXCLUSIVE_CONFLICT = 213
    WRONG_CONTENT = 215
    REQUEST_WRITE_FAILED = 219
    UPDATE_READ_FAILED = 220
    WRONG_ACCESS_MODE = 223
    INVALID_LICENSE_PARAMETER = 225
    UPDATE_TOO_NEW = 228
    UPDATE_TOO_OLD = 229
    ACCESS_DENIED = 231
    UPDATE_FAILED = 233
    REMOTE_ACCESS_DENIED = 239

    INTERNAL = 254

    # soft containers (260-274)
    REACTIVATION_REQUIRED = 263
    LICENSE_INVALID = 264
    ALREADY_EXISTS = 266
    BINDING_NOT_POSSIBLE = 268
    VM_NOT_ALLOWED = 273

    # licentia's own (1000+)
    VERSION_NOT_PERMITTED = 1001
    WRONG_PASSPHRASE = 1002
    KEYSTORE_NOT_FOUND = 1003
    UPDATE_WRONG_CONTAINER = 1004
    UPDATE_WRONG_FIRM = 1005
    LOCAL_ONLY = 1006
    TERMINAL_SESSION_DENIED = 1007
    PROTOCOL_ERROR = 1008
    FRAME_TOO_LARGE = 1009
    CHECKPOINT_LAPSED = 1010
    NOT_ENOUGH_UNITS = 1011
    USAGE_LOG_ALTERED = 1012

    # certificate vault and PKCS#11 tokens (1100-1199)
    PIN_INCORRECT = 1100
    PIN_LOCKED = 1101
    PIN_CHANGE_REQUIRED = 1102
    VAULT_SLOTS_FULL = 1103
    TOKEN_NOT_FOUND = 1104
    PKCS11_MODULE_NOT_FOUND = 1105
    TOKEN_OBJECT_NOT_FOUND = 1106
    VAULT_NOT_INITIALIZED = 1107
    VAULT_PACKAGE_INVALID = 1108
    VAULT_PACKAGE_WRONG_TOKEN = 1109
    CSR_INVALID = 1110
    CERTIFICATE_INVALID = 1111
    PIN_INVALID = 1112
    MECHANISM_NOT_SUPPORTED = 1113
    TOKEN_FAILURE = 1114
    TOKEN_OBJECT_EXISTS = 1115
    CA_NOT_TRUSTED = 1116
    TOKEN_REMOVED = 1117
    TOKEN_TAKEN_AWAY = 1118
    TOKEN_LOCKED_OUT = 1119

    # back office: central, activation, replacement, blacklist, cloud (1200-1299)
    UNAUTHORIZED = 1200
    FORBIDDEN = 1201
    TICKET_INVALID = 1202
    TICKET_NOT_FOUND = 1203
    HOST_NAME_INVALID = 1204
    MANIPULATION_DETECTED = 1205
    REPLACEMENT_REFUSED = 1206
    REPLACEMENT_PENDING = 1207
    LICENSE_TYPE_CONFLICT = 1208
    LICENSE_NOT_AVAILABLE = 1209
    CREDENTIAL_INVALID = 1210
    BLACKLIST_INVALID = 1211
    CENTRAL_ERROR = 1212
    CONTAINER_BLACKLISTED = 1213

    # network server administration: access lists, directory (1300-1399)
    ACCESS_LIST_DENIED = 1300

    # the runtime's limits on connections and requests (1400-1409)
    SERVER_BUSY = 1400
    TOO_MANY_HANDLES = 1401
    CONNECTION_TIMEOUT = 1402

    # who a client is: identities, ownership of seats (1410-1419)
    IDENTITY_REFUSED = 1410
    # the runtime's life and flows (1420-1429)
    PORT_IN_USE = 1420
    LISTEN_FAILED = 1421
    # borrowing a network server's seat into a client machine's container (1440-1449)
    BORROW_NOT_ALLOWED = 1440  # the item may not be borrowed (no borrow maximum, units, a token)
    BORROW_TMR = 1441  # a TMR item is never borrowed
    BORROW_TOO_LONG = 1442  # longer than the item's borrow maximum or the administrator's cap
    BORROW_INVALID = 1443  # a borrow request, certificate or return file that does not verify
    BORROW_NOT_FOUND = 1444  # no such borrow (here, or on the server)
    BORROW_ENDED = 1445  # the borrow has ended (returned or expired)
    BORROW_NO_CONTAINER = 1446  # the client machine has no soft container to take the seat

    # the TMR system: upstreams and front ends (1450-1459)
    TMR_FRONT_END_ONLY = 1450  # a TMR upstream answers its constituents to authenticated front ends only

    # TMR group updates: the three constituents of a TMR license together (1460-1469)
    TMR_GROUP_INVALID = 1460
    TMR_GROUP_NO_PART = 1461
    TMR_GROUP_INCOMPLETE = 1462

    # TMR products in central (1475-1479)
    TMR_PRODUCT_NEEDS_GROUP = 1475  # a single container's request for a TMR product's license
    TMR_GROUP_NOT_TMR = 1476  # a group request for licenses of an ordinary product
    TMR_GROUP_NOT_ISSUED = 1477  # a group receipt that answers no group update central issued


# What a user should do next, per code. Kept short: a line on a terminal.
_HINTS: dict[ErrorCode, str] = {
    ErrorCode.TMR_FRONT_END_ONLY: "a TMR upstream serves its front ends only; ask a front end (`licentia tmr serve`) instead, or give the front end a client certificate from the upstream's [tmr] front_end_ca",
    ErrorCode.SERVER_BUSY: "the runtime serves as many connections as its limits allow ([limits] in runtime.toml); "
                           "try again later, or ask its administrator to raise them",
    ErrorCode.TOO_MANY_HANDLES: "name fewer handles in one keep-alive ([limits] max_keepalive_handles), or none: "
                                "a keep-alive keeps alive everything its connection holds",
    ErrorCode.CONNECTION_TIMEOUT: "say hello at once after connecting, and send a request or a keep-alive before "
                                  "the idle timeout ([limits] in runtime.toml); the SDK does both",
    ErrorCode.UNAUTHORIZED: "send a valid API token (Authorization: Bearer …); the first one is in the central home's admin.token",
    ErrorCode.FORBIDDEN: "this API token's role does not allow that; ask an administrator for an operator or admin token",
    ErrorCode.TICKET_INVALID: "check the ticket as printed on your order (five groups of five characters)",
    ErrorCode.TICKET_NOT_FOUND: "check the ticket as printed on your order, or ask the vendor",
    ErrorCode.HOST_NAME_INVALID: "use a host name of ASCII letters, digits and hyphens (dots between the parts of a fully qualified name)",
    ErrorCode.MANIPULATION_DETECTED: "the container's update history does not match the vendor's records; contact the vendor, who reviews it",
    ErrorCode.REPLACEMENT_REFUSED: "the product's replacement policy does not allow this; contact the vendor",
    ErrorCode.REPLACEMENT_PENDING: "the replacement is beyond the product's policy and waits for the vendor's approval; try again once approved",
    ErrorCode.LICENSE_TYPE_CONFLICT: "the customer's license type does not allow this; the vendor can change the license type or license server",
    ErrorCode.LICENSE_NOT_AVAILABLE: "every license of this ticket is in use; return one first or ask the vendor",
    ErrorCode.CREDENTIAL_INVALID: "the credential file was replaced or revoked; download a new one from the portal",
    ErrorCode.BLACKLIST_INVALID: "the blacklist file is damaged or not signed by this firm; take it from the vendor's release",
    ErrorCode.PORT_IN_USE: "stop the other program, or give the runtime another port (`--local-port`, `--network-port`, `--http-port` or runtime.toml; -1 turns the local TCP and HTTP ports off)",
    ErrorCode.LISTEN_FAILED: "check the address and port in runtime.toml or the flags: an address of this machine, a port below 1024 only as root",
    ErrorCode.TMR_GROUP_INVALID: "make the group from the three constituent containers' own request files, one per container, all for the same firm",
    ErrorCode.TMR_GROUP_NO_PART: "apply the group update on each of the three upstreams: each applies the part for the container it holds",
    ErrorCode.TMR_GROUP_INCOMPLETE: "apply the group update on every upstream named above and combine the three new receipts again",
    ErrorCode.TMR_PRODUCT_NEEDS_GROUP: "a TMR license goes into three constituent containers at once: send a group request (`licentia update group-request A B C`)",
    ErrorCode.TMR_GROUP_NOT_TMR: "a group request is for TMR products only: activate an ordinary license with one container's own request",
    ErrorCode.TMR_GROUP_NOT_ISSUED: "send the group receipt of the group update this central issued (combine the receipts the three upstreams wrote when they applied it)",
    ErrorCode.ACCESS_LIST_DENIED: "the server's access list keeps this seat from you; ask its administrator (`licentia acl check` shows which rule decides)",
    ErrorCode.IDENTITY_REFUSED: "the runtime does not accept who this client says it is; connect as yourself (a program states its own process, an administrator uses the runtime's token)",
    ErrorCode.CENTRAL_ERROR: "the back office could not answer; try again later or contact the vendor",
    ErrorCode.CONTAINER_BLACKLISTED: "the vendor listed this container as lost or stolen; contact the vendor",
    ErrorCode.FEATURE_MAP_INCOMPATIBLE: "the license does not include this feature; ask the vendor for an upgrade",
    ErrorCode.UNITS_USED_UP: "all units are spent; buy more units from the vendor",
    ErrorCode.NOT_ENOUGH_UNITS: "fewer units remain than requested; buy more units from the vendor",
    ErrorCode.USAGE_LOG_ALTERED: "compare the log with a backup; every entry from the first problem on is suspect",
    ErrorCode.EXPIRED: "the license has expired; ask the vendor for a renewal",
    ErrorCode.NOT_YET_ACTIVE: "the license starts later; wait for its activation time",
    ErrorCode.USAGE_PERIOD_OVER: "the usage period has ended; ask the vendor for a renewal",
    ErrorCode.ITEM_DISABLED: "the vendor has disabled this license",
    ErrorCode.LOCKED: "the license is locked (container reported lost or stolen); contact the vendor",
    ErrorCode.MAINTENANCE_MISSING: "this version needs a maintenance period the license does not have",
    ErrorCode.MAINTENANCE_NOT_STARTED: "this version was released before the maintenance period starts",
    ErrorCode.MAINTENANCE_OVER: "this version was released after the maintenance period ended; renew maintenance",
    ErrorCode.VERSION_NOT_PERMITTED: "the license does not cover this program version",
    ErrorCode.CLOCK_MANIPULATED: "the system clock is earlier than the time the container has seen; correct the clock, then sync with the vendor to heal the container",
    ErrorCode.UPDATE_COUNTER_WRONG: "updates must be applied in order; request a fresh update from the vendor",
    ErrorCode.UPDATE_TOO_OLD: "this update was already applied (or is older than the container); nothing changed",
    ErrorCode.UPDATE_TOO_NEW: "an earlier update is missing; apply it first or request a fresh update",
    ErrorCode.UPDATE_WRONG_CONTAINER: "this update was made for another container",
    ErrorCode.UPDATE_WRONG_FIRM: "this update is not signed by the firm the container trusts",
    ErrorCode.LICENSE_INVALID: "the file is damaged or was altered; restore it from a backup or ask the vendor for a replacement",
    ErrorCode.REACTIVATION_REQUIRED: "the container no longer matches this machine; return it to its machine or ask the vendor for a replacement",
    ErrorCode.VM_NOT_ALLOWED: "the vendor does not allow this license in a virtual machine; use it on physical hardware",
    ErrorCode.ENTRY_NOT_FOUND: "no license for this firm and product code was found",
    ErrorCode.CONTAINER_NOT_FOUND: "no container with that serial is known here; check `licentia container list`",
    ErrorCode.NO_MORE_LICENSES: "all licenses are in use; try again later or ask the administrator to free a seat",
    ErrorCode.EXCLUSIVE_CONFLICT: "the license is in use on this station in a way that excludes this request (an exclusive holder, or other uses when exclusive access is asked); wait until it is released",
    ErrorCode.WRONG_PASSPHRASE: "the passphrase does not open the keystore",
    ErrorCode.KEYSTORE_NOT_FOUND: "create one with `licentia vendor init`",
    ErrorCode.LOCAL_ONLY: "this license is for the machine that holds it; it cannot be used over the network",
    ErrorCode.TERMINAL_SESSION_DENIED: "this single-user license cannot be used from a terminal-server session",
    ErrorCode.SERVER_NOT_FOUND: "no license server answered; check `licentia server list` and the network",
    ErrorCode.REDUNDANCY_SERVER_MISSING: "fewer than two of the three TMR members answer; bring one back (see docs/tmr.md) and try again",
    ErrorCode.NO_LOCAL_RUNTIME: "start the runtime with `licentia runtime serve` (or `make run`)",
    ErrorCode.SECURITY_PROBLEM: "an answer failed verification; the runtime or server may have been replaced",
    ErrorCode.CHECKPOINT_LAPSED: "the checkpoint license was not renewed in time; connect to the vendor to renew it",
    ErrorCode.INVALID_HANDLE: "the license handle is not (or no longer) valid; access the license again",
    ErrorCode.PIN_INCORRECT: "check the PIN and try once more; tokens lock after a few wrong PINs",
    ErrorCode.PIN_LOCKED: "the user PIN is locked; the security officer must unlock it (e.g. `pkcs11-tool --init-pin --login --login-type so`)",
    ErrorCode.PIN_CHANGE_REQUIRED: "change the PIN first with `licentia vault change-pin`",
    ErrorCode.VAULT_SLOTS_FULL: "all certificate slots are in use; delete one with `licentia vault delete LABEL`",
    ErrorCode.TOKEN_NOT_FOUND: "check `licentia vault tokens` for the labels and slots this module offers",
    ErrorCode.PKCS11_MODULE_NOT_FOUND: "name the PKCS#11 module with --module PATH or $LICENTIA_PKCS11_MODULE (e.g. install softhsm2)",
    ErrorCode.TOKEN_OBJECT_NOT_FOUND: "check `licentia vault list` for the labels on this token",
    ErrorCode.VAULT_NOT_INITIALIZED: "prepare the token once with `licentia vault init`",
    ErrorCode.VAULT_PACKAGE_INVALID: "the package is damaged, altered, or not signed by a trusted CA; ask the CA for a new one",
    ErrorCode.VAULT_PACKAGE_WRONG_TOKEN: "this package was made for another token; send the CA a request made on this token",
    ErrorCode.CSR_INVALID: "the signing request is damaged or its self-signature does not verify; make a new one",
    ErrorCode.CERTIFICATE_INVALID: "the certificate could not be read or does not fit; check the file",
    ErrorCode.PIN_INVALID: "choose a PIN the token accepts (usually 4 or more characters) that differs from the old one",
    ErrorCode.MECHANISM_NOT_SUPPORTED: "this token cannot do that operation; use another key type or token",
    ErrorCode.TOKEN_FAILURE: "the token refused the operation; check that it is present and not write-protected",
    ErrorCode.TOKEN_OBJECT_EXISTS: "choose another label or delete the old entry with `licentia vault delete LABEL`",
    ErrorCode.CA_NOT_TRUSTED: "name the issuing CA certificate with --ca FILE or import it with `licentia vault import --ca`",
    ErrorCode.TOKEN_REMOVED: "the token was pulled or its slot is gone; plug it in again and open the container anew",
    ErrorCode.TOKEN_TAKEN_AWAY: "another runtime claimed this token; one token serves one runtime at a time (claim it again there to take it back)",
    ErrorCode.BORROW_NOT_ALLOWED: "the vendor did not allow borrowing this item (no borrow maximum), or it cannot be borrowed; use it over the network",
    ErrorCode.BORROW_TMR: "items of a TMR server are never borrowed; use the license over the network",
    ErrorCode.BORROW_TOO_LONG: "ask for a shorter time (`--for`); the message names the longest allowed",
    ErrorCode.BORROW_INVALID: "the file is damaged, altered or meant for another container; make a new request",
    ErrorCode.BORROW_NOT_FOUND: "list the borrows with `licentia borrow list`",
    ErrorCode.BORROW_ENDED: "the borrowed seat is back on its server; borrow it again or use it over the network",
    ErrorCode.BORROW_NO_CONTAINER: "this machine needs a soft container to hold a borrowed seat: create one with `licentia container create`",
    ErrorCode.TOKEN_LOCKED_OUT: "the token changed hands too often in a short time (as when it hops between virtual machines); wait for the lockout to end",
}


class LicentiaError(Exception):
    """A refusal with a stable code, a message naming what happened, and what to do."""

    def __init__(self, code: ErrorCode, message: str, hint: str | None = None) -> None:
        self.code = ErrorCode(code)
        self.message = message
        self.hint = hint if hint is not None else _HINTS.get(self.code, "")
        super().__init__(f"[{int(self.code)} {self.code.name}] {message}")

    def __str__(self) -> str:
        base = f"error {int(self.code)} ({self.code.name.lower().replace('_', ' ')}): {self.message}"
        return f"{base} — {self.hint}" if self.hint else base


def hint_for(code: ErrorCode) -> str:
    return _HINTS.get(code, "")
