"""CLI commands, one module each. Exit codes: 0 ok, 1 runtime failure, 2 invalid input or usage,
3 an apply was refused or rolled back, 4 the command is not available in this build."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from clbagent.errors import Issue
from clbagent.loader import load
from clbagent.settings import Settings, SettingsError
from clbagent.validate import DesiredState, validate_documents

EXIT_OK, EXIT_FAILURE, EXIT_INVALID, EXIT_REFUSED, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4


def add_state_arguments(parser: Any) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="document files or directories")
    parser.add_argument("--settings", type=Path, help="agent settings YAML (limits where the documents disagree)")
    parser.add_argument(
        "--cert-dir",
        type=Path,
        help="the only directory CertFile/CertKeyFile may name files in (default: each document's own directory)",
    )


def read_state(args: Any) -> tuple[DesiredState, list[Issue]]:
    """Load and validate the documents named on the command line. Unusable settings end the
    command with exit 2 and one sentence: nothing is validated against guessed limits."""
    try:
        settings = Settings.load(args.settings)
    except SettingsError as exc:
        print(f"clbagent: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_INVALID) from None
    docs, load_issues = load(args.paths, getattr(args, "cert_dir", None), settings)
    state = validate_documents(docs, settings)
    return state, load_issues


def print_issues(issues: list[Issue], as_json: bool) -> None:
    if as_json:
        json.dump([i.to_dict() for i in issues], sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return
    for issue in issues:
        print(issue, file=sys.stderr)
