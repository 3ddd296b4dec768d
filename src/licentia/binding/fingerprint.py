"""This machine's fingerprint: environment, readings, recipe and strength in one call."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from licentia.binding._fs import Skipped, Tree
from licentia.binding.collect import collect_readings
from licentia.binding.environment import detect_environment
from licentia.binding.match import required_weight
from licentia.binding.recipes import (
    Recipe,
    apply_recipe,
    assess_strength,
    recipe_for,
    strength_bits,
)
from licentia.model import Fingerprint, Tolerance

__all__ = ["MachineReport", "collect_fingerprint", "describe_machine", "inspect_machine"]


@dataclass(frozen=True)
class MachineReport:
    """A fingerprint with what went into it: the recipe used and the files that were unreadable."""

    fingerprint: Fingerprint
    recipe: Recipe
    skipped: tuple[Skipped, ...]


def inspect_machine(
    root: Path = Path("/"), *, environ: Mapping[str, str] | None = None
) -> MachineReport:
    tree = Tree(Path(root))
    environment = detect_environment(tree, environ)
    readings = collect_readings(tree)
    recipe = recipe_for(environment)
    properties = apply_recipe(readings, recipe)
    unreadable = tuple(dict.fromkeys(tree.skipped))
    strength = assess_strength(properties, environment, unreadable=[s.path for s in unreadable])
    return MachineReport(Fingerprint(properties, environment, strength), recipe, unreadable)


def collect_fingerprint(
    root: Path = Path("/"), *, environ: Mapping[str, str] | None = None
) -> Fingerprint:
    """Read the machine under `root`: its environment, weighted properties and their strength.

    `environ` stands for the process environment (session detection); default os.environ.
    Raises LicentiaError(INVALID_PARAMETER) only for a bad LICENTIA_SESSION value.
    """
    return inspect_machine(root, environ=environ).fingerprint


def _short_hash(name: str, value: bytes) -> str:
    digest = hashlib.sha256(b"licentia machine property\x00" + name.encode() + b"\x00" + value)
    return digest.hexdigest()[:12]


def describe_machine(
    root: Path = Path("/"), environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A JSON-able description of this machine for `licentia machine show`.

    Lists every property by name, weight, stability and a short hash of its value (to
    compare two machines or two moments; never the value itself), the environment, the
    recipe, the strength, the weight each tolerance needs and the binding's strength in
    bits of an attacker's guessing per tolerance (`strength_bits`).
    """
    report = inspect_machine(root, environ=environ)
    fp = report.fingerprint
    env = fp.environment
    total = sum(p.weight for p in fp.properties if p.weight > 0)
    return {
        "environment": {
            "kind": env.kind.value,
            "hypervisor": env.hypervisor,
            "container": env.container,
            "session": env.session.value,
            "session_id": env.session_id,
        },
        "recipe": report.recipe.name,
        "strength": fp.strength,
        "level": fp.strength.partition(":")[0],
        "total_weight": total,
        "needed_weight": {t.value: required_weight(total, t) for t in Tolerance},
        # bits an attacker who knows the machine type must guess to open a copy elsewhere
        "strength_bits": {t.value: strength_bits(fp.properties, t) for t in Tolerance},
        "properties": [
            {
                "name": p.name,
                "weight": p.weight,
                "stability": p.stability,
                "hash": _short_hash(p.name, p.value),
            }
            for p in fp.properties
        ],
        "unreadable": [{"path": s.path, "reason": s.reason} for s in report.skipped],
    }
