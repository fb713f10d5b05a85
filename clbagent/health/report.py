"""`clbagent health`: the monitor's rows shaped like DescribeTargetHealth (per load balancer,
listener and rule, per target ``HealthStatus`` and ``HealthStatusDetial``, spelled as the API
spells it), plus when the state began, the last error and the check that decides it."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any


def describe(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """``{"LoadBalancers": [{LoadBalancerId, Listeners: [{ListenerId, Rules: [{LocationId, Targets}]}]}]}``;
    an L4 listener has one rule with an empty LocationId."""
    tree: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {}
    counts = {"Alive": 0, "Dead": 0, "Unknown": 0}
    for row in rows:
        host, _, port = row["target"].rpartition(":")
        tree.setdefault(row["load_balancer"], {}).setdefault(row["listener"], {}).setdefault(row["rule"], []).append(
            {
                "IP": host.strip("[]"),
                "Port": int(port),
                "TargetId": row["target"],
                "HealthStatus": row["HealthStatus"],
                "HealthStatusDetial": row["state"],
                "Since": row["since"],
                "LastError": row["last_error"] or None,
                "LastProbe": row["last_probe"],
                "Check": row["check"],
                "Source": row["source"],
            }
        )
        counts[row["state"]] += 1
    return {
        "LoadBalancers": [
            {
                "LoadBalancerId": lb,
                "Listeners": [
                    {
                        "ListenerId": lis,
                        "Rules": [
                            {"LocationId": rule, "Targets": sorted(targets, key=lambda t: t["TargetId"])}
                            for rule, targets in sorted(rules.items())
                        ],
                    }
                    for lis, rules in sorted(listeners.items())
                ],
            }
            for lb, listeners in sorted(tree.items())
        ],
        "Summary": counts,
    }


def format_text(report: dict[str, Any], now: float | None = None) -> str:
    """One line per target, grouped by load balancer, listener and rule."""
    now = time.time() if now is None else now
    lines: list[str] = []
    for lb in report["LoadBalancers"]:
        lines.append(lb["LoadBalancerId"])
        for lis in lb["Listeners"]:
            for rule in lis["Rules"]:
                lines.append(f"  {lis['ListenerId']}" + (f" / {rule['LocationId']}" if rule["LocationId"] else ""))
                for t in rule["Targets"]:
                    since = f"for {_ago(now - t['Since'])}" if t["Since"] else ""
                    error = f"  last error: {t['LastError']}" if t["LastError"] else ""
                    lines.append(
                        f"    {t['TargetId']:<24} {t['HealthStatusDetial']:<8} {since:<14} {t['Check']}{error}"
                    )
    s = report["Summary"]
    lines.append(f"{s['Alive']} alive, {s['Dead']} dead, {s['Unknown']} unknown")
    return "\n".join(lines) + "\n"


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"
