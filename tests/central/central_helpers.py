"""Helpers of the back-office tests: a firm key, and containers held in memory by the real core."""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from licentia.central.api import create_app
from licentia.central.service import Central, FirmKey
from licentia.core import updates
from licentia.core.content import ContainerContent
from licentia.core.evaluate import evaluate
from licentia.crypto import new_box_key, new_signing_key, signing_public_key
from licentia.model import ContainerSerial, ItemRequest, Verdict

FIRM_CODE = 6000010
T0 = 1_750_000_000
_numbers = itertools.count(1000)


def make_firm(firm_code: int = FIRM_CODE, name: str = "Example Firm") -> FirmKey:
    private = new_signing_key()
    return FirmKey(firm_code, name, private, signing_public_key(private))


@dataclass
class Box:
    """A container held in memory: the same core logic a soft container file runs."""

    content: ContainerContent
    environment: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def new(cls, mask: int = 130, **environment: Any) -> Box:
        serial = ContainerSerial(mask, next(_numbers) * 1000 + secrets.randbelow(1000))
        content = ContainerContent(serial, T0, new_signing_key(), new_box_key())
        return cls(content, dict(environment) or {"hostname": f"host{serial.number}"})

    @property
    def serial(self) -> str:
        return str(self.content.serial)

    def request(self, now: int = T0, firm_code: int = FIRM_CODE) -> bytes:
        return updates.make_request(self.content, firm_code, now, self.environment)

    def apply(self, update: bytes, now: int = T0) -> bytes:
        applied = updates.apply_update(self.content, update, now, in_vm=False)
        self.content = applied.content
        return applied.receipt

    def items(self, firm_code: int = FIRM_CODE) -> dict[int, Any]:
        firm = self.content.firms.get(firm_code)
        return dict(firm.items) if firm else {}

    def verdict(self, item_id: int, now: int, firm_code: int = FIRM_CODE) -> Verdict:
        entry = self.content.firms[firm_code].items[item_id]
        return evaluate(entry.item, entry.state, ItemRequest(), self.content.clock.observe(now), now)


@contextmanager
def live(central: Central, clock: Callable[[], int] | None = None) -> Iterator[str]:
    """Central on a real socket (uvicorn in a thread); `clock` gives central's time."""
    config = uvicorn.Config(create_app(central, clock=clock), host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join()
