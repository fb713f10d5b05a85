"""The state machine, its persistence, and the checks derived from documents."""

from __future__ import annotations

from pathlib import Path

from clbagent.health.spec import Check, derive
from clbagent.health.state import ALIVE, DEAD, UNKNOWN, Health, HealthStore
from clbagent.settings import Settings
from clbagent.validate import validate_documents


def test_consecutive_results_decide() -> None:
    h = Health()
    assert h.record(False, "refused", 2, 3) is None
    assert h.record(True, "", 2, 3) is None  # a success resets the failures
    assert h.record(True, "", 2, 3) == ALIVE
    assert [h.record(False, "refused", 2, 3) for _ in range(3)] == [None, None, DEAD]
    assert h.last_error == "refused" and h.state == DEAD
    assert h.record(True, "", 2, 3) is None and h.record(False, "x", 2, 3) is None
    assert [h.record(True, "", 2, 3) for _ in range(2)] == [None, ALIVE]
    fresh = Health()
    assert [fresh.record(False, "e", 3, 2) for _ in range(2)] == [None, DEAD]  # Unknown -> Dead


def test_persisted_state_is_restored(tmp_path: Path) -> None:
    store = HealthStore(tmp_path)
    assert store.load() == ({}, frozenset())
    store.save(
        {"tcp/1.2.3.4:80/x": {"state": DEAD, "since": 12.5, "last_error": "refused"}}, frozenset({"lb/l/1.2.3.4:80"})
    )
    checks, down = store.load()
    assert down == {"lb/l/1.2.3.4:80"}
    h = Health.restored(checks["tcp/1.2.3.4:80/x"])
    assert (h.state, h.since, h.last_error, h.failures) == (DEAD, 12.5, "refused", 0)
    assert Health.restored(None).state == UNKNOWN
    (tmp_path / "health.json").write_text("{broken")
    assert store.load() == ({}, frozenset())
    assert oct((tmp_path / "health.json").stat().st_mode & 0o777)


def _lb(lb_id: str, vip: str, **rule_hc) -> dict:
    return {
        "LoadBalancerId": lb_id,
        "LoadBalancerVips": [vip],
        "Listeners": [
            {
                "ListenerId": "web",
                "Protocol": "HTTP",
                "Port": 80,
                "Rules": [
                    {
                        "LocationId": "root",
                        "Domain": "www.health.test",
                        "Url": "/",
                        "DefaultServer": True,
                        "HealthCheck": rule_hc,
                        "Targets": [{"EniIp": "127.0.50.30", "Port": 8080}],
                    },
                    {
                        "LocationId": "off",
                        "Domain": "www.health.test",
                        "Url": "/off",
                        "HealthCheck": {"HealthSwitch": 0},
                        "Targets": [{"EniIp": "127.0.50.31", "Port": 8080}],
                    },
                ],
            },
            {
                "ListenerId": "dns",
                "Protocol": "UDP",
                "Port": 53,
                "HealthCheck": {
                    "CheckType": "CUSTOM",
                    "ContextType": "HEX",
                    "SendContext": "F13E01",
                    "RecvContext": "F13E",
                    "CheckPort": 5353,
                },
                "Targets": [{"EniIp": "127.0.50.30", "Port": 53}],
            },
            {
                "ListenerId": "ping",
                "Protocol": "UDP",
                "Port": 54,
                "Targets": [{"EniIp": "127.0.50.30", "Port": 54}, {"EniIp": "127.0.50.30", "Port": 55}],
            },
            {
                "ListenerId": "tcp-http",
                "Protocol": "TCP",
                "Port": 81,
                "HealthCheck": {
                    "CheckType": "HTTP",
                    "HttpVersion": "HTTP/1.0",
                    "HttpCode": 2,
                    "TimeOut": 3,
                    "IntervalTime": 10,
                },
                "Targets": [{"EniIp": "127.0.50.30", "Port": 81}],
            },
        ],
    }


def test_checks_of_a_state_are_shared_and_complete() -> None:
    state = validate_documents(
        [
            ("a.yaml", _lb("lb-a", "127.0.50.1", HttpCheckPath="/hz")),
            ("b.yaml", _lb("lb-b", "10.9.9.9", HttpCheckPath="/hz")),
        ],
        Settings(health_check_method="HEAD"),
    )
    assert state.ok, state.issues
    probes = derive(state.load_balancers(), state.settings, lambda address: address == "127.0.50.1")
    http = next(c for c in probes.subjects if c.kind == "http" and c.port == 8080)
    users = probes.subjects[http]
    # One probe for the same target checked the same way by two load balancers.
    assert [u.down_key for u in users] == ["lb-a/web/root/127.0.50.30:8080", "lb-b/web/root/127.0.50.30:8080"]
    assert (http.host, http.path, http.method, http.codes, http.interval, http.rise) == (
        "www.health.test",
        "/hz",
        "HEAD",
        31,
        5,
        3,
    )
    assert probes.sources[http] == "127.0.50.1"  # the VIP the host holds
    udp = next(c for c in probes.subjects if c.kind == "udp")
    assert (udp.port, udp.send, udp.expect) == (5353, bytes.fromhex("F13E01"), bytes.fromhex("F13E"))
    pings = [c for c in probes.subjects if c.kind == "ping"]
    assert len(pings) == 1 and len(probes.subjects[pings[0]]) == 4  # two ports, two load balancers, one ping
    tcp_http = next(c for c in probes.subjects if c.kind == "http" and c.port == 81)
    assert (tcp_http.version, tcp_http.codes, tcp_http.timeout, tcp_http.interval) == ("HTTP/1.0", 2, 3.0, 10)
    assert {s.down_key for s in probes.subjects[tcp_http]} == {
        "lb-a/tcp-http/127.0.50.30:81",
        "lb-b/tcp-http/127.0.50.30:81",
    }
    assert sorted(s.down_key for s in probes.unchecked) == [
        "lb-a/web/off/127.0.50.31:8080",
        "lb-b/web/off/127.0.50.31:8080",
    ]
    # A different path is a different check, with a state of its own.
    other_state = validate_documents([("a.yaml", _lb("lb-a", "127.0.50.1", HttpCheckPath="/other"))])
    other = derive(other_state.load_balancers(), other_state.settings)
    assert set(other.sources.values()) == {"127.0.50.1"}  # held by this host (127/8 is local)
    assert not set(other.subjects) & {http} and all(isinstance(c, Check) for c in other.subjects)
    assert len({c.key for c in probes.subjects}) == len(probes.subjects)


def test_health_command_without_an_agent(tmp_path: Path, capsys) -> None:
    from clbagent.cli import main

    assert main(["health", "--socket", str(tmp_path / "none.sock")]) == 1
    assert "no agent is running" in capsys.readouterr().err
