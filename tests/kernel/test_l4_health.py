"""Health on IPVS with real packets: what a dead target still gets, and what it no longer gets.

Down target keys are fed into the plan the way health checking hands them to the agent; the
passes are the incremental ones the agent runs between two full repairs.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from clbagent.l4 import plan_ipvs, target_key
from clbagent.l4.kernel import IpvsKernel
from clbagent.l4.reconcile import Reconciler
from tests.kernel.conftest import (
    BACKEND_PORT,
    VIP4,
    Conn,
    backend_addr,
    client_socket,
    ipvsadm_rules,
    socket_in,
    spread,
    tcp_once,
)
from tests.kernel.test_ipvs import doc, listener
from tests.l4.build import plan_of, state_of, tcp

LISTENERS = {"lbl-tcp-80": 80, "lbl-tcp-81": 81, "lbl-udp-53": 53}


def _plan(down: set[str]) -> object:
    return plan_of(
        doc(listener(80, (1, 1), SessionExpireTime=300), listener(81, (1, 1)), listener(53, (1, 1), protocol="UDP")),
        down=frozenset(down),
    )


def _key(listener_id: str, backend: str) -> str:
    return target_key("lb-l4", listener_id, f"{backend_addr(int(backend[1:]))}:{BACKEND_PORT}")


def _flow_replies(sock: socket.socket, tries: int = 4) -> list[str]:
    """Datagrams sent on one client socket (one UDP flow); the names of the backends that answered.
    The first datagram after an eviction may be dropped while the kernel expires the flow."""
    replies = []
    for _ in range(tries):
        sock.sendto(b"who", (VIP4, 53))
        try:
            replies.append(sock.recvfrom(100)[0].decode().strip())
        except TimeoutError:
            continue
    return replies


def test_a_dead_target_gets_no_new_connection_no_persistent_client_and_no_datagram_of_its_flow(
    kernel: IpvsKernel,
) -> None:
    rec = Reconciler(kernel)
    assert rec.run(_plan(set())).ok
    held = Conn(VIP4, 80)  # persistent listener: this client is pinned to `dead` from now on
    dead = held.backend
    alive = "b2" if dead == "b1" else "b1"
    flow = client_socket(socket.SOCK_DGRAM)
    flow.settimeout(1.5)
    try:
        flow.sendto(b"who", (VIP4, 53))
        udp_dead = flow.recvfrom(100)[0].decode().strip()
        udp_alive = "b2" if udp_dead == "b1" else "b1"

        down = {_key("lbl-tcp-80", dead), _key("lbl-tcp-81", dead), _key("lbl-udp-53", udp_dead)}
        report = rec.run(_plan(down))
        assert report.ok and not report.full, report.errors()
        assert sorted((o.kind, o.dest.weight, o.reason) for o in report.ops if o.dest) == [
            ("del_dest", 1, "target down"),
            ("set_dest", 0, "changed"),
            ("set_dest", 0, "changed"),
        ]
        assert held.ask() == dead  # health alone never resets an established TCP connection
        assert set(spread(tcp_once, VIP4, 80, 4)) == {alive}  # the persistence template expired
        assert set(spread(tcp_once, VIP4, 81, 4)) == {alive}
        replies = _flow_replies(flow)
        assert replies and set(replies) == {udp_alive}, replies  # the existing flow moved

        assert rec.run(_plan(set())).ok  # recovery: back at full weight, the UDP one re-added
        assert ipvsadm_rules() == set(_plan(set()).to_ipvsadm().splitlines())
        assert set(spread(tcp_once, VIP4, 81, 6)) == {"b1", "b2"}

        everyone = {_key(lis, b) for lis in LISTENERS for b in ("b1", "b2")}
        assert rec.run(_plan(everyone)).ops == []  # all dead: all alive, nothing to change
        assert set(spread(tcp_once, VIP4, 81, 6)) == {"b1", "b2"}
    finally:
        flow.close()
        held.close()


class _Backend:
    """A TCP backend in namespace b3 served from this process (a new process costs many seconds
    in the VM): answers every line with ``b3x``. ``stop`` closes the port, ``start`` reopens it."""

    def __init__(self, port: int):
        self.port = port
        self.sock: socket.socket | None = None

    def start(self) -> None:
        sock = socket_in("b3")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((backend_addr(3), self.port))
        sock.listen(64)
        self.sock = sock
        threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as lines:
                for _line in lines:
                    conn.sendall(b"b3x\n")

    def stop(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):  # wakes the accept() of the serving thread
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()
            self.sock = None


def test_a_backend_that_really_dies_leaves_ipvs_within_the_bound_and_comes_back(kernel: IpvsKernel) -> None:
    """The health monitor probes the targets; its down keys go into the plan; an incremental pass
    takes them to the kernel. Bounds: IntervalTime x UnHealthNum + 1 s, IntervalTime x HealthNum + 1 s."""
    from clbagent.health.monitor import Monitor
    from clbagent.health.spec import derive
    from clbagent.health.state import ALIVE, HealthStore

    interval, rise, fall, port = 5, 2, 2, 9090
    check = {"HealthSwitch": 1, "IntervalTime": interval, "HealthNum": rise, "UnHealthNum": fall, "TimeOut": 2}
    document = doc(tcp(82, [(backend_addr(1), BACKEND_PORT, 1), (backend_addr(3), port, 1)], HealthCheck=check))
    state = state_of(document)
    dead_key = target_key("lb-l4", "lbl-tcp-82", f"{backend_addr(3)}:{port}")
    backend = _Backend(port)
    backend.start()
    rec = Reconciler(kernel)
    assert rec.run(plan_ipvs(state)).ok
    down: list[frozenset[str]] = [frozenset()]
    monitor: list[Monitor] = []
    stop = threading.Event()

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        m = Monitor(loop, HealthStore(Path(tempfile.mkdtemp(prefix="clb-health-"))), lambda _t, d: down.append(d))
        m.update(derive(state.load_balancers(), state.settings))
        monitor.append(m)
        while not stop.is_set():
            await asyncio.sleep(0.1)
        m.close()

    thread = threading.Thread(target=asyncio.run, args=(probe(),), daemon=True)
    thread.start()

    def follow(until: Callable[[], bool], limit: float) -> float:
        """Apply every new down set to the kernel until ``until()`` holds for what was applied;
        the seconds it took."""
        start, applied = time.monotonic(), down[-1]
        while True:
            if down[-1] != applied:
                applied = down[-1]
                assert rec.run(plan_ipvs(state, applied)).ok
            if until():
                return time.monotonic() - start
            assert time.monotonic() - start < limit + 10, f"not within {limit} s: {down[-1]}"
            time.sleep(0.1)

    try:
        follow(lambda: bool(monitor) and all(r["state"] == ALIVE for r in monitor[0].rows()), interval * (rise + 1))
        backend.stop()
        took = follow(lambda: dead_key in down[-1], interval * fall + 1)
        assert took <= interval * fall + 1 + 2, took  # + 2 s: the emulated VM is slow
        assert set(spread(tcp_once, VIP4, 82, 4)) == {"b1"}
        backend.start()
        took = follow(lambda: dead_key not in down[-1], interval * rise + 1)
        assert took <= interval * rise + 1 + 2, took
        assert set(spread(tcp_once, VIP4, 82, 6)) == {"b1", "b3x"}
    finally:
        stop.set()
        thread.join(10)
        backend.stop()
