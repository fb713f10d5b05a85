"""The deployed gateway host, checked from outside as an operator would (pytest-testinfra over SSH).

scripts/deploy-test.sh has booted the VM (systemd as PID 1) and run ansible/playbook.yml on it,
with a state directory and a status socket other than the defaults. The tests run in file order:
first what must hold after the deployment, then the playbook again (no change), a stray bad
document the agent quarantines, the playbook with a changed document (converges, no restart) and
with a bad one (refused), then the agent restarted and frozen, which must both leave the data
plane serving. Each agent start costs a minute or more under emulation, so each check that needs
one proves as much as it can.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import (
    BACKENDS,
    DOCUMENTS_DIR,
    ROLE_VARS,
    RUN,
    STATE_DIR,
    STATUS_SOCKET,
    VIP,
    vip_curl,
    vip_get,
    wait_for,
)

pytestmark = pytest.mark.timeout(2400)  # two playbook runs under software emulation

NGINX_PID_FILE = f"{STATE_DIR}/nginx/run/nginx.pid"
DOCUMENT = Path(__file__).parent / "documents" / "lb-deploy.yaml"
KEY = Path(__file__).parents[2] / "fixtures" / "certs" / "www.example.com.key"


def unit(host, *props: str) -> dict[str, str]:
    """Properties of the clbagent unit, as ``systemctl show`` reports them."""
    out = host.check_output(f"systemctl show clbagent -p {','.join(props)}")
    return dict(line.split("=", 1) for line in out.splitlines())


def nginx_master(host) -> int:
    return int(host.check_output(f"cat {NGINX_PID_FILE}"))


def ipvs_services(host) -> list[str]:
    """The IPVS virtual services and their real servers (``ipvsadm -Ln``, counters left out)."""
    lines = host.check_output("ipvsadm -Ln").splitlines()
    return [" ".join(line.split()[:3]) for line in lines if line.lstrip().startswith(("TCP", "UDP", "->"))]


def served_by(host, path: str = "/", tries: int = 10) -> set[str]:
    """The bodies of ``tries`` requests to the VIP ('' for a failed one), sent in one SSH command."""
    out = host.check_output(f'for i in $(seq {tries}); do echo "=$({vip_curl(path)})"; done')
    return {line[1:].strip() for line in out.splitlines()}


# The status socket's protocol (one request line, one JSON answer), spoken by the VM's plain python3:
# under emulation that starts in a second or two, the clbagent CLI in tens of seconds (which
# test_status_socket_answers spends once).
READ_STATUS = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"status\\n")
sys.stdout.buffer.write(b"".join(iter(lambda: s.recv(65536), b"")))
"""


def load_balancers(host) -> dict[str, dict]:
    """What the running agent's status says of each load balancer."""
    return json.loads(host.check_output(f"python3 -c {shlex.quote(READ_STATUS)} {STATUS_SOCKET}"))["load_balancers"]


def wait_restarted(host, before: dict[str, str], why: str) -> None:
    """Waits until systemd has started the agent again (a new main PID, one more restart)."""

    def restarted() -> bool:
        now = unit(host, "MainPID", "ActiveState")
        return now["ActiveState"] == "active" and now["MainPID"] not in ("0", before["MainPID"])

    wait_for(restarted, 300, why, interval=3)
    assert int(unit(host, "NRestarts")["NRestarts"]) > int(before["NRestarts"])


def test_agent_is_active_after_ready(host):
    props = unit(host, "Type", "ActiveState", "SubState", "WatchdogUSec", "NRestarts", "UnitFileState")
    assert props["Type"] == "notify"
    # A Type=notify unit is "activating" until READY=1 arrives; "active" means it was sent.
    assert (props["ActiveState"], props["SubState"]) == ("active", "running")
    assert props["WatchdogUSec"] == f"{ROLE_VARS['clbagent_watchdog_sec']}s"  # the role's drop-in
    assert props["UnitFileState"] == "enabled"
    assert host.check_output("systemctl is-enabled nginx || true") == "masked"


def test_agent_is_the_package_built_for_this_python(host):
    """The role installed the package built on the controller, which names the host's python3.X."""
    assert RUN is not None
    deb = RUN / "clbagent.deb"
    fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Version", "Depends"], capture_output=True, text=True)
    want = dict(line.split(": ", 1) for line in fields.stdout.splitlines())
    assert host.check_output("dpkg-query -W -f '${Version}' clbagent") == want["Version"]
    python = host.check_output("python3 -c 'import sys; print(\"python%d.%d\" % sys.version_info[:2])'")
    assert want["Depends"] == python
    assert host.file("/usr/local/bin/clbagent").linked_to == "/opt/clbagent/bin/clbagent"


def test_unit_follows_the_configured_paths(host):
    """The role's drop-in lets the agent write where agent.yaml says, and only there."""
    writable = unit(host, "ReadWritePaths")["ReadWritePaths"].split()
    assert STATE_DIR != "/var/lib/clbagent" and STATE_DIR in writable
    assert str(Path(STATUS_SOCKET).parent) in writable
    assert "/var/lib/clbagent" not in writable
    assert host.file(NGINX_PID_FILE).exists
    assert host.file(f"/proc/{nginx_master(host)}").is_directory
    assert host.check_output("find /var/lib/clbagent -mindepth 1") == ""
    assert host.file(STATE_DIR).mode == 0o711


