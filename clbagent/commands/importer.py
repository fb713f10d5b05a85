"""`clbagent import alibaba-https`: convert an Alibaba CreateLoadBalancerHTTPSListener request."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from clbagent.commands import EXIT_INVALID, EXIT_OK, print_issues
from clbagent.importers.alibaba import Context, convert, parse_request
from clbagent.loader import load
from clbagent.validate import validate_documents


def _backend(text: str) -> tuple[str, int | None, int]:
    """``IP[:PORT][,WEIGHT]`` (IPv6 as ``[addr]:port``)."""
    addr, _, weight = text.partition(",")
    port: int | None = None
    if addr.startswith("["):
        host, _, rest = addr[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else None
    elif addr.count(":") == 1:
        host, _, p = addr.partition(":")
        port = int(p)
    else:
        host = addr
    try:
        return host, port, int(weight) if weight else 10
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad backend {text!r}; use IP[:PORT][,WEIGHT]") from None


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "import",
        help="convert another vendor's request into a document",
        description="Convert another vendor's listener request into a clbagent document.",
    )
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    k = kinds.add_parser(
        "alibaba-https",
        help="Alibaba CreateLoadBalancerHTTPSListener parameters",
        description="Read CreateLoadBalancerHTTPSListener parameters (the query-string form of a request, "
        "or a JSON object) and print the equivalent clbagent document. Alibaba's parameter rules apply "
        "with Alibaba's error codes. Exit 0 on success, 2 when the request is invalid.",
    )
    k.add_argument("request", type=Path, help="file with the request ('-' for standard input)")
    k.add_argument("--vip", action="append", required=True, help="VIP of the load balancer (repeatable)")
    k.add_argument(
        "--backend",
        action="append",
        type=_backend,
        default=[],
        metavar="IP[:PORT][,WEIGHT]",
        help="a backend server of the listener's server group (repeatable)",
    )
    k.add_argument(
        "--domain",
        default="default.clb.internal",
        help="domain of the listener's default rule (it is the default server, so every host matches)",
    )
    k.add_argument(
        "--with",
        dest="with_paths",
        action="append",
        type=Path,
        default=[],
        metavar="PATH",
        help="documents holding the Certificates/Acls the request references (checked if given)",
    )
    k.add_argument("--into", type=Path, help="add the listener to this existing load-balancer document")
    k.add_argument("-o", "--output", type=Path, help="write the document here instead of standard output")
    k.add_argument("--json", action="store_true", help="print issues as JSON")
    k.set_defaults(run=run)


def run(args: Any) -> int:
    text = sys.stdin.read() if str(args.request) == "-" else args.request.read_text()
    try:
        params = parse_request(text)
    except ValueError as exc:
        print(f"clbagent import: cannot read the request: {exc}", file=sys.stderr)
        return EXIT_INVALID
    with_docs, load_issues = load(args.with_paths)
    ctx = Context(vips=args.vip, backends=args.backend, domain=args.domain)
    for _, raw in with_docs:
        if isinstance(raw, dict):
            ctx.certificates.update({c.get("CertId"): c for c in raw.get("Certificates") or [] if isinstance(c, dict)})
            ctx.acls.update({a.get("AclId"): a for a in raw.get("Acls") or [] if isinstance(a, dict)})
    if args.into is not None:
        ctx.existing = yaml.safe_load(args.into.read_text())
    doc, issues = convert(params, ctx)
    issues = load_issues + issues
    if doc is not None:
        state = validate_documents(
            [("imported", doc), *with_docs],
        )
        issues += [i for d in state.documents[:1] for i in d.issues]
    print_issues(issues, args.json)
    if doc is None or any(i.severity == "error" for i in issues):
        return EXIT_INVALID
    text_out = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    if args.output:
        args.output.write_text(text_out)
    else:
        sys.stdout.write(text_out)
    return EXIT_OK
