"""Small helpers shared by the top-level tests."""

from __future__ import annotations

import json
from pathlib import Path

from clbagent.cli import main

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


def expectation(path: Path) -> dict[str, str]:
    """The ``# key: value`` header lines of a fixture (expect, vip, into)."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("# ") and ": " in line:
            key, _, value = line[2:].partition(": ")
            out[key] = value
    return out


def run_json(argv: list[str], capsys) -> tuple[int, list[dict[str, str]]]:
    """Run the CLI in-process with --json and return (exit code, issues)."""
    capsys.readouterr()
    rc = main([*argv, "--json"])
    out = capsys.readouterr().out
    return rc, json.loads(out[: out.rindex("]") + 1]) if out.lstrip().startswith("[") else []
