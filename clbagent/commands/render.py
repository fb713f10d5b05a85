"""`clbagent render`: compile documents and show (or write) what would be applied. Never applies."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from clbagent.commands import EXIT_INVALID, EXIT_OK, add_state_arguments, print_issues, read_state


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "render",
        help="show the nginx configuration and IPVS table the documents compile to",
        description="Compile the valid documents (invalid ones are reported and left out) into nginx "
        "configuration for HTTP/HTTPS and an IPVS table for TCP/UDP. Nothing on the host is changed. "
        "Exit 0 when every document is valid, 2 otherwise (the valid ones are still rendered).",
    )
    add_state_arguments(p)
    p.add_argument("--dry-run", action="store_true", help="print what would be applied (the default)")
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="write a complete nginx prefix (nginx.conf, one include per load balancer, certificates) into DIR",
    )
    p.add_argument(
        "--format",
        choices=("text", "nginx", "ipvsadm", "json"),
        default="text",
        help="text: everything; nginx: nginx files; ipvsadm: rules for 'ipvsadm -R'; json: all as JSON",
    )
    p.set_defaults(run=run)


def run(args: Any) -> int:
    from clbagent.l4 import plan_ipvs
    from clbagent.l7 import compile_nginx, write_prefix

    state, load_issues = read_state(args)
    prefix = {"prefix": str(args.out.resolve())} if args.out is not None else {}
    nginx = compile_nginx(state, **prefix)
    ipvs = plan_ipvs(state)
    issues = load_issues + state.issues + nginx.warnings + ipvs.warnings
    if args.out is not None:
        write_prefix(nginx, args.out)
    if args.format == "json":
        errors = [i.to_dict() for i in issues]
        json.dump({"nginx": nginx.files, "ipvs": ipvs.to_dict(), "issues": errors}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_issues(issues, False)
        if args.format in ("text", "nginx") and args.out is None:
            for path, text in sorted(nginx.files.items()):
                if not path.startswith("certs/"):
                    sys.stdout.write(f"# ==> {path} <==\n{text}\n")
        if args.format == "text":
            sys.stdout.write("# ==> IPVS table (ipvsadm -R rules) <==\n")
        if args.format in ("text", "ipvsadm"):
            sys.stdout.write(ipvs.to_ipvsadm())
    bad = any(i.severity == "error" for i in issues)
    return EXIT_INVALID if bad else EXIT_OK
