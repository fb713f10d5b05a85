"""The diff (pure): minimal operations, ownership by VIP, drain, inverses, and the wire encoding."""

from __future__ import annotations

from dataclasses import replace

from clbagent.l4 import Destination, IpvsPlan, ServiceKey, VirtualService, codec
from clbagent.l4.diff import KernelDest, KernelService, Op, diff, record

VIP = "10.99.0.1"
KEY = ServiceKey.of(VIP, "tcp", 80)
FOREIGN = ServiceKey.of("10.77.0.1", "tcp", 80)


def dest(last: int, weight: int = 1) -> Destination:
    return Destination(f"10.0.0.{last}", 8080, weight, "NAT")


def service(
    *dests: Destination, key: ServiceKey = KEY, persistence: int = 0, rst: bool = False, evicted: tuple = ()
) -> VirtualService:
    return VirtualService(key, "wrr", persistence, tuple(sorted(dests)), "lb/l", rst, evicted)


def plan(*services: VirtualService) -> IpvsPlan:
    return IpvsPlan(tuple(services), frozenset({VIP}))


def kernel_of(*services: VirtualService, conns: dict[str, int] | None = None) -> dict[ServiceKey, KernelService]:
    conns = conns or {}
    return {
        s.key: KernelService(
            s.key,
            s.scheduler,
            s.persistence,
            {d.key: KernelDest.of(d, conns.get(d.address, 0)) for d in s.destinations},
        )
        for s in services
    }


def kinds(ops: list[Op]) -> list[str]:
    return [f"{o.kind} {o.dest.address if o.dest else o.service.key}" for o in ops]


def test_empty_kernel_gets_everything_and_equal_kernel_gets_nothing() -> None:
    want = service(dest(1), dest(2))
    assert kinds(diff(plan(want), {}).ops) == ["add_service TCP 10.99.0.1:80", "add_dest 10.0.0.1", "add_dest 10.0.0.2"]
    assert diff(plan(want), kernel_of(want)).ops == []


def test_one_weight_change_is_one_operation() -> None:
    want = service(dest(1, 5), dest(2))
    ops = diff(plan(want), kernel_of(service(dest(1, 1), dest(2)))).ops
    assert kinds(ops) == ["set_dest 10.0.0.1"] and ops[0].dest.weight == 5


def test_scheduler_or_persistence_change_is_a_service_set_and_forward_change_a_dest_set() -> None:
    want = service(dest(1), persistence=60)
    have = service(replace(dest(1), forward="DR"))
    assert kinds(diff(plan(want), kernel_of(have)).ops) == ["set_service TCP 10.99.0.1:80", "set_dest 10.0.0.1"]


def test_foreign_services_are_never_touched() -> None:
    other = service(dest(9), key=FOREIGN)
    assert diff(plan(service(dest(1))), kernel_of(service(dest(1)), other)).ops == []
    # ... unless their VIP is declared owned (e.g. still on the agent's dummy interface)
    ops = diff(plan(), kernel_of(other), frozenset({"10.77.0.1"})).ops
    assert kinds(ops) == ["del_service TCP 10.77.0.1:80"]


def test_removed_destination_drains_then_goes_when_idle_or_timed_out() -> None:
    want = service(dest(1))
    have = kernel_of(service(dest(1), dest(2, 4)), conns={"10.0.0.2": 3})
    first = diff(plan(want), have, now=100.0, drain_timeout=30)
    assert kinds(first.ops) == ["set_dest 10.0.0.2"] and first.ops[0].dest.weight == 0 and first.waiting == 1
    drained = kernel_of(service(dest(1), dest(2, 0)), conns={"10.0.0.2": 3})
    second = diff(plan(want), drained, now=110.0, draining=first.draining, drain_timeout=30)
    assert second.ops == [] and second.waiting == 1
    late = diff(plan(want), drained, now=131.0, draining=first.draining, drain_timeout=30)
    assert kinds(late.ops) == ["del_dest 10.0.0.2"] and late.ops[0].reason == "drain timeout"
    idle = diff(plan(want), kernel_of(service(dest(1), dest(2, 0))), now=111.0, draining=first.draining)
    assert kinds(idle.ops) == ["del_dest 10.0.0.2"] and idle.draining == {}


def test_deregister_rst_deletes_at_once_and_readding_cancels_a_drain() -> None:
    have = kernel_of(service(dest(1), dest(2)), conns={"10.0.0.2": 5})
    assert kinds(diff(plan(service(dest(1), rst=True)), have).ops) == ["del_dest 10.0.0.2"]
    first = diff(plan(service(dest(1))), have, now=1.0)
    back = diff(
        plan(service(dest(1), dest(2))), kernel_of(service(dest(1), dest(2, 0))), now=2.0, draining=first.draining
    )
    assert kinds(back.ops) == ["set_dest 10.0.0.2"] and back.draining == {}


