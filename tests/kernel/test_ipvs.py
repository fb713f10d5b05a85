"""IPVS on a real kernel with real packets: client -> director (IPVS NAT) -> backends in namespaces."""

from __future__ import annotations

import errno
import time

import pytest

from clbagent.l4 import IpvsPlan, ServiceKey, VirtualService
from clbagent.l4.host import SyncConfig, configure_ipvs, ensure_dummy, vips_on
from clbagent.l4.kernel import IpvsError, IpvsKernel
from clbagent.l4.reconcile import Reconciler
from tests.kernel.conftest import (
    BACKEND_PORT,
    FOREIGN_VIP,
    VIP4,
    VIP6,
    Conn,
    backend_addr,
    ipvsadm_rules,
    sh,
    spread,
    tcp_once,
    udp_once,
)
from tests.l4.build import lb_doc, plan_of, tcp


def listener(port: int, weights: tuple[int, ...], v6: bool = False, protocol: str = "TCP", **extra: object) -> dict:
    targets = [(backend_addr(i, v6), BACKEND_PORT, w) for i, w in enumerate(weights, 1)]
    return tcp(port, targets, protocol=protocol, **extra)


def doc(*listeners: dict, v6: bool = False) -> dict:
    vip = VIP6 if v6 else VIP4
    return lb_doc(list(listeners), vips=(vip,), **({"AddressIPVersion": "IPv6"} if v6 else {}))


def passes(rec: Reconciler, plan: IpvsPlan) -> int:
    """One pass, which must succeed and leave the kernel equal to the plan (as ipvsadm reads it);
    then a second, full pass (with a dump), which must do nothing. Returns the number of
    operations of the first."""
    report = rec.run(plan)
    assert report.ok, report.errors()
    assert ipvsadm_rules() == set(plan.to_ipvsadm().splitlines())
    again = rec.run(plan, full=True)
    assert again.ops == [], [o.describe() for o in again.ops]
    return len(report.ops)


def test_tcp_and_udp_traffic_reaches_the_backends_through_ipvs_nat(kernel: IpvsKernel) -> None:
    plan = plan_of(doc(listener(80, (1, 1, 1)), listener(53, (1, 1, 1), protocol="UDP")))
    passes(Reconciler(kernel), plan)
    assert set(spread(tcp_once, VIP4, 80, 6)) == {"b1", "b2", "b3"}
    assert set(spread(udp_once, VIP4, 53, 6)) == {"b1", "b2", "b3"}


def test_ipv6_services_carry_traffic(kernel: IpvsKernel) -> None:
    plan = plan_of(doc(listener(80, (1, 1, 0), v6=True), listener(53, (0, 0, 1), v6=True, protocol="UDP"), v6=True))
    passes(Reconciler(kernel), plan)
    assert spread(tcp_once, VIP6, 80, 4) == {"b1": 2, "b2": 2}
    assert spread(udp_once, VIP6, 53, 2) == {"b3": 2}


def test_weights_3_1_0_split_3_to_1_and_nothing_on_zero(kernel: IpvsKernel) -> None:
    passes(Reconciler(kernel), plan_of(doc(listener(80, (3, 1, 0)), listener(53, (3, 1, 0), protocol="UDP"))))
    tcp_counts = spread(tcp_once, VIP4, 80, 200)
    assert tcp_counts["b3"] == 0 and 2.7 <= tcp_counts["b1"] / tcp_counts["b2"] <= 3.3, tcp_counts
    udp_counts = spread(udp_once, VIP4, 53, 80)
    assert udp_counts["b3"] == 0 and 2.7 <= udp_counts["b1"] / udp_counts["b2"] <= 3.3, udp_counts


def test_wlc_sends_new_connections_to_the_least_loaded(kernel: IpvsKernel) -> None:
    passes(Reconciler(kernel), plan_of(doc(listener(80, (1, 1), Scheduler="LEAST_CONN"))))
    held = [Conn(VIP4, 80) for _ in range(4)]
    assert sorted(c.backend for c in held) == ["b1", "b1", "b2", "b2"]
    for c in [c for c in held if c.backend == "b1"]:
        c.close()
    time.sleep(0.5)
    # b1 now has no active connection, b2 two: wlc picks b1 both times (wrr would alternate).
    assert [tcp_once(VIP4, 80), tcp_once(VIP4, 80)] == ["b1", "b1"]
    for c in held:
        c.close()


def test_persistence_pins_a_client_to_one_backend(kernel: IpvsKernel) -> None:
    plan = plan_of(doc(listener(80, (1, 1, 1), SessionExpireTime=300), listener(81, (1, 1, 1))))
    passes(Reconciler(kernel), plan)
    assert "persistent 300" in sh(f"ipvsadm -Ln -t {VIP4}:80")
    assert len(spread(tcp_once, VIP4, 80, 9)) == 1
    assert len(spread(tcp_once, VIP4, 81, 9)) == 3
    conns = sh("ipvsadm -Lnc")
    # the persistence template: client address with port 0, for the persistence timeout (300 s)
    assert any(f"10.10.0.2:0 {VIP4}:80" in " ".join(line.split()) for line in conns.splitlines()), conns


