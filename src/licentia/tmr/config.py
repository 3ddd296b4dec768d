"""The settings of a TMR front end (`licentia tmr serve`): `tmr.toml` from `licentia tmr init`
and the command line's flags."""

from __future__ import annotations

import tomllib
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from licentia.model import ErrorCode, LicentiaError

__all__ = ["FrontEndConfig", "load_config"]


@dataclass(frozen=True)
class FrontEndConfig:
    etcd: tuple[str, ...]
    upstreams: tuple[str, ...]
    certificate: Path  # the client certificate the upstreams accept
    private_key: Path
    home: Path  # pins of the upstreams, the server certificate, front-end.json
    address: str = "0.0.0.0"
    port: int = 22350
    upstream_ca: Path | None = None  # trust the upstreams by this CA, else by pins on first use
    client_timeout: float = 30.0
    poll_interval: float = 1.0
    max_connections_per_peer: int = 64  # connections at once from one address ([limits], as a runtime's)
    serial_number: int | None = None  # of the virtual container 131-N (default: from the etcd members)
    prefix: str = "/licentia/tmr/v1/"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def serial(self) -> str:
        n = self.serial_number
        if n is None:
            n = zlib.crc32(",".join(sorted(self.etcd)).encode()) & 0x7FFFFFFF
        return f"131-{n}"

    def check(self) -> FrontEndConfig:
        if len(self.upstreams) != 3:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER,
                                f"a TMR front end needs [tmr] upstreams with three addresses, not {len(self.upstreams)}")
        if len(self.etcd) != 3:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER,
                                f"a TMR front end needs [tmr] etcd with the three members' URLs, not {len(self.etcd)}")
        if self.max_connections_per_peer < 1:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, "[limits] max_connections_per_peer must be at least 1")
        if self.client_timeout < 5:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, "client_timeout must be at least 5 s")
        return self


def load_config(path: Path | None, home: Path, **overrides: Any) -> FrontEndConfig:
    """The front end's settings from `tmr.toml` (written by `licentia tmr init`), with the
    command line's `overrides` (None: not given)."""
    doc: dict[str, Any] = {}
    if path is not None:
        try:
            doc = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"cannot read {path}: {exc}") from None
    tmr, net, limits = doc.get("tmr", {}), doc.get("network", {}), doc.get("limits", {})
    base = path.parent if path is not None else Path.cwd()

    def p(value: Any) -> Path | None:
        return None if not value else (base / str(value)).resolve()

    values: dict[str, Any] = {
        "etcd": tuple(tmr.get("etcd", ())), "upstreams": tuple(tmr.get("upstreams", ())),
        "certificate": p(tmr.get("certificate")), "private_key": p(tmr.get("private_key")),
        "upstream_ca": p(tmr.get("upstream_ca")), "home": home,
        "address": str(net.get("address", "0.0.0.0")), "port": int(net.get("port", 22350)),
        "client_timeout": float(net.get("client_timeout", 30.0)),
        "max_connections_per_peer": int(limits.get("max_connections_per_peer", 64)),
    }
    if "serial_number" in tmr:
        values["serial_number"] = int(tmr["serial_number"])
    for k, v in overrides.items():
        if v is not None:
            values[k] = tuple(v) if isinstance(v, list) else v
    if values["certificate"] is None or values["private_key"] is None:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER,
                            "a TMR front end needs its client certificate and key ([tmr] certificate, private_key)",
                            "the upstreams' [tmr] front_end_ca must have signed the certificate")
    return FrontEndConfig(**values).check()
