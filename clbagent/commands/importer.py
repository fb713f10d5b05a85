"""`clbagent import alibaba-https`: convert an Alibaba CreateLoadBalancerHTTPSListener request."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clbagent.commands import EXIT_INVALID, EXIT_OK, print_issues

if TYPE_CHECKING:
    from clbagent.errors import Issue


def _vip(text: str) -> str:
    try:
        return str(ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r:.60} is not an IP address") from None


def _backend(text: str) -> tuple[str, int | None, int]:
    """``IP[:PORT][,WEIGHT]`` (IPv6 as ``[addr]:port``)."""
    addr, _, weight = text.partition(",")
    port: int | None = None
    if addr.startswith("["):
        host, _, rest = addr[1:].partition("]")
        text_port: str | None = rest[1:] if rest.startswith(":") else None
    elif addr.count(":") == 1:
        host, _, text_port = addr.partition(":")
    else:
        host, text_port = addr, None
    try:
        port = int(text_port) if text_port is not None else None
        return _vip(host), port, int(weight) if weight else 10
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"bad backend {text!r:.80}; use IP[:PORT][,WEIGHT]") from None


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
    k.add_argument("--vip", action="append", required=True, type=_vip, help="VIP of the load balancer (repeatable)")
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
        help="documents holding the Certificates/Acls the request references (checked if given; without it "
        "unresolved references are warnings)",
    )
    k.add_argument("--cert-dir", type=Path, help="the only directory CertFile/CertKeyFile of --with may name")
    k.add_argument("--into", type=Path, help="add the listener to this existing load-balancer document")
    k.add_argument("-o", "--output", type=Path, help="write the document here instead of standard output")
    k.add_argument("--json", action="store_true", help="print issues as JSON")
    k.set_defaults(run=run)


def _read_into(path: Path) -> dict[str, Any]:
    """The load-balancer document ``--into`` names, read with the same bounds as any document."""
    from clbagent.loader import DocumentError, parse_problem, parse_text, read_bounded, shown
    from clbagent.settings import DEFAULT_SETTINGS

    try:
        found = parse_text(read_bounded(path, DEFAULT_SETTINGS.max_document_bytes).decode(), shown(path))
    except DocumentError as exc:
        raise ValueError(str(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(getattr(exc, "strerror", None) or "not UTF-8 text") from None
    except ValueError as exc:
        raise ValueError(parse_problem(exc)) from None
    if len(found) != 1 or not isinstance(found[0][1], dict):
        raise ValueError("it must hold one load-balancer document (a mapping)")
    return found[0][1]


def _read_request(path: Path) -> dict[str, str]:
    from clbagent.importers.alibaba import parse_request
    from clbagent.loader import DocumentError, read_bounded
    from clbagent.settings import DEFAULT_SETTINGS

    if str(path) == "-":
        return parse_request(sys.stdin.read(DEFAULT_SETTINGS.max_document_bytes))
    try:
        return parse_request(read_bounded(path, DEFAULT_SETTINGS.max_document_bytes).decode())
    except DocumentError as exc:
        raise ValueError(str(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(getattr(exc, "strerror", None) or "not UTF-8 text") from None


def _unresolved_as_warnings(issues: list[Issue]) -> list[Issue]:
    """Without ``--with`` the referenced objects are simply not known here: say so, keep the document."""
    from clbagent.errors import Code

    unresolved = {Code.RESOURCE_NOT_FOUND, Code.ALI_ACL_NOT_EXIST, Code.ALI_TLS_POLICY_NOT_EXIST}
    return [
        replace(i, severity="warning", message=f"{i.message} (give the document defining it with --with)")
        if i.code in unresolved
        else i
        for i in issues
    ]


def run(args: Any) -> int:
    import yaml

    from clbagent.importers.alibaba import Context, convert
    from clbagent.loader import load, shown
    from clbagent.validate import validate_documents

    try:
        params = _read_request(args.request)
    except (ValueError, RecursionError) as exc:
        print(f"clbagent import: cannot read the request: {str(exc)[:200]}", file=sys.stderr)
        return EXIT_INVALID
    with_docs, load_issues = load(args.with_paths, args.cert_dir)
    ctx = Context(vips=args.vip, backends=args.backend, domain=args.domain)
    for _, raw in with_docs:
        if isinstance(raw, dict):
            ctx.certificates.update({c.get("CertId"): c for c in raw.get("Certificates") or [] if isinstance(c, dict)})
            ctx.acls.update({a.get("AclId"): a for a in raw.get("Acls") or [] if isinstance(a, dict)})
    if args.into is not None:
        try:
            ctx.existing = _read_into(args.into)
        except ValueError as exc:
            print(f"clbagent import: cannot use --into {shown(args.into)}: {exc}", file=sys.stderr)
            return EXIT_INVALID
    doc, issues = convert(params, ctx)
    issues = load_issues + issues
    if doc is not None:
        state = validate_documents([("imported", doc), *with_docs])
        found = [i for d in state.documents[:1] for i in d.issues]
        issues += found if args.with_paths else _unresolved_as_warnings(found)
    print_issues(issues, args.json)
    if doc is None or any(i.severity == "error" for i in issues):
        return EXIT_INVALID
    text_out = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    if args.output:
        args.output.write_text(text_out)
    else:
        sys.stdout.write(text_out)
    return EXIT_OK
