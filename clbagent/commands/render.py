"""`clbagent render`: compile documents and show (or write) what would be applied. Never applies."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from clbagent.commands import EXIT_INVALID, EXIT_OK, add_state_arguments, print_issues, read_state
from clbagent.l7.memo import Run, answer, note_state, written_digests
from clbagent.l7.memo import add_argument as add_cache_argument

REDACTED = "(private key: never printed)"


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "render",
        help="show the nginx configuration and IPVS table the documents compile to",
        description="Compile the valid documents (invalid ones are reported and left out) into nginx "
        "configuration for HTTP/HTTPS and an IPVS table for TCP/UDP. Nothing on the host is changed. "
        "Exit 0 when every document is valid, 2 otherwise (the valid ones are still rendered). "
        "Private keys are written by --out only: they are never printed.",
    )
    add_state_arguments(p)
    add_cache_argument(p)
    p.add_argument("--dry-run", action="store_true", help="print what would be applied (the default)")
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="write a complete nginx prefix (nginx.conf, one include per load balancer, certificates) into DIR",
    )
    p.add_argument(
        "--upstreams",
        choices=("dynamic", "static"),
        help="dynamic: members of each upstream as data for nginx's Lua balancer (target changes need "
        "no reload); static: members in the configuration. Default: dynamic when nginx's Lua module "
        "is installed, static otherwise",
    )
    p.add_argument(
        "--format",
        choices=("text", "nginx", "ipvsadm", "json"),
        default="text",
        help="text: everything; nginx: nginx files; ipvsadm: rules for 'ipvsadm -R'; "
        "json: all as JSON (certificate files included, private keys replaced by a note)",
    )
    p.set_defaults(run=run)


def upstreams_mode(asked: str | None) -> tuple[str, str]:
    """The mode to render and why (for the output)."""
    from clbagent.l7.compile import LUA_MODULE

    if asked:
        return asked, "--upstreams"
    if LUA_MODULE.exists():
        return "dynamic", f"default: {LUA_MODULE} is installed"
    return "static", f"default: {LUA_MODULE} is not installed"


def run(args: Any) -> int:
    return answer(args, lambda noted: render(args, noted), args.out)


def render(args: Any, noted: Run | None) -> int:
    """The full run (see :mod:`clbagent.l7.memo` for the one that answers from a record)."""
    from clbagent.l4 import plan_ipvs
    from clbagent.l7 import DEFAULT_PREFIX, PrefixError, compile_nginx, write_prefix
    from clbagent.l7.compile import LUA_MODULE

    state, load_issues = read_state(args, None if noted is None else noted.reading)
    mode, why = upstreams_mode(args.upstreams)
    if noted is not None:
        note_state(noted, state)
        noted.facts[str(LUA_MODULE)] = LUA_MODULE.exists()
    prefix = DEFAULT_PREFIX if args.out is None else str(args.out.resolve())
    nginx, ipvs = compile_nginx(state, prefix=prefix, dynamic=mode == "dynamic"), plan_ipvs(state)
    issues = load_issues + state.issues + nginx.warnings + ipvs.warnings
    if args.out is not None:
        try:
            write_prefix(nginx, args.out)
        except (PrefixError, OSError) as exc:
            print(f"clbagent render: cannot write the prefix: {exc}", file=sys.stderr)
            return EXIT_INVALID
        if noted is not None:
            noted.written = written_digests(nginx.files)
    if args.format == "json":
        files = {path: REDACTED if path.endswith(".key") else text for path, text in nginx.files.items()}
        errors = [i.to_dict() for i in issues]
        out = {"upstreams": mode, "nginx": files, "ipvs": ipvs.to_dict(), "issues": errors}
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"clbagent render: {mode} upstreams ({why})", file=sys.stderr)
        print_issues(issues, False)
        if args.format in ("text", "nginx") and args.out is None:
            for path, text in sorted(nginx.files.items()):
                if not path.startswith(("certs/", "ca/")):
                    sys.stdout.write(f"# ==> {path} <==\n{text}\n")
        table = ipvs.to_ipvsadm()
        if args.format == "text" and table:
            sys.stdout.write("# ==> IPVS table (ipvsadm -R rules) <==\n")
        if args.format in ("text", "ipvsadm"):
            sys.stdout.write(table)
    bad = any(i.severity == "error" for i in issues)
    return EXIT_INVALID if bad else EXIT_OK
