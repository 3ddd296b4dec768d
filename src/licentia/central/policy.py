"""Replacement policy of a product, and the pure decision on a replacement request.

A product's policy says whether a user may replace a lost license by himself, how often,
and how long he must wait between two replacements; replacing on the same device (the
machine was reinstalled, the disk wiped) has its own rules and names the machine
properties that must still match for the new container to count as the same device.
Anything beyond the policy is not refused outright: it goes to the vendor's approval hook,
and an operator can always approve it by hand.

    {
      "replace":     {"allowed": false, "max_count": 1, "min_wait": 2592000},
      "same_device": {"allowed": true,  "max_count": 3, "min_wait": 0,
                      "match": ["hostname", "machine_id"]},
      "approval_hook": "https://vendor.example/approve",   # or null
      "returnable": true                                     # may a license be returned (rehost)
    }

`max_count` null means no limit; `min_wait` is in seconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from licentia.model import ErrorCode, LicentiaError


@dataclass(frozen=True)
class Rule:
    allowed: bool = False
    max_count: int | None = 0
    min_wait: int = 0
    match: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "max_count": self.max_count, "min_wait": self.min_wait, "match": list(self.match)}


@dataclass(frozen=True)
class Policy:
    replace: Rule = Rule()
    same_device: Rule = Rule(match=("hostname",))
    approval_hook: str | None = None
    returnable: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "replace": self.replace.to_dict(),
            "same_device": self.same_device.to_dict(),
            "approval_hook": self.approval_hook,
            "returnable": self.returnable,
        }


def _bad(message: str) -> LicentiaError:
    return LicentiaError(ErrorCode.INVALID_PARAMETER, f"replacement policy: {message}")


def _rule(data: Any, name: str, default: Rule) -> Rule:
    if data is None:
        return default
    if not isinstance(data, Mapping):
        raise _bad(f"{name!r} must be an object")
    unknown = set(data) - {"allowed", "max_count", "min_wait", "match"}
    if unknown:
        raise _bad(f"{name!r} has unknown fields {sorted(unknown)}")
    allowed = data.get("allowed", default.allowed)
    max_count = data.get("max_count", default.max_count)
    min_wait = data.get("min_wait", default.min_wait)
    match = data.get("match", list(default.match))
    if not isinstance(allowed, bool):
        raise _bad(f"{name}.allowed must be true or false")
    if max_count is not None and (isinstance(max_count, bool) or not isinstance(max_count, int) or max_count < 0):
        raise _bad(f"{name}.max_count must be a count of zero or more, or null for no limit")
    if isinstance(min_wait, bool) or not isinstance(min_wait, int) or min_wait < 0:
        raise _bad(f"{name}.min_wait must be seconds, zero or more")
    if not isinstance(match, list) or not all(isinstance(m, str) and m for m in match):
        raise _bad(f"{name}.match must be a list of machine property names")
    return Rule(allowed, max_count, min_wait, tuple(match))


def parse_policy(data: Any) -> Policy:
    if data is None:
        return Policy()
    if not isinstance(data, Mapping):
        raise _bad("it must be an object")
    unknown = set(data) - {"replace", "same_device", "approval_hook", "returnable"}
    if unknown:
        raise _bad(f"unknown fields {sorted(unknown)}")
    hook = data.get("approval_hook")
    if hook is not None and (
        not isinstance(hook, str) or urlparse(hook).scheme not in ("http", "https") or not urlparse(hook).netloc
    ):
        raise _bad("approval_hook must be an http(s) URL or null")
    returnable = data.get("returnable", True)
    if not isinstance(returnable, bool):
        raise _bad("returnable must be true or false")
    default = Policy()
    return Policy(
        replace=_rule(data.get("replace"), "replace", default.replace),
        same_device=_rule(data.get("same_device"), "same_device", default.same_device),
        approval_hook=hook,
        returnable=returnable,
    )


@dataclass(frozen=True)
class Decision:
    within_policy: bool
    reason: str


def decide(
    policy: Policy,
    *,
    same_device: bool,
    earlier: Sequence[int],
    now: int,
) -> Decision:
    """May this replacement go ahead without approval?

    `earlier` are the times of the license's earlier approved replacements of the same kind
    (same device or not).
    """
    rule = policy.same_device if same_device else policy.replace
    what = "replacement on the same device" if same_device else "replacement"
    if not rule.allowed:
        return Decision(False, f"the product does not allow {what} without the vendor's approval")
    if rule.max_count is not None and len(earlier) >= rule.max_count:
        return Decision(
            False, f"the license was already replaced {len(earlier)} time(s); the product allows {rule.max_count}"
        )
    if earlier and rule.min_wait:
        ready_at = max(earlier) + rule.min_wait
        if now < ready_at:
            return Decision(
                False,
                f"the last {what} was less than {rule.min_wait} s ago; the next is possible "
                f"without approval {ready_at - now} s from now",
            )
    return Decision(True, f"{what} within the product's policy")


def mismatched_properties(
    match: Sequence[str], old: Mapping[str, Any], new: Mapping[str, Any]
) -> list[str]:
    """The properties named by the policy that differ between the old and the new device."""
    return [name for name in match if old.get(name) is None or old.get(name) != new.get(name)]
