"""What a machine looks like to licentia: fingerprint properties and its environment.

`licentia.binding` reads these off a machine; `licentia.crypto` binds a secret to
them; the core uses the environment to decide station identity and the VM rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from licentia.model.errors import ErrorCode, LicentiaError


class Tolerance(StrEnum):
    """How much of a machine may change before a soft container breaks.

    The rule is exact: the container key is rebuilt when the properties that still
    match carry at least `fraction` of the total weight recorded at binding time
    (rounded up to whole shares). See docs/binding.md.
    """

    LOOSE = "loose"
    MEDIUM = "medium"
    STRICT = "strict"

    @property
    def fraction(self) -> float:
        return _FRACTIONS[self]

    @classmethod
    def parse(cls, text: str) -> Tolerance:
        try:
            return cls(text.lower())
        except ValueError:
            raise LicentiaError(
                ErrorCode.INVALID_PARAMETER,
                f"binding tolerance {text!r} unknown; use loose, medium or strict",
            ) from None


_FRACTIONS = {Tolerance.LOOSE: 0.40, Tolerance.MEDIUM: 0.65, Tolerance.STRICT: 0.85}


@dataclass(frozen=True)
class MachineProperty:
    """One fingerprint property: a name, its value on this machine, and its weight.

    `weight` is the number of key shares the property carries (0 = shown, not bound).
    `stability` says in a few words how often the value changes in practice.
    """

    name: str
    value: bytes
    weight: int
    stability: str = ""


class MachineKind(StrEnum):
    BARE_METAL = "bare metal"
    VM = "virtual machine"
    CONTAINER = "container"


class SessionKind(StrEnum):
    LOCAL = "local console"
    REMOTE_DESKTOP = "remote desktop"  # a remote view of this machine's own session
    TERMINAL_SERVER = "terminal server session"  # one of many user sessions on a shared host


@dataclass(frozen=True)
class Environment:
    kind: MachineKind = MachineKind.BARE_METAL
    hypervisor: str | None = None  # "kvm", "vmware", "hyperv", "xen", "virtualbox", ...
    container: str | None = None  # "docker", "podman", "lxc", ...
    session: SessionKind = SessionKind.LOCAL
    session_id: str = ""  # identifies a terminal-server session on its host

    @property
    def in_vm(self) -> bool:
        return self.kind is MachineKind.VM or self.hypervisor is not None


@dataclass(frozen=True)
class Fingerprint:
    properties: tuple[MachineProperty, ...]
    environment: Environment
    strength: str = ""  # "strong" / "fair" / "weak", with why; see docs/binding.md

    def by_name(self) -> dict[str, MachineProperty]:
        return {p.name: p for p in self.properties}
