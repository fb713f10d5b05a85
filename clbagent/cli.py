"""Command line of clbagent. Every command has --help; exit codes are listed in
:mod:`clbagent.commands`."""

from __future__ import annotations

import argparse
import sys

from clbagent import __version__
from clbagent.commands import agent, fleet, health, importer, render, validate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clbagent",
        description="Data-plane agent of a cloud load balancer: validates CLB desired state and makes the "
        "host serve it (nginx for HTTP/HTTPS, IPVS for TCP/UDP).",
    )
    parser.add_argument("--version", action="version", version=f"clbagent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    validate.add_parser(sub)
    validate.schema_parser(sub)
    importer.add_parser(sub)
    render.add_parser(sub)
    agent.add_parsers(sub)
    fleet.add_parser(sub)
    health.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
