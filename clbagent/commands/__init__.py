"""CLI commands, one module each. Exit codes: 0 ok, 1 runtime failure, 2 invalid input or usage,
3 an apply was refused or rolled back, 4 the command is not available in this build."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from clbagent.errors import Issue
from clbagent.loader import load
from clbagent.settings import Settings
from clbagent.validate import DesiredState, validate_documents

EXIT_OK, EXIT_FAILURE, EXIT_INVALID, EXIT_REFUSED, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4


def add_state_arguments(parser: Any) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="document files or directories")
    parser.add_argument("--settings", type=Path, help="agent settings YAML (limits where the documents disagree)")


def read_state(args: Any) -> tuple[DesiredState, list[Issue]]:
    """Load and validate the documents named on the command line."""
    docs, load_issues = load(args.paths)
    state = validate_documents(docs, Settings.load(args.settings))
    return state, load_issues


def print_issues(issues: list[Issue], as_json: bool) -> None:
    if as_json:
        json.dump([i.to_dict() for i in issues], sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return
    for issue in issues:
        print(issue, file=sys.stderr)