def test_nginx_serves_the_example_through_its_vip(host, backends):
    expected = {f"backend-{ip}" for ip in backends}
    wait_for(lambda: served_by(host) == expected, 120, "both backends behind the VIP")
    assert vip_get(host, scheme="https", port=8443) == f"backend-{BACKENDS[0]}"


def test_nginx_runs_dynamic_upstreams_and_the_metrics_module(host):
    """The role's packages give the gateway nginx's Lua module, so the agent serves dynamic upstreams;
    clbagent's metrics module from the package was built for this nginx and is loaded too."""
    maps = host.check_output(f"cat /proc/{nginx_master(host)}/maps")
    assert "ngx_http_lua_module.so" in maps
    assert "/opt/clbagent/" in maps and "ngx_http_clb_metrics_module.so" in maps


def test_l4_services_are_in_the_ipvs_table(host):
    services = ipvs_services(host)
    assert f"TCP {VIP}:15432 wrr" in services
    assert f"UDP {VIP}:10053 wlc" in services
    assert f"-> {BACKENDS[1]}:5432 Masq" in services


def test_status_socket_answers(host):
    socket = host.file(STATUS_SOCKET)
    assert socket.is_socket and socket.mode == 0o600 and socket.user == "root"
    status = json.loads(host.check_output("clbagent status --json"))  # the operator's command
    assert status["load_balancers"]["lb-deploy"]["result"] == "applied"


def test_gateway_kernel_settings(host):
    assert host.sysctl("net.ipv4.tcp_timestamps") == 0
    assert "net.ipv4.tcp_timestamps = 0" in host.file("/etc/sysctl.d/60-clbagent.conf").content_string


def test_metrics_listen_on_loopback_only(host):
    listening = [line.split()[3] for line in host.check_output("ss -ltnH").splitlines()]
    metrics = [address for address in listening if address.endswith(":9489")]
    assert metrics == ["127.0.0.1:9489"]
    assert "# TYPE" in host.check_output("curl -sf http://127.0.0.1:9489/metrics")


def stat(host, paths: list[str]) -> str:
    """``MODE USER GROUP PATH`` of each path, in one SSH command."""
    return host.check_output(f"stat -c '%a %U %G %n' {' '.join(map(shlex.quote, paths))}")


def test_private_keys_are_root_only(host):
    keys = host.check_output(f"find {STATE_DIR} /etc/clbagent -name '*.key' -type f").split()
    tls_keys = [k for k in keys if Path(k).parent.name in ("certs", "documents", "staging")]
    assert any(k.startswith(f"{STATE_DIR}/nginx/") for k in tls_keys), keys
    owners = {path: rest for rest, path in (line.rsplit(" ", 1) for line in stat(host, keys).splitlines())}
    assert owners == dict.fromkeys(keys, "600 root root"), owners
    dirs = sorted({str(Path(key).parent) for key in tls_keys})
    parents = {path: rest for rest, path in (line.rsplit(" ", 1) for line in stat(host, dirs).splitlines())}
    assert parents == dict.fromkeys(dirs, "700 root root"), parents


def test_second_run_changes_nothing(playbook):
    play = playbook()
    assert play.returncode == 0, play.output[-3000:]
    assert play.recap["changed"] == 0, play.output[-3000:]


def test_stray_bad_document_is_quarantined_while_the_others_serve(host, backends):
    """A bad document that reaches the directory without the playbook: the agent keeps serving."""
    pid = unit(host, "MainPID")["MainPID"]
    serving = served_by(host)
    stray = DOCUMENT.read_text().replace("LoadBalancerId: lb-deploy", "LoadBalancerId: lb-stray")
    stray = stray.replace("127.0.10.1", "127.0.10.2").replace("Port: 8080", "Port: 70000")
    host.run_expect([0], f"cat > {DOCUMENTS_DIR}/lb-stray.yaml <<'EOF'\n{stray}EOF")

    def quarantined() -> list[dict]:
        stray_status = load_balancers(host).get("lb-stray", {})
        return stray_status.get("errors", []) if stray_status.get("result") == "quarantined" else []

    errors = wait_for(quarantined, 120, "the agent to quarantine lb-stray")
    assert [e["path"] for e in errors] == ["lb-stray/Listeners[0]/Port"], errors
    assert load_balancers(host)["lb-deploy"]["result"] == "applied"
    assert served_by(host) == serving and "" not in serving
    assert unit(host, "MainPID")["MainPID"] == pid


def edited_vars(replace: dict[Path, list[Path]], name: str) -> Path:
    """A copy of the test's Ansible variables with some shipped files replaced by others."""
    assert RUN is not None
    text = (RUN / "vars.yml").read_text()
    for old, new in replace.items():
        text = text.replace(f"  - {old}\n", "".join(f"  - {path}\n" for path in new))
    path = RUN / f"vars-{name}.yml"
    path.write_text(text)
    return path


