"""Fixtures of the deployment tests: the VM that scripts/deploy-test.sh booted and deployed.

These tests run only from that script, which sets CLB_DEPLOY_RUN to its run directory (the VM's
ssh_config, the Ansible inventory and variables); anywhere else they are skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RUN = Path(os.environ["CLB_DEPLOY_RUN"]) if os.environ.get("CLB_DEPLOY_RUN") else None
# The role's variables as the script set them (paths other than the defaults).
ROLE_VARS = yaml.safe_load((RUN / "vars.yml").read_text()) if RUN else {}
STATE_DIR = ROLE_VARS.get("clbagent_state_dir", "/var/lib/clbagent")
STATUS_SOCKET = ROLE_VARS.get("clbagent_status_socket", "/run/clbagent/status.sock")
DOCUMENTS_DIR = ROLE_VARS.get("clbagent_documents_dir", "/etc/clbagent/documents")
VIP = "127.0.10.1"
BACKENDS = ("127.0.20.1", "127.0.20.2")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if RUN is None:
        skip = pytest.mark.skip(reason="needs the VM of scripts/deploy-test.sh (CLB_DEPLOY_RUN)")
        for item in items:
            if item.path.is_relative_to(Path(__file__).parent):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def host():
    """The deployed VM as a testinfra host (commands run as root over SSH)."""
    testinfra = pytest.importorskip("testinfra")
    assert RUN is not None
    return testinfra.get_host("ssh://clbvm", ssh_config=str(RUN / "ssh_config"))


def wait_for(check: Callable[[], object], timeout: float, what: str, interval: float = 1.0) -> object:
    """Poll ``check`` until it returns something true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Play:
    """The outcome of one ansible-playbook run."""

    returncode: int
    output: str

    @property
    def recap(self) -> dict[str, int]:
        """The host's PLAY RECAP counters (ok, changed, failed, ...)."""
        line = re.search(r"^clbvm\s+:(.*)$", self.output, re.MULTILINE)
        assert line, self.output[-3000:]
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line.group(1))}


@pytest.fixture(scope="session")
def playbook() -> Callable[..., Play]:
    """Runs the sample playbook against the VM with the deployment test's variables."""
    assert RUN is not None
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible" / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}

    def run(*args: str) -> Play:
        cmd = ["ansible-playbook", "-i", str(RUN / "inventory.ini"), "-e", f"@{RUN / 'vars.yml'}", *args]
        done = subprocess.run(
            [*cmd, str(ROOT / "ansible" / "playbook.yml")],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        return Play(done.returncode, done.stdout + done.stderr)

    return run


@pytest.fixture(scope="session")
def backends(host) -> Iterator[tuple[str, ...]]:
    """Two HTTP backends inside the VM (transient systemd units), each answering with its address."""
    for ip in BACKENDS:
        host.run_expect([0], f"mkdir -p /srv/{ip} && echo backend-{ip} > /srv/{ip}/index.html")
        host.run_expect(
            [0],
            f"systemd-run --unit=clb-backend-{ip} --property=Restart=always "
            f"python3 -m http.server --bind {ip} --directory /srv/{ip} 9001",
        )
    for ip in BACKENDS:
        wait_for(lambda ip=ip: host.run(f"curl -sf http://{ip}:9001/").rc == 0, 120, f"backend {ip}")
    yield BACKENDS
    for ip in BACKENDS:
        host.run(f"systemctl stop clb-backend-{ip}")


def vip_curl(path: str = "/", scheme: str = "http", port: int = 8080) -> str:
    """The shell command of one request to the VIP (www.example.com), run inside the VM."""
    return f"curl -sfk --max-time 10 --resolve www.example.com:{port}:{VIP} {scheme}://www.example.com:{port}{path}"


def vip_get(host, path: str = "/", scheme: str = "http", port: int = 8080) -> str:
    """The body of one request to the VIP, or '' when it failed."""
    result = host.run(vip_curl(path, scheme, port))
    return result.stdout.strip() if result.rc == 0 else ""
