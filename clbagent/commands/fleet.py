"""`clbagent fleet status`: what every agent fed from etcd reports, per load balancer.

It reads the desired documents (the etcd revision each one was last written at) and the status
keys the agents keep alive, and shows per load balancer which agent applied which revision.
Exit codes: 0 every agent applied the current revision of every document without errors; 3 some
agent is behind, lacks a load balancer, or reports errors (or no agent reports at all); 1 etcd
cannot be read; 2 the agent config is invalid.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from clbagent.commands import EXIT_FAILURE, EXIT_INVALID, EXIT_OK, EXIT_REFUSED, print_report
from clbagent.commands.agent import CONFIG_HELP, load_config


def add_parser(sub: Any) -> None:
    p = sub.add_parser("fleet", help="agents fed from etcd: what each one applied", description=__doc__)
    fleet_sub = p.add_subparsers(dest="fleet_command", required=True, metavar="COMMAND")
    s = fleet_sub.add_parser(
        "status",
        help="per load balancer, which agents applied which etcd revision and which report errors",
        description="Read the desired prefix and the status prefix of etcd (endpoints, prefixes and TLS files "
        "from the agent config). Exit 0 all agents current and without errors, 3 some agent behind, missing a "
        "load balancer or reporting errors, 1 etcd cannot be read, 2 invalid config.",
    )
    s.add_argument("--config", type=Path, help=CONFIG_HELP)
    s.add_argument("--json", action="store_true", help="print the fleet view as JSON")
    s.set_defaults(run=run_status)


def run_status(args: Any) -> int:
    from clbagent.agent.etcd.client import ERRORS
    from clbagent.settings import Settings

    config = load_config(args, "fleet status")
    if config is None:
        return EXIT_INVALID
    try:
        import asyncio  # here: `clbagent --help` builds this parser

        view = asyncio.run(read_fleet(config, Settings.load(config.settings)))
    except ERRORS as exc:
        endpoints = ", ".join(config.etcd_endpoints)
        print(f"clbagent fleet status: cannot read etcd ({endpoints}): {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print_report(view, args.json, render)
    return EXIT_OK if view["ok"] else EXIT_REFUSED


async def read_fleet(config: Any, settings: Any) -> dict[str, Any]:
    """Desired roots (load balancers, or sources without one) with the revision of their key, and
    each agent's report of them; tried on each endpoint in turn."""
    from clbagent.agent.etcd.client import ERRORS, Endpoints, close_quietly

    endpoints = Endpoints(config)
    for attempt in range(len(config.etcd_endpoints)):
        client = endpoints.client()
        try:
            desired = await client.get_prefix(config.etcd_prefix.encode())
            reported = await client.get_prefix(config.etcd_status_prefix.encode())
            return _view(config, settings, desired, reported)
        except ERRORS:
            endpoints.failed()
            if attempt == len(config.etcd_endpoints) - 1:
                raise
        finally:
            await close_quietly(client)
    raise AssertionError("unreachable")


def _view(config: Any, settings: Any, desired: Any, reported: Any) -> dict[str, Any]:
    from clbagent.agent.etcd.source import key_name, parse_value, root_of

    roots: dict[str, tuple[str, int]] = {}
    for kv in desired:
        key = key_name(kv.key)
        docs, _ = parse_value(key, kv.value, None, settings)
        roots.update({root_of(s, raw): (key, kv.mod_revision) for s, raw in docs} or {key: (key, kv.mod_revision)})
    agents: dict[str, dict[str, Any]] = {}
    reports: dict[str, dict[str, dict[str, Any]]] = {}
    for kv in reported:
        rest = key_name(kv.key)[len(config.etcd_status_prefix) :]
        try:
            value = json.loads(kv.value)
        except ValueError:
            continue
        agent, _, root = rest.partition("/")
        if root and isinstance(value, dict):
            reports.setdefault(str(value.get("load_balancer", root)), {})[agent] = value
        elif isinstance(value, dict):
            agents[agent] = value
    lbs: dict[str, Any] = {}
    ok = bool(agents) or not roots
    for root in sorted(set(roots) | set(reports)):
        key, revision = roots.get(root, (None, None))
        per_agent = {}
        for agent in sorted(agents):
            st = reports.get(root, {}).get(agent)
            state = _state(st, revision)
            ok = ok and state == "ok"
            per_agent[agent] = {
                "state": state,
                "applied_revision": st.get("applied_revision") if st else None,
                "generation": st.get("generation") if st else None,
                "errors": st.get("errors", []) if st else [],
            }
        lbs[root] = {"key": key, "desired_revision": revision, "agents": per_agent}
    return {"ok": ok, "revision": desired.header.revision, "agents": agents, "load_balancers": lbs}


def _state(st: dict[str, Any] | None, revision: int | None) -> str:
    if revision is None:
        return "removed" if st is None else "stale"  # still reported, no longer desired
    if st is None:
        return "missing"
    if st.get("errors"):
        return "error"
    return "ok" if st.get("applied_revision") == revision else "behind"


def render(view: dict[str, Any]) -> str:
    agents = view["agents"]
    lines = [f"etcd revision {view['revision']}: {len(agents)} agents, {len(view['load_balancers'])} documents"]
    lines.append(f"{'LOAD BALANCER':<24} {'REVISION':>8}  {'AGENT':<20} {'APPLIED':>8}  STATE")
    for root, lb in view["load_balancers"].items():
        first = True
        for agent, st in lb["agents"].items():
            if st["state"] == "removed":
                continue
            head = f"{root:<24} {_num(lb['desired_revision']):>8}" if first else " " * 33
            lines.append(f"{head}  {agent:<20} {_num(st['applied_revision']):>8}  {st['state']}")
            lines += [f"{' ' * 35}{e['code']}: {e['path']}: {e['message']}" for e in st["errors"]]
            first = False
        if first:
            lines.append(f"{root:<24} {_num(lb['desired_revision']):>8}  (no agent)")
    lines.append("")
    lines.append(f"{'AGENT':<20} {'SEEN':>8}  {'GENERATION':>10}  LAST APPLY")
    for agent, a in sorted(agents.items()):
        last = a.get("last_apply") or {}
        result = last.get("result", "-") + (f": {last['error']}" if last.get("error") else "")
        lines.append(f"{agent:<20} {_num(a.get('seen_revision')):>8}  {_num(a.get('generation')):>10}  {result}")
    lines.append("all agents current" if view["ok"] else "some agents are behind or report errors")
    return "\n".join(lines) + "\n"


def _num(value: Any) -> str:
    return "-" if value is None else str(value)