def test_an_evicted_destination_goes_at_once_and_a_removed_one_still_drains() -> None:
    """A dead UDP target is deleted even with open flows (the kernel then expires them), while a
    target removed from the configuration drains; one that comes back dead is deleted at once."""
    have = kernel_of(service(dest(1), dest(2), dest(3)), conns={"10.0.0.2": 4, "10.0.0.3": 2})
    result = diff(plan(service(dest(1), evicted=(dest(2),))), have, now=5.0, drain_timeout=300)
    assert [(k, o.reason) for k, o in zip(kinds(result.ops), result.ops, strict=True)] == [
        ("del_dest 10.0.0.2", "target down"),
        ("set_dest 10.0.0.3", "drain"),
    ]
    assert list(result.draining) == [(KEY, "10.0.0.3", 8080)]
    drained = kernel_of(service(dest(1), dest(3, 0)), conns={"10.0.0.3": 2})
    later = diff(plan(service(dest(1), evicted=(dest(3),))), drained, now=6.0, draining=result.draining)
    assert kinds(later.ops) == ["del_dest 10.0.0.3"] and later.ops[0].reason == "target down"
    assert later.draining == {}


def test_record_keeps_a_view_equal_to_what_the_kernel_acknowledged() -> None:
    """Applying the ops of a diff to the view gives the plan: the next diff against it is empty."""
    other = ServiceKey.of(VIP, "udp", 53)
    view = kernel_of(service(dest(1), dest(2, 4)), service(dest(5), key=FOREIGN), conns={"10.0.0.1": 7})
    want = plan(service(dest(1, 9), dest(3), persistence=30), service(dest(4), key=other))
    result = diff(want, view, frozenset({"10.77.0.1"}), drain_timeout=0)
    record(view, result.ops)
    assert diff(want, view, frozenset({"10.77.0.1"})).ops == []
    assert set(view) == {KEY, other} and view[KEY].persistence == 30
    assert view[KEY].dests[("10.0.0.1", 8080)] == KernelDest("10.0.0.1", 8080, 9, "NAT", 7, 0)


def test_removed_service_drains_and_is_deleted_with_one_operation() -> None:
    gone = service(dest(1), dest(2))
    busy = diff(plan(), kernel_of(gone, conns={"10.0.0.1": 1}), now=0.0)
    assert kinds(busy.ops) == ["set_dest 10.0.0.1", "del_dest 10.0.0.2"]
    idle = diff(plan(), kernel_of(service(dest(1, 0))), now=1.0, draining=busy.draining)
    assert kinds(idle.ops) == ["del_service TCP 10.99.0.1:80"]
    rst = diff(plan(), kernel_of(gone, conns={"10.0.0.1": 1}), rst_services=frozenset({KEY}))
    assert kinds(rst.ops) == ["del_service TCP 10.99.0.1:80"]


def test_new_backends_are_added_before_old_ones_are_removed() -> None:
    ops = diff(plan(service(dest(3))), kernel_of(service(dest(1)))).ops
    assert kinds(ops) == ["add_dest 10.0.0.3", "del_dest 10.0.0.1"]


def test_inverses_restore_the_previous_state() -> None:
    before = kernel_of(service(dest(1, 2), dest(2)))[KEY]
    svc = service(dest(1))
    assert kinds(Op("add_service", svc).inverse()) == ["del_service TCP 10.99.0.1:80"]
    (undo,) = Op("set_dest", svc, dest(1, 9)).inverse(before)
    assert undo.kind == "set_dest" and undo.dest.weight == 2
    assert kinds(Op("del_dest", svc, dest(2)).inverse(before)) == ["add_dest 10.0.0.2"]
    assert kinds(Op("del_service", svc).inverse(before)) == [
        "add_service TCP 10.99.0.1:80",
        "add_dest 10.0.0.1",
        "add_dest 10.0.0.2",
    ]


def test_errors_name_the_object() -> None:
    text = Op("add_dest", service(), dest(7, 3)).describe()
    assert text == "add destination 10.0.0.7:8080 (weight 3, NAT) of TCP 10.99.0.1:80"


def test_codec_round_trips_through_the_kernel_reply_layout() -> None:
    v6 = ServiceKey.of("fd99::1", "udp", 53)
    svc = VirtualService(v6, "wlc", 120)
    msg = codec.message(30, codec.CMD_NEW_SERVICE, 7, codec.service_attrs(svc, full=True))
    ((kind, flags, seq, payload),) = list(codec.messages(msg))
    assert (kind, seq, flags & codec.NLM_F_ACK) == (30, 7, codec.NLM_F_ACK)
    key, sched, persistence = codec.decode_service(payload)
    assert (key, sched, persistence) == (v6, "wlc", 120)
    raw = codec.parse_attrs(codec.parse_attrs(payload, 4)[codec.A_SERVICE])
    assert int.from_bytes(raw[codec.S_NETMASK], "little") == 128  # IPv6: prefix length, host order
    d = Destination("fd00::5", 5353, 42, "TUN")
    msg = codec.message(30, codec.CMD_NEW_DEST, 8, codec.dest_attrs(6, d, full=True))
    ((_k, _f, _s, payload),) = list(codec.messages(msg))
    assert codec.decode_dest(payload, 6) == KernelDest.of(d)
    # as the kernel replies: counters and statistics follow the configuration attributes
    body = codec.dest_attrs(6, d, full=True)[4:] + codec.u32(codec.D_ACTIVE, 2) + codec.u32(codec.D_INACTIVE, 3)
    reply = codec.message(30, codec.CMD_GET_DEST, 9, codec.nla(codec.A_DEST, body + codec.nla(10, b"\0" * 80)), 2)
    ((_k, _f, _s, payload),) = list(codec.messages(reply))
    fast = codec.DestDecoder()
    assert fast(payload, 6) == fast(payload, 6) == KernelDest.of(d, 2, 3) == codec.decode_dest(payload, 6)
    assert fast.layout is not None
