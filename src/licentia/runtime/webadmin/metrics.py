"""Prometheus text exposition of the runtime's state (`GET /metrics`, format 0.0.4)."""

from __future__ import annotations

import bisect
from typing import Any

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """Request latencies of the HTTP port, by path group."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}

    def observe(self, group: str, seconds: float) -> None:
        counts = self.counts.get(group)
        if counts is None:
            counts = self.counts[group] = [0] * (len(BUCKETS) + 1)
            self.sums[group] = 0.0
        counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sums[group] += seconds


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**kv: object) -> str:
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in kv.items()) + "}"


def render(items: list[dict[str, Any]], *, sessions: int, connections: int, network_clients: int,
           denials: dict[int, int], acl_rules: int, acl_in_force: bool, started_at: float,
           latency: Histogram) -> str:
    out: list[str] = []

    def head(name: str, kind: str, text: str) -> None:
        out.append(f"# HELP {name} {text}")
        out.append(f"# TYPE {name} {kind}")

    head("licentia_seats_in_use", "gauge", "Seats held now, per product item.")
    for i in items:
        out.append("licentia_seats_in_use" + _labels(container=i["container"], firm=i["firm_code"],
                                                     product=i["product_code"], item=i["item_id"])
                   + f" {i['in_use']}")
    head("licentia_seats_quantity", "gauge", "Seats the item allows (items without a limit are left out).")
    for i in items:
        if isinstance(i.get("quantity"), int):
            out.append("licentia_seats_quantity" + _labels(container=i["container"], firm=i["firm_code"],
                                                           product=i["product_code"], item=i["item_id"])
                       + f" {i['quantity']}")
    head("licentia_denials_total", "counter", "Accesses refused for want of a seat or by the access list, by code.")
    for code, n in sorted(denials.items()):
        out.append(f"licentia_denials_total{_labels(code=code)} {n}")
    head("licentia_sessions", "gauge", "Handles held (local and network).")
    out.append(f"licentia_sessions {sessions}")
    head("licentia_connections", "gauge", "Client connections open now.")
    out.append(f"licentia_connections {connections}")
    head("licentia_network_clients", "gauge", "Network clients holding seats (by client id).")
    out.append(f"licentia_network_clients {network_clients}")
    head("licentia_acl_rules", "gauge", "Rules of the access list; licentia_acl_in_force is 1 when applied.")
    out.append(f"licentia_acl_rules {acl_rules}")
    out.append(f"licentia_acl_in_force {1 if acl_in_force else 0}")
    head("licentia_start_time_seconds", "gauge", "Unix time the runtime started.")
    out.append(f"licentia_start_time_seconds {started_at:.3f}")
    name = "licentia_http_request_duration_seconds"
    head(name, "histogram", "Time to answer a request on the HTTP port, by kind of page.")
    for group, counts in sorted(latency.counts.items()):
        total = 0
        for bound, n in zip(BUCKETS, counts, strict=False):
            total += n
            out.append(f"{name}_bucket{_labels(path=group, le=bound)} {total}")
        total += counts[-1]
        out.append(f"{name}_bucket{_labels(path=group, le='+Inf')} {total}")
        out.append(f"{name}_sum{_labels(path=group)} {latency.sums[group]:.6f}")
        out.append(f"{name}_count{_labels(path=group)} {total}")
    return "\n".join(out) + "\n"