def test_draining_keeps_an_open_connection_while_new_ones_go_elsewhere(kernel: IpvsKernel) -> None:
    clock = [1000.0]
    rec = Reconciler(kernel, drain_timeout=60, clock=lambda: clock[0])
    passes(rec, plan_of(doc(listener(80, (1, 0)))))
    conn = Conn(VIP4, 80)
    assert conn.backend == "b1"
    report = rec.run(plan_of(doc(tcp(80, [(backend_addr(2), BACKEND_PORT, 1)]))))
    assert [o.kind for o in report.ops] == ["set_dest", "set_dest"] and report.draining == 1
    assert f"{backend_addr(1)}:{BACKEND_PORT}" in sh(f"ipvsadm -Ln -t {VIP4}:80")  # still there, weight 0
    assert conn.ask() == "b1"  # the open connection lives on
    assert spread(tcp_once, VIP4, 80, 4) == {"b2": 4}
    assert rec.run(plan_of(doc(tcp(80, [(backend_addr(2), BACKEND_PORT, 1)])))).ops == []  # still draining
    clock[0] += 61  # drain timeout passed
    report = rec.run(plan_of(doc(tcp(80, [(backend_addr(2), BACKEND_PORT, 1)]))))
    assert [(o.kind, o.reason) for o in report.ops] == [("del_dest", "drain timeout")]
    assert f"{backend_addr(1)}:" not in sh(f"ipvsadm -Ln -t {VIP4}:80")
    conn.close()


def test_deregister_target_rst_removes_at_once_and_resets_the_connection(kernel: IpvsKernel) -> None:
    rec = Reconciler(kernel)
    passes(rec, plan_of(doc(listener(80, (1, 0), DeregisterTargetRst=True))))
    conn = Conn(VIP4, 80)
    assert conn.backend == "b1"
    report = rec.run(plan_of(doc(tcp(80, [(backend_addr(2), BACKEND_PORT, 1)], DeregisterTargetRst=True))))
    assert sorted(o.kind for o in report.ops) == ["del_dest", "set_dest"]
    with pytest.raises(ConnectionResetError):
        conn.ask()
    conn.close()


def test_ipvsadm_restore_accepts_the_plan_and_reads_back_identically(kernel: IpvsKernel) -> None:
    plan = plan_of(
        doc(listener(80, (3, 1, 0), SessionExpireTime=60), listener(53, (1, 2, 3), protocol="UDP")),
        lb_doc(
            [listener(443, (1, 1), v6=True, SessionExpireTime=90)], lb_id="lb-v6", vips=(VIP6,), AddressIPVersion="IPv6"
        ),
    )
    sh(f"ipvsadm -R <<'EOF'\n{plan.to_ipvsadm()}EOF")
    assert ipvsadm_rules() == set(plan.to_ipvsadm().splitlines())
    assert Reconciler(kernel).run(plan).ops == []  # our reading of the kernel agrees with ipvsadm's


def test_foreign_services_survive_and_hand_deletions_are_repaired(kernel: IpvsKernel) -> None:
    rec = Reconciler(kernel)
    plan = plan_of(doc(listener(80, (2, 1)), listener(81, (1, 1))))
    sh(f"ipvsadm -A -t {FOREIGN_VIP}:80 -s rr && ipvsadm -a -t {FOREIGN_VIP}:80 -r 10.20.1.2:8080 -m")
    assert passes(rec, plan) == 6
    assert f"-A -t {FOREIGN_VIP}:80 -s rr" in sh("ipvsadm -Sn")
    sh(f"ipvsadm -D -t {VIP4}:80")
    assert rec.run(plan).ops == []  # an incremental pass trusts its view: the repair is the full one
    report = rec.run(plan, full=True)
    assert [o.kind for o in report.ops] == ["add_service", "add_dest", "add_dest"]
    sh(f"ipvsadm -e -t {VIP4}:81 -r {backend_addr(1)}:{BACKEND_PORT} -m -w 7")
    sh(f"ipvsadm -d -t {VIP4}:81 -r {backend_addr(2)}:{BACKEND_PORT}")
    report = rec.run(plan, full=True)
    assert sorted(o.kind for o in report.ops) == ["add_dest", "set_dest"]
    assert passes(rec, plan) == 0
    assert f"-A -t {FOREIGN_VIP}:80 -s rr" in sh("ipvsadm -Sn")
    assert set(spread(tcp_once, VIP4, 80, 3)) == {"b1", "b2"}


def test_a_service_on_our_vip_that_the_plan_does_not_have_is_removed(kernel: IpvsKernel) -> None:
    sh(f"ipvsadm -A -t {VIP4}:9999 -s rr")
    report = Reconciler(kernel).run(plan_of(doc(listener(80, (1,)))))
    assert ("del_service", f"TCP {VIP4}:9999") in [(o.kind, str(o.service.key)) for o in report.ops]


