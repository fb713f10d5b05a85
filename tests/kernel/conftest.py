"""Kernel tests: IPVS on a real kernel with real packets. They run only inside the VM harness
(scripts/vm-test.sh sets CLB_IN_VM=1); on the host they are skipped, inside the VM they fail.

Topology (built once per session, the VM's root namespace is the director):

    cli (10.10.0.2, fd10::2) --veth-- director (10.10.0.1, fd10::1; VIPs on dummy clb0)
    bN  (10.20.N.2, fd20:N::2) --veth-- director (10.20.N.1, fd20:N::1)     N = 1, 2, 3

Each backend runs tests/kernel/backend.py (TCP and UDP on port 8080, answers with its name).
Client sockets are opened inside the ``cli`` namespace from this process (setns around socket()).
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

IN_VM = os.environ.get("CLB_IN_VM") == "1"
HERE = Path(__file__).parent
BACKENDS = ("b1", "b2", "b3")
VIP4, VIP6 = "10.99.0.1", "fd99::1"
FOREIGN_VIP = "10.77.0.1"
BACKEND_PORT = 8080
CLONE_NEWNET = 0x40000000


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IN_VM:
        return
    skip = pytest.mark.skip(reason="needs a kernel with ip_vs: runs inside the VM (scripts/vm-test.sh)")
    for item in items:
        if str(item.fspath).startswith(str(HERE)):
            item.add_marker(skip)


def sh(cmd: str, check: bool = True) -> str:
    out = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise RuntimeError(f"{cmd}: {out.stderr.strip()}")
    return out.stdout


def backend_addr(n: int, v6: bool = False) -> str:
    return f"fd20:{n}::2" if v6 else f"10.20.{n}.2"


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def socket_in(ns: str, kind: int = socket.SOCK_STREAM, v6: bool = False) -> socket.socket:
    """A socket living in network namespace ``ns``, opened from this process."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            return socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, kind)
        finally:
            _setns(home)
    finally:
        os.close(home)
        os.close(target)


def client_socket(kind: int = socket.SOCK_STREAM, v6: bool = False) -> socket.socket:
    """A socket living in the client namespace."""
    return socket_in("cli", kind, v6)


class Conn:
    """A held TCP connection from the client to a VIP; ``ask`` returns the answering backend."""

    def __init__(self, vip: str, port: int, timeout: float = 5.0):
        self.sock = client_socket(v6=":" in vip)
        self.sock.settimeout(timeout)
        self.sock.connect((vip, port))
        self.file = self.sock.makefile("rb")
        self.backend = self.ask()

    def ask(self) -> str:
        self.sock.sendall(b"who\n")
        line = self.file.readline()
        if not line:
            raise ConnectionResetError("connection closed by peer")
        return line.decode().strip()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def tcp_once(vip: str, port: int) -> str:
    conn = Conn(vip, port)
    try:
        return conn.backend
    finally:
        conn.close()


def udp_once(vip: str, port: int, timeout: float = 3.0) -> str:
    sock = client_socket(socket.SOCK_DGRAM, v6=":" in vip)
    try:
        sock.settimeout(timeout)
        sock.sendto(b"who", (vip, port))
        data, _ = sock.recvfrom(100)
        return data.decode().strip()
    finally:
        sock.close()


def spread(fn: object, vip: str, port: int, n: int) -> Counter[str]:
    return Counter(fn(vip, port) for _ in range(n))  # type: ignore[operator]


def ipvsadm_rules(vips: tuple[str, ...] = (VIP4, VIP6)) -> set[str]:
    """``ipvsadm -Sn`` lines of services on the given VIPs."""
    wanted = tuple(f" {v}:" for v in vips if ":" not in v) + tuple(f" [{v}]:" for v in vips if ":" in v)
    return {line.strip() for line in sh("ipvsadm -Sn").splitlines() if any(w in line for w in wanted)}


def _topology() -> None:
    sh("modprobe ip_vs; modprobe ip_vs_wrr; modprobe ip_vs_wlc; modprobe veth; modprobe dummy")
    sh("ip link set lo up")
    sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1")
    links = [("cli", "10.10.0", "fd10:")] + [(b, f"10.20.{i}", f"fd20:{i}:") for i, b in enumerate(BACKENDS, 1)]
    for ns, v4, v6 in links:
        sh(f"ip netns add {ns}")
        sh(f"ip link add d-{ns} type veth peer name eth0 netns {ns}")
        sh(f"ip addr add {v4}.1/24 dev d-{ns} && ip -6 addr add {v6}:1/64 dev d-{ns} nodad && ip link set d-{ns} up")
        x = f"ip netns exec {ns}"
        sh(f"{x} ip link set lo up && {x} ip link set eth0 up")
        sh(f"{x} ip addr add {v4}.2/24 dev eth0 && {x} ip -6 addr add {v6}:2/64 dev eth0 nodad")
        sh(f"{x} ip route add default via {v4}.1 && {x} ip -6 route add default via {v6}:1")
    for b in BACKENDS:
        subprocess.Popen(
            ["ip", "netns", "exec", b, sys.executable, str(HERE / "backend.py"), b, str(BACKEND_PORT)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 120  # software emulation on a busy host is slow
    for i, _b in enumerate(BACKENDS, 1):
        while sh(f"ip netns exec b{i} ss -Htln sport = :{BACKEND_PORT}").strip() == "":
            if time.monotonic() > deadline:
                raise RuntimeError("backends did not start")
            time.sleep(0.2)


@pytest.fixture(scope="session")
def topology() -> Iterator[None]:
    if not IN_VM:
        pytest.skip("not in the VM")
    _topology()
    from clbagent.l4 import host

    host.apply_sysctls()
    host.sync_vips([VIP4, VIP6])
    yield


@pytest.fixture
def kernel(topology: None) -> Iterator[object]:
    """A fresh IPVS channel; the test VIPs' services are cleared before each test (test only:
    the product never flushes)."""
    from clbagent.l4.kernel import IpvsKernel

    sh("ipvsadm -C")
    k = IpvsKernel()
    yield k
    k.close()
