"""Health on IPVS with real packets: what a dead target still gets, and what it no longer gets.

Down target keys are fed into the plan the way health checking hands them to the agent; the
passes are the incremental ones the agent runs between two full repairs.
"""

from __future__ import annotations

import socket

from clbagent.l4 import target_key
from clbagent.l4.kernel import IpvsKernel
from clbagent.l4.reconcile import Reconciler
from tests.kernel.conftest import BACKEND_PORT, VIP4, Conn, backend_addr, client_socket, ipvsadm_rules, spread, tcp_once
from tests.kernel.test_ipvs import doc, listener
from tests.l4.build import plan_of

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