def test_one_weight_change_is_one_netlink_operation_and_no_dump(kernel: IpvsKernel) -> None:
    rec = Reconciler(kernel)
    passes(rec, plan_of(doc(*(listener(p, (1, 1, 1)) for p in range(80, 90)))))
    before, dumps = kernel.messages, kernel.dumps
    report = rec.run(plan_of(doc(*(listener(p, (1, 5 if p == 85 else 1, 1)) for p in range(80, 90)))))
    assert len(report.ops) == 1 and kernel.messages - before == 1
    assert not report.full and kernel.dumps == dumps
    assert f"-a -t {VIP4}:85 -r {backend_addr(2)}:{BACKEND_PORT} -m -w 5" in sh("ipvsadm -Sn")


def test_a_stale_view_refused_by_the_kernel_turns_into_a_full_pass(kernel: IpvsKernel) -> None:
    """The view says a service exists that someone deleted: the incremental change fails, is
    undone, and the same pass dumps the table and puts everything back."""
    rec = Reconciler(kernel)
    plan = plan_of(doc(listener(80, (1, 1)), listener(81, (1, 1))))
    passes(rec, plan)
    sh(f"ipvsadm -D -t {VIP4}:80")
    changed = plan_of(doc(listener(80, (1, 4)), listener(81, (1, 1))))
    report = rec.run(changed)
    assert report.ok and report.full, report.errors()
    assert [o.kind for o in report.ops] == ["add_service", "add_dest", "add_dest"]
    assert ipvsadm_rules() == set(changed.to_ipvsadm().splitlines())


def test_a_failed_pass_is_undone_and_reports_the_object(kernel: IpvsKernel) -> None:
    rec = Reconciler(kernel)
    good = plan_of(doc(listener(80, (1, 1))))
    passes(rec, good)
    before = sh("ipvsadm -Sn")
    bigger = plan_of(doc(listener(80, (4, 1)), listener(82, (1, 1))))
    bad_service = VirtualService(ServiceKey.of(VIP4, "tcp", 83), "nosuchsched", 0)
    broken = IpvsPlan((*bigger.services, bad_service), bigger.vips)
    report = rec.run(broken)
    assert not report.ok
    assert [str(f.op.service.key) for f in report.failed] == [f"TCP {VIP4}:83"]
    assert "add service TCP 10.99.0.1:83 (scheduler nosuchsched" in report.errors()[0]
    assert report.undone and all(r.error == 0 for r in report.undone)
    assert sh("ipvsadm -Sn") == before
    with pytest.raises(IpvsError) as exc:
        kernel.set_timeouts(tcp=-1 & 0xFFFFFFFF, udp=1 << 31)
    assert exc.value.errno == errno.EINVAL and "set timeouts" in str(exc.value)


def test_host_setup_vips_timeouts_and_sync_daemon(kernel: IpvsKernel) -> None:
    ensure_dummy()
    assert {VIP4, VIP6} <= vips_on()
    configure_ipvs(kernel, SyncConfig("master", "clb0", 7))
    assert kernel.timeouts()["tcp"] == 900
    assert "Timeout (tcp tcpfin udp): 900 " in sh("ipvsadm -L --timeout")
    daemons = kernel.sync_daemons()
    assert [(d.state, d.interface, d.sync_id) for d in daemons] == [("master", "clb0", 7)]
    assert sh("ipvsadm -L --daemon").startswith("master sync daemon (mcast=clb0, syncid=7,")
    configure_ipvs(kernel, SyncConfig("master", "clb0", 7))  # idempotent
    kernel.stop_sync_daemon("master")
    assert kernel.sync_daemons() == []
    for name in ("conntrack", "expire_nodest_conn", "expire_quiescent_template"):
        assert sh(f"sysctl -n net.ipv4.vs.{name}").strip() == "1"


def test_applier_brings_a_vip_up_with_its_services_and_down_after_them(kernel: IpvsKernel) -> None:
    """The agent's L4 step as a whole: host setup, VIP before services, services drained, VIP last."""
    from clbagent.l4 import host
    from clbagent.l4.apply import L4Applier

    vip = "10.99.0.5"
    applier = L4Applier(drain_timeout=0)
    try:
        plan = plan_of(lb_doc([listener(80, (1, 1, 0))], lb_id="lb-applier", vips=(vip,)))
        report = applier.apply(plan)
        assert report.ok, report.errors()
        assert vip in vips_on()
        assert ipvsadm_rules((vip,)) == set(plan.to_ipvsadm().splitlines())
        assert set(spread(tcp_once, vip, 80, 6)) == {"b1", "b2"}
        assert applier.apply(plan).ops == []
        gone = plan_of(lb_doc([], lb_id="lb-applier", vips=(VIP4,)))
        for _ in range(3):  # drain (weight 0) then delete; the drain timeout is 0
            report = applier.apply(gone)
            assert report.ok, report.errors()
            if report.draining == 0:
                break
        assert ipvsadm_rules((vip,)) == set()
        assert vip not in vips_on()
    finally:
        applier.close()
        host.sync_vips([VIP4, VIP6])
