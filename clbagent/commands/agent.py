"""`clbagent apply`, `run`, `status` and `config`: thin wrappers around :mod:`clbagent.agent`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from clbagent.commands import EXIT_FAILURE, EXIT_INVALID, EXIT_OK, EXIT_REFUSED, print_issues, print_report

CONFIG_HELP = "agent config YAML (default: /etc/clbagent/agent.yaml if it exists, else every default)"


def _config_path(value: Path | None) -> Path | None:
    from clbagent.agent.config import DEFAULT_CONFIG

    if value is not None:
        return value
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


def load_config(args: Any, command: str):
    """The agent config, with its validation settings file checked too; None after an error."""
    from clbagent.agent.config import AgentConfig, ConfigError
    from clbagent.settings import Settings, SettingsError

    try:
        config = AgentConfig.load(_config_path(args.config))
        Settings.load(config.settings)
    except (ConfigError, SettingsError) as exc:
        print(f"clbagent {command}: {exc}", file=sys.stderr)
        return None
    return config


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "apply",
        help="apply documents to this host once (validate, test, switch, verify, roll back)",
        description="Apply the desired state once: invalid documents keep their last good version "
        "(the others are applied), nginx is reloaded only if its configuration changed, every reload is "
        "verified and rolled back on failure. Exit 0 applied or nothing to do, 2 some documents invalid "
        "(the others applied), 3 failed and rolled back, 1 the agent could not run.",
    )
    p.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="documents (default: the config's documents)")
    p.add_argument("--config", type=Path, help=CONFIG_HELP)
    p.add_argument("--json", action="store_true", help="print the apply report as JSON")
    p.set_defaults(run=run_apply)

    p = sub.add_parser(
        "run",
        help="run as the agent: watch the documents, apply changes, repair drift",
        description="The daemon: serves the last good state at once, applies document changes (coalesced), "
        "re-syncs periodically (IPVS drift, a dead nginx master, hand-edited generated files), re-reads its "
        "config on SIGHUP, stops on SIGTERM leaving nginx and IPVS serving. systemd Type=notify aware.",
    )
    p.add_argument("--config", type=Path, help=CONFIG_HELP)
    p.set_defaults(run=run_daemon)

    p = sub.add_parser(
        "status",
        help="show what the running agent serves",
        description="Ask the running agent over its root-only unix socket: per load balancer the applied "
        "revision, generation, last apply and errors; the nginx master, workers and draining workers; IPVS. "
        "Exit 0, or 1 when no agent answers.",
    )
    p.add_argument("--config", type=Path, help=CONFIG_HELP)
    p.add_argument("--socket", type=Path, help="the status socket (default: from the config)")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.add_argument(
        "--upstreams",
        action="store_true",
        help="per rule, the members nginx really holds next to the desired ones (dynamic upstreams); "
        "exit 3 when they differ",
    )
    p.set_defaults(run=run_status)

    p = sub.add_parser(
        "config",
        help="print the agent configuration (defaults, or a file with defaults filled in)",
        description="Print the agent configuration as YAML: every key with its default (--defaults), or the "
        "given file checked and completed. Exit 2 when the file is invalid.",
    )
    p.add_argument("--config", type=Path, help=CONFIG_HELP)
    p.add_argument("--defaults", action="store_true", help="print the defaults, ignoring any file")
    p.set_defaults(run=run_config)


def run_config(args: Any) -> int:
    from clbagent.agent.config import AgentConfig

    if args.defaults:
        sys.stdout.write(AgentConfig().to_yaml())
        return EXIT_OK
    config = load_config(args, "config")
    if config is None:
        return EXIT_INVALID
    sys.stdout.write(config.to_yaml())
    return EXIT_OK


def run_apply(args: Any) -> int:
    from clbagent.agent.engine import Engine
    from clbagent.agent.source import FileSource
    from clbagent.agent.store import AgentLockedError
    from clbagent.nginx.controller import NginxError

    config = load_config(args, "apply")
    if config is None:
        return EXIT_INVALID
    if config.source == "etcd" and not args.paths:
        print(
            "clbagent apply: this config reads its documents from etcd, which `clbagent run` follows; name "
            "document files to apply them once",
            file=sys.stderr,
        )
        return EXIT_INVALID
    engine = Engine(config)
    try:
        engine.store.lock()
    except AgentLockedError as exc:
        print(f"clbagent apply: {exc}; the running agent applies {config.documents} itself", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"clbagent apply: cannot use {config.state_dir}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        engine.start()
        snap = FileSource(args.paths or [config.documents], config.cert_dir, engine.settings).read()
        report = engine.apply(snap.docs, snap.issues, snap.failed_files)
    except NginxError as exc:
        print(f"clbagent apply: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        engine.l4.close()
        engine.store.unlock()
    quarantined = bool(report.quarantined)
    if args.json:
        json.dump(_report_dict(report), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print_issues(report.issues, False)
        print(_summary(report))
    if not report.ok:
        return EXIT_REFUSED
    return EXIT_INVALID if quarantined else EXIT_OK


def _summary(report: Any) -> str:
    if report.result == "nothing to do":
        text = f"nothing to do: generation {report.generation} already serves this state"
    elif report.result == "applied":
        changed = ", ".join(report.changed) or "no load balancer"
        text = f"applied generation {report.generation} (changed: {changed})"
    else:
        kept = f"generation {report.generation} keeps serving" if report.generation else "nothing was served before"
        text = f"{report.result}: {report.error}; {kept}"
    if report.quarantined:
        text += f"; kept at their last good version: {', '.join(sorted(report.quarantined))}"
    return text


def _report_dict(report: Any) -> dict[str, Any]:
    return {
        "result": report.result,
        "task_status": report.task_status,
        "generation": report.generation,
        "changed": report.changed,
        "error": report.error or None,
        "quarantined": {k: [i.to_dict() for i in v] for k, v in report.quarantined.items()},
        "issues": [i.to_dict() for i in report.issues],
        "timings": report.timings,
        "nginx_tests": report.nginx_tests,
    }


def run_daemon(args: Any) -> int:
    from clbagent.agent.daemon import run_agent

    if load_config(args, "run") is None:
        return EXIT_INVALID
    return run_agent(_config_path(args.config))


def ask_agent(args: Any, command: str, what: str) -> dict[str, Any] | int:
    """The running agent's answer to ``what`` (on --socket, or the config's status socket), or the
    exit code once the reason there is none has been printed."""
    from clbagent.agent.status import StatusUnavailableError, request

    socket_path = args.socket
    if socket_path is None:
        config = load_config(args, command)
        if config is None:
            return EXIT_INVALID
        socket_path = config.status_socket
    try:
        return request(socket_path, what)
    except StatusUnavailableError as exc:
        print(f"clbagent {command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def run_status(args: Any) -> int:
    status = ask_agent(args, "status", "upstreams" if args.upstreams else "status")
    if isinstance(status, int):
        return status
    if args.upstreams:
        report = status["upstreams"]
        print_report(report, args.json, format_upstreams)
        differ = (
            report.get("error")
            or report.get("unexpected")
            or any(not u["in_sync"] for lb in report["load_balancers"].values() for u in lb.values())
        )
        return EXIT_REFUSED if differ else EXIT_OK
    print_report(status, args.json, format_status)
    return EXIT_OK


def format_status(status: dict[str, Any]) -> str:
    nginx, ipvs, agent = status["nginx"], status["ipvs"], status["agent"]
    lines = [
        f"agent     pid {agent['pid']}, documents {agent['documents']}",
        f"nginx     master {nginx['master_pid'] or 'NOT RUNNING'}, generation {nginx['generation']}, "
        f"{len(nginx['workers'])} workers, {nginx['draining_workers']} draining",
        "ipvs      " + (f"{ipvs['services']} services" if ipvs["available"] else f"unavailable: {ipvs['error']}"),
    ]
    last = agent.get("last_apply")
    if agent.get("task_status") == 2:
        lines.append("apply     in progress")
    if last:
        lines.append(f"last      {last['result']}" + (f": {last['error']}" if last.get("error") else ""))
    lines.append("")
    lines.append(f"{'LOAD BALANCER':32} {'RESULT':12} {'REVISION':16} {'GEN':>5}  ERRORS")
    for lb_id, lb in sorted(status["load_balancers"].items()):
        errors = lb.get("errors") or []
        lines.append(
            f"{lb_id[:32]:32} {lb['result']:12} {lb.get('revision') or '-'!s:16} {lb.get('generation')!s:>5}  "
            + (f"{errors[0]['code']}: {errors[0]['path']}: {errors[0]['message']}" if errors else "")
            + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else "")
        )
    return "\n".join(lines) + "\n"


def format_upstreams(report: dict[str, Any]) -> str:
    if report["mode"] == "static":
        return "upstreams: static mode, the members are compiled into the nginx configuration\n"
    if report.get("error"):
        return f"upstreams: {report['error']}\n"
    lines = [f"{'LOAD BALANCER / UPSTREAM':60} {'MEMBER':24} {'WEIGHT':>6} {'HELD':>6} {'DOWN':>5} {'ACTIVE':>6}"]
    for lb_id, upstreams in sorted(report["load_balancers"].items()):
        for name, up in sorted(upstreams.items()):
            flag = "" if up["in_sync"] else "   << DIFFERS"
            lines.append(f"{lb_id}/{name}{flag}")
            for m in up["members"]:
                held = "-" if m["held_weight"] is None else m["held_weight"]
                lines.append(
                    f"{'':60} {m['endpoint']:24} {m['weight']:>6} {held!s:>6} {'yes' if m['down'] else 'no':>5} "
                    f"{m['active']:>6}"
                )
    for name in report.get("unexpected", []):
        lines.append(f"{name}   << held by nginx, not desired")
    return "\n".join(lines) + "\n"
