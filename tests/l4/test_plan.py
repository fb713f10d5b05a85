"""The IPVS plan (pure): listeners -> virtual services, schedulers, persistence, forwarding, health."""

from __future__ import annotations

import json
import subprocess
import sys

from clbagent.l4 import ServiceKey, target_key
from tests.l4.build import lb_doc, plan_of, tcp

A, B, C = "10.0.1.1", "10.0.1.2", "10.0.1.3"


def test_tcp_udp_listeners_become_services_with_schedulers_and_persistence() -> None:
    plan = plan_of(
        lb_doc(
            [
                tcp(80, [(A, 8080, 3), (B, 8080, 1)], SessionExpireTime=300),
                tcp(53, [(C, 5353, 10)], protocol="UDP", Scheduler="LEAST_CONN"),
            ]
        )
    )
    by = plan.by_key()
    web = by[ServiceKey.of("10.99.0.1", "tcp", 80)]
    dns = by[ServiceKey.of("10.99.0.1", "udp", 53)]
    assert (web.scheduler, web.persistence, dns.scheduler, dns.persistence) == ("wrr", 300, "wlc", 0)
    assert [(d.address, d.port, d.weight, d.forward) for d in web.destinations] == [
        (A, 8080, 3, "NAT"),
        (B, 8080, 1, "NAT"),
    ]
    assert plan.vips == frozenset({"10.99.0.1"})
    assert plan.to_ipvsadm() == (
        "-A -t 10.99.0.1:80 -s wrr -p 300\n"
        "-a -t 10.99.0.1:80 -r 10.0.1.1:8080 -m -w 3\n"
        "-a -t 10.99.0.1:80 -r 10.0.1.2:8080 -m -w 1\n"
        "-A -u 10.99.0.1:53 -s wlc\n"
        "-a -u 10.99.0.1:53 -r 10.0.1.3:5353 -m -w 10\n"
    )


def test_forward_method_dr_and_tun_and_ipv6() -> None:
    dr = plan_of(lb_doc([tcp(80, [(A, 80, 5)])], ForwardMethod="DR"))
    assert "-r 10.0.1.1:80 -g -w 5" in dr.to_ipvsadm()
    tun = plan_of(lb_doc([tcp(80, [(A, 80, 5)])], ForwardMethod="TUN"))
    assert "-r 10.0.1.1:80 -i -w 5" in tun.to_ipvsadm()
    v6 = plan_of(
        lb_doc([tcp(443, [("fd00::5", 443, 7)], SessionExpireTime=60)], vips=("fd99::1",), AddressIPVersion="IPv6")
    )
    assert v6.to_ipvsadm() == "-A -t [fd99::1]:443 -s wrr -p 60\n-a -t [fd99::1]:443 -r [fd00::5]:443 -m -w 7\n"


def test_one_service_per_vip() -> None:
    plan = plan_of(lb_doc([tcp(80, [(A, 80, 1)])], vips=("10.99.0.2", "10.99.0.1")))
    assert [str(s.key) for s in plan.services] == ["TCP 10.99.0.1:80", "TCP 10.99.0.2:80"]
    assert all(len(s.destinations) == 1 for s in plan.services)


def test_port_range_is_refused_with_an_error_and_the_rest_planned() -> None:
    plan = plan_of(lb_doc([tcp(8000, [(A, 80, 1)], EndPort=8010), tcp(80, [(A, 80, 1)])]))
    assert [str(s.key) for s in plan.services] == ["TCP 10.99.0.1:80"]
    (err,) = [w for w in plan.warnings if w.severity == "error"]
    assert err.code == "UnsupportedOperation" and "8000-8010" in err.message and err.path.endswith("EndPort")


def test_down_tcp_targets_get_weight_zero_and_udp_ones_are_evicted_unless_all_are_down() -> None:
    doc = lb_doc([tcp(80, [(A, 80, 3), (B, 80, 1)]), tcp(53, [(A, 53, 3), (B, 53, 1)], protocol="UDP")])
    down_a = frozenset({target_key("lb-l4", "lbl-tcp-80", f"{A}:80"), target_key("lb-l4", "lbl-udp-53", f"{A}:53")})
    tcp_svc, udp = plan_of(doc, down=down_a).services
    assert [d.weight for d in tcp_svc.destinations] == [0, 1] and tcp_svc.evicted == ()
    assert [(d.address, d.weight) for d in udp.destinations] == [(B, 1)]
    assert [d.endpoint for d in udp.evicted] == [f"{A}:53"] and udp.to_dict()["evicted"] == [f"{A}:53"]
    assert f"-a -u 10.99.0.1:53 -r {A}:53" not in plan_of(doc, down=down_a).to_ipvsadm()
    all_down = down_a | {target_key("lb-l4", "lbl-tcp-80", f"{B}:80"), target_key("lb-l4", "lbl-udp-53", f"{B}:53")}
    tcp_svc, udp = plan_of(doc, down=all_down).services
    assert [d.weight for d in tcp_svc.destinations] == [3, 1]
    assert [d.weight for d in udp.destinations] == [3, 1] and udp.evicted == ()


def test_all_dead_counts_only_targets_that_take_traffic() -> None:
    """A weight-0 target that is alive does not stop all-dead-all-alive: the dead weighted target
    keeps serving, as on L7."""
    doc = lb_doc([tcp(80, [(A, 80, 10), (B, 80, 0)]), tcp(53, [(A, 53, 10), (B, 53, 0)], protocol="UDP")])
    down = frozenset({target_key("lb-l4", "lbl-tcp-80", f"{A}:80"), target_key("lb-l4", "lbl-udp-53", f"{A}:53")})
    tcp_svc, udp = plan_of(doc, down=down).services
    assert [(d.address, d.weight) for d in tcp_svc.destinations] == [(A, 10), (B, 0)]
    assert [(d.address, d.weight) for d in udp.destinations] == [(A, 10), (B, 0)] and udp.evicted == ()


def test_plan_is_deterministic_and_json() -> None:
    docs = [lb_doc([tcp(p, [(A, 80, 1), (B, 81, 2)]) for p in (90, 80, 85)], vips=("10.99.0.2", "10.99.0.1"))]
    one, two = plan_of(*docs), plan_of(*reversed(docs))
    assert one.to_ipvsadm() == two.to_ipvsadm()
    data = json.loads(json.dumps(one.to_dict()))
    assert data["vips"] == ["10.99.0.1", "10.99.0.2"]
    assert [s["port"] for s in data["services"]][:3] == [80, 85, 90]
    assert data["services"][0]["destinations"][0]["target"] == "lb-l4/lbl-tcp-80/10.0.1.1:80"


def test_render_prints_ipvsadm_rules(tmp_path: object) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "clbagent.cli",
            "render",
            "--dry-run",
            "--format",
            "ipvsadm",
            "--cert-dir",
            "fixtures/certs",
            "fixtures/examples/full.yaml",
        ],
        capture_output=True,
        text=True,
    )
    assert "-A -t 127.0.10.11:13306 -s wrr -p 300\n" in out.stdout, out.stderr
    assert "-a -u 127.0.10.11:13306 -r 127.0.21.3:53 -m -w 10\n" in out.stdout
