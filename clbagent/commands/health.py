"""`clbagent health`: the health of every target, as the running agent sees it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from clbagent.commands import EXIT_FAILURE, EXIT_OK, EXIT_REFUSED, print_report
from clbagent.commands.agent import CONFIG_HELP, ask_agent


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "health",
        help="show the health of every target (DescribeTargetHealth)",
        description="Ask the running agent for the health of every target of every listener and rule: "
        "HealthStatus, Alive|Dead|Unknown, since when, the last error and the check. Exit 0 when no target "
        "is dead, 3 when at least one is, 1 when no agent answers, 2 for an invalid config.",
    )
    p.add_argument("--config", type=Path, help=CONFIG_HELP)
    p.add_argument("--socket", type=Path, help="the status socket (default: from the config)")
    p.add_argument("--json", action="store_true", help="print the DescribeTargetHealth-shaped JSON")
    p.set_defaults(run=run_health)


def run_health(args: Any) -> int:
    from clbagent.health.report import format_text

    answer = ask_agent(args, "health", "health")
    if isinstance(answer, int):
        return answer
    if "health" not in answer:
        print("clbagent health: the running agent does not report health", file=sys.stderr)
        return EXIT_FAILURE
    report = answer["health"]
    print_report(report, args.json, format_text)
    return EXIT_REFUSED if report["Summary"]["Dead"] else EXIT_OK
