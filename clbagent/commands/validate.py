"""`clbagent validate`: check documents and report every problem with its CLB error code."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from clbagent.commands import EXIT_INVALID, EXIT_OK, add_state_arguments, compile_state, print_issues, read_state
from clbagent.l7.memo import Run, answer, note_state
from clbagent.l7.memo import add_argument as add_cache_argument


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "validate",
        help="check desired-state documents",
        description="Validate documents and compile them as render would, reporting every warning and "
        "refusal of the compilers too. Exit 0 when every document is valid, 2 when any has an error. "
        "Errors print as 'Code: path: message'; identical warnings are summarised on one line with their "
        "count (--json lists each); warnings do not change the exit code.",
    )
    add_state_arguments(p)
    add_cache_argument(p)
    p.add_argument("--json", action="store_true", help="print a JSON list of {code, path, message, severity}")
    p.add_argument(
        "--previous",
        type=Path,
        action="append",
        metavar="PATH",
        help="the documents now applied: also check the change (e.g. SNI cannot be switched off)",
    )
    p.set_defaults(run=run)


def run(args: Any) -> int:
    if args.previous:  # the answer depends on more documents: not recorded
        return check(args, None)
    return answer(args, lambda noted: check(args, noted))


def check(args: Any, noted: Run | None) -> int:
    """The full run (see :mod:`clbagent.l7.memo` for the one that answers from a record)."""
    from clbagent.loader import load
    from clbagent.validate import check_transition, validate_documents

    state, load_issues = read_state(args, None if noted is None else noted.reading)
    if noted is not None:
        note_state(noted, state)
    if args.previous:
        docs, _ = load(args.previous)
        check_transition(validate_documents(docs, state.settings), state)
    nginx, ipvs = compile_state(state)
    issues = load_issues + state.issues + nginx.warnings + ipvs.warnings
    print_issues(issues, args.json)
    bad = [i for i in issues if i.severity == "error"]
    if not args.json:
        lbs = sum(1 for d in state.documents if d.root != d.source)
        status = "invalid" if bad else "valid"
        print(
            f"{len(state.documents)} document(s), {lbs} load balancer(s): {status}; "
            f"{len(bad)} error(s), {len(issues) - len(bad)} warning(s)",
            file=sys.stderr,
        )
    return EXIT_INVALID if bad else EXIT_OK


def schema_parser(sub: Any) -> None:
    p = sub.add_parser(
        "schema",
        help="print the JSON Schema of a document",
        description="Print the JSON Schema of a load-balancer document.",
    )
    p.set_defaults(run=run_schema)


def run_schema(args: Any) -> int:
    from clbagent.model import LoadBalancer

    json.dump(LoadBalancer.model_json_schema(by_alias=True), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return EXIT_OK
