"""Command line of clbagent. Every command has --help; exit codes are listed in
:mod:`clbagent.commands`.

Start-up counts (``validate`` runs in slow VMs, ``run`` restarts under systemd): a command line
naming a command imports only that command's module; the full parser (all modules) is built only
for ``--help``, ``--version``, a missing or an unknown command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from clbagent import __version__

# Command name -> module of clbagent.commands that adds its parser (add_parser or add_parsers).
COMMANDS = {
    "validate": "validate",
    "schema": "validate",
    "import": "importer",
    "render": "render",
    "apply": "agent",
    "run": "agent",
    "status": "agent",
    "config": "agent",
    "fleet": "fleet",
    "health": "health",
}
# The module of each parser-adding function, in the order of the full help.
PARSERS = (
    ("validate", "add_parser"),
    ("validate", "schema_parser"),
    ("importer", "add_parser"),
    ("render", "add_parser"),
    ("agent", "add_parsers"),
    ("fleet", "add_parser"),
    ("health", "add_parser"),
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or (``only``) of the commands of one module."""
    parser = argparse.ArgumentParser(
        prog="clbagent",
        description="Data-plane agent of a cloud load balancer: validates CLB desired state and makes the "
        "host serve it (nginx for HTTP/HTTPS, IPVS for TCP/UDP).",
    )
    parser.add_argument("--version", action="version", version=f"clbagent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module, adder in PARSERS:
        if only is None or module == only:
            getattr(importlib.import_module(f"clbagent.commands.{module}"), adder)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    module = COMMANDS.get(argv[0]) if argv else None
    args = build_parser(module).parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
