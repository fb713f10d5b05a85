"""CLI commands, one module each. Exit codes: 0 ok, 1 runtime failure, 2 invalid input or usage,
3 an apply was refused or rolled back, 4 the command is not available in this build.

Modules here import what a command needs when it runs, not at import: building the parser must
stay cheap (see :mod:`clbagent.cli`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clbagent.errors import Issue
    from clbagent.l4 import IpvsPlan
    from clbagent.l7 import NginxConfig
    from clbagent.loader import Reading
    from clbagent.validate import DesiredState

EXIT_OK, EXIT_FAILURE, EXIT_INVALID, EXIT_REFUSED = 0, 1, 2, 3
SHOWN_PATHS = 3  # paths shown for a repeated warning in text output


def add_state_arguments(parser: Any) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="document files or directories")
    parser.add_argument("--settings", type=Path, help="agent settings YAML (limits where the documents disagree)")
    parser.add_argument(
        "--cert-dir",
        type=Path,
        help="the only directory CertFile/CertKeyFile may name files in (default: each document's own directory)",
    )


def read_state(args: Any, reading: Reading | None = None) -> tuple[DesiredState, list[Issue]]:
    """Load and validate the documents named on the command line. Unusable settings end the
    command with exit 2 and one sentence: nothing is validated against guessed limits.
    ``reading``: see :class:`clbagent.loader.Reading`."""
    from clbagent.loader import load
    from clbagent.settings import Settings, SettingsError
    from clbagent.validate import validate_documents

    try:
        settings = Settings.load(args.settings)
    except SettingsError as exc:
        print(f"clbagent: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_INVALID) from None
    docs, load_issues = load(args.paths, getattr(args, "cert_dir", None), settings, reading)
    state = validate_documents(docs, settings)
    return state, load_issues


def compile_state(state: DesiredState, prefix: str | None = None) -> tuple[NginxConfig, IpvsPlan]:
    """Run both compilers on the valid load balancers. ``validate`` runs them too, so that it
    reports every warning (and every refusal) ``render`` would."""
    from clbagent.l4 import plan_ipvs
    from clbagent.l7 import compile_nginx

    nginx = compile_nginx(state) if prefix is None else compile_nginx(state, prefix=prefix)
    return nginx, plan_ipvs(state)


def summarise(issues: list[Issue], shown: int = SHOWN_PATHS) -> list[str]:
    """Text lines for people: errors one per line; identical warnings (same code and message) at
    different paths as one line with their count and the first ``shown`` paths."""
    groups: dict[object, list[Issue]] = {}
    for n, issue in enumerate(issues):
        key = n if issue.severity == "error" else (issue.code, issue.message)
        groups.setdefault(key, []).append(issue)
    out = []
    for same in groups.values():
        first = same[0]
        if len(same) == 1:
            out.append(str(first))
            continue
        paths = ", ".join(i.path for i in same[:shown])
        more = f" and {len(same) - shown} more" if len(same) > shown else ""
        out.append(f"warning: {first.code}: {paths}{more} ({len(same)} times): {first.message}")
    return out


def print_report(report: Any, as_json: bool, as_text: Callable[[Any], str]) -> None:
    """A report of the running agent (status, health, fleet): sorted JSON, or ``as_text`` of it."""
    if as_json:
        json.dump(report, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(as_text(report))


def print_issues(issues: list[Issue], as_json: bool) -> None:
    """``as_json``: every issue on standard output; else a summary (see ``summarise``) on stderr."""
    if as_json:
        json.dump([i.to_dict() for i in issues], sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return
    for line in summarise(issues):
        print(line, file=sys.stderr)
