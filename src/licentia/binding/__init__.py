"""Reading this machine: fingerprint properties, environment (VM, container, session), recipes.

    from licentia.binding import collect_fingerprint, match_weight
    fp = collect_fingerprint()                       # the real machine, root "/"
    matched, total = match_weight(bound, fp.properties)

Every collector reads under a `root` path, so the same code runs against the real
machine and against synthetic trees in tests. Imports only licentia.model.
See docs/binding.md for every property, weight and rule.
"""

from licentia.binding.collect import Reading, collect_readings, is_placeholder
from licentia.binding.environment import (
    SESSION_ID_VARIABLE,
    SESSION_VARIABLE,
    detect_container,
    detect_environment,
    detect_hypervisor,
    detect_session,
)
from licentia.binding.fingerprint import (
    MachineReport,
    collect_fingerprint,
    describe_machine,
    inspect_machine,
)
from licentia.binding.match import binding_holds, match_weight, required_weight
from licentia.binding.recipes import (
    BARE_METAL_RECIPE,
    CONTAINER_RECIPE,
    RECIPES,
    VM_RECIPE,
    Recipe,
    apply_recipe,
    assess_strength,
    cap_shared,
    recipe_for,
)

__all__ = [
    "BARE_METAL_RECIPE", "CONTAINER_RECIPE", "RECIPES", "SESSION_ID_VARIABLE",
    "SESSION_VARIABLE", "VM_RECIPE", "MachineReport", "Reading", "Recipe", "apply_recipe",
    "assess_strength", "binding_holds", "cap_shared", "collect_fingerprint", "collect_readings",
    "describe_machine", "detect_container", "detect_environment", "detect_hypervisor",
    "detect_session", "inspect_machine", "is_placeholder", "match_weight", "recipe_for",
    "required_weight",
]