def test_changed_document_is_applied_without_restart(host, playbook, backends, tmp_path):
    before = unit(host, "MainPID")["MainPID"]
    serving = served_by(host)
    edited = tmp_path / DOCUMENT.name
    first_target = "{EniIp: 127.0.20.1, Port: 9001, Weight: 10}"
    assert first_target in DOCUMENT.read_text()
    edited.write_text(DOCUMENT.read_text().replace(first_target, first_target.replace("10}", "0}")))
    # --check --diff with a changed key as well: reported as a change, the key not printed.
    other_key = tmp_path / "keys" / KEY.name
    other_key.parent.mkdir()
    other_key.write_text((KEY.parent / "wildcard.example.net.key").read_text())
    check = playbook("--check", "--diff", "-e", f"@{edited_vars({DOCUMENT: [edited], KEY: [other_key]}, 'check')}")
    assert check.returncode == 0 and check.recap["changed"] > 0, check.output[-3000:]
    assert other_key.read_text().splitlines()[1] not in check.output
    assert served_by(host) == serving
    # The real run: every request now goes to the second backend, and the agent was not restarted;
    # the stray document is gone (not listed), so nothing is quarantined any more.
    play = playbook("-e", f"@{edited_vars({DOCUMENT: [edited]}, 'edited')}")
    assert play.returncode == 0, play.output[-3000:]
    wait_for(lambda: served_by(host) == {f"backend-{backends[1]}"}, 180, "the edited weights to be served")
    assert unit(host, "MainPID")["MainPID"] == before
    listed = yaml.safe_load((RUN / "vars-edited.yml").read_text())["clbagent_documents"]
    assert sorted(host.check_output(f"ls {DOCUMENTS_DIR}").split()) == sorted(Path(p).name for p in listed)
    wait_for(lambda: set(load_balancers(host)) == {"lb-deploy"}, 60, "lb-stray to leave the status")
    status = load_balancers(host)["lb-deploy"]
    assert status["result"] == "applied" and not status["errors"], status


def test_bad_document_fails_the_play_and_host_keeps_serving(host, playbook, backends, tmp_path):
    bad = tmp_path / "lb-bad.yaml"
    text = DOCUMENT.read_text().replace("LoadBalancerId: lb-deploy", "LoadBalancerId: lb-bad")
    bad.write_text(text.replace("Port: 8080", "Port: 70000"))
    documents_before = host.check_output("ls -l --time-style=+%s.%N /etc/clbagent/documents")
    serving = served_by(host)
    play = playbook("-e", f"@{edited_vars({DOCUMENT: [DOCUMENT, bad]}, 'bad')}")
    assert play.returncode != 0
    # The agent's own error line: Code.Detail: path: sentence.
    assert re.search(r"\w+\.\w+: lb-bad/Listeners\[0\]/Port: ", play.output), play.output[-3000:]
    assert host.check_output("ls -l --time-style=+%s.%N /etc/clbagent/documents") == documents_before
    assert served_by(host) == serving


def test_restart_keeps_nginx_and_ipvs(host, backends):
    """SIGTERM ends the agent alone (a clean stop); the next start adopts the same nginx master."""
    master = nginx_master(host)
    services = ipvs_services(host)
    serving = served_by(host)
    before = unit(host, "MainPID", "InvocationID")
    # Count the IPVS services several times a second while the agent restarts: a flush shows as 0.
    host.run_expect(
        [0],
        "systemd-run --unit=clb-ipvs-watch sh -c "
        "'while :; do ipvsadm -Ln | grep -cE \"^(TCP|UDP)\" >>/run/clb-ipvs-watch; sleep 0.1; done'",
    )
    host.run_expect([0], "systemctl restart clbagent")
    host.run_expect([0], "systemctl stop clb-ipvs-watch")
    counts = host.check_output("cat /run/clb-ipvs-watch").split()
    assert counts and set(counts) == {"2"}, counts
    # The stopped run ended on its own after SIGTERM, with exit status 0 (not killed, not failed).
    stopped = host.check_output(f"journalctl -o cat --no-pager INVOCATION_ID={before['InvocationID']}")
    assert "Deactivated successfully" in stopped and "Failed with result" not in stopped, stopped[-2000:]
    assert unit(host, "ActiveState")["ActiveState"] == "active"
    assert unit(host, "MainPID")["MainPID"] != before["MainPID"]
    assert nginx_master(host) == master
    assert ipvs_services(host) == services
    assert served_by(host) == serving and "" not in serving


def test_watchdog_restarts_a_frozen_agent(host, backends):
    props = unit(host, "MainPID", "NRestarts")
    master = nginx_master(host)
    serving = served_by(host)
    host.run_expect([0], f"kill -STOP {props['MainPID']}")
    wait_restarted(host, props, "systemd's watchdog to restart the frozen agent")
    assert "watchdog" in host.check_output("journalctl -u clbagent --no-pager -n 200").lower()
    assert nginx_master(host) == master
    assert served_by(host) == serving and "" not in serving
