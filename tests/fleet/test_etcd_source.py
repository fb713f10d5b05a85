"""The etcd source and the status writer on their own, against a real etcd: the config keys, values
read like files, listing in pages at one revision, the watch and its audit, TLS, the status values,
and `fleet status` without agents."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aetcd
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clbagent.agent.config import AgentConfig, ConfigError
from clbagent.agent.engine import ApplyReport
from clbagent.agent.etcd import source as etcd_source
from clbagent.agent.etcd.source import EtcdSource, ReadInfo, parse_value
from clbagent.agent.etcd.status import StatusWriter
from clbagent.settings import DEFAULT_SETTINGS
from tests.fleet.harness import CLBAGENT, ETCD_IP, Etcd, http_lb


def _recorder(events: list[dict]) -> Callable[..., None]:
    def log(event: str, **fields: object) -> None:
        events.append({"event": event, **fields})

    return log


def _config(tmp_path: Path, **keys: object) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"source": "etcd", "state_dir": "state", **keys}))
    return path


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"etcd_endpoints": ["no port"]}, "etcd_endpoints: Value error, 'no port' is not host:port"),
        ({"etcd_endpoints": []}, "etcd_endpoints: List should have at least 1 item"),
        ({"etcd_prefix": "/clb/", "etcd_status_prefix": "/clb/status/"}, "must not contain one another"),
        ({"etcd_cert_file": "client.pem"}, "etcd_cert_file and etcd_key_file go together"),
        ({"etcd_lease_ttl": 1}, "etcd_lease_ttl: Input should be greater than or equal to 5"),
        ({"agent_name": "a/b"}, "agent_name: Value error, must be 1-64 letters"),
    ],
)
def test_invalid_etcd_keys_are_refused_with_one_sentence(tmp_path: Path, keys: dict, message: str):
    with pytest.raises(ConfigError) as info:
        AgentConfig.load(_config(tmp_path, **keys))
    assert message in str(info.value)


def test_config_normalises_prefixes_and_resolves_tls_files(tmp_path: Path):
    keys = {"etcd_prefix": "/fleet/desired", "etcd_cert_file": "tls/c.pem", "etcd_key_file": "tls/k.pem"}
    config = AgentConfig.load(_config(tmp_path, **keys))
    assert config.etcd_prefix == "/fleet/desired/"
    assert config.etcd_cert_file == tmp_path / "tls" / "c.pem"


def test_values_are_read_like_files(tmp_path: Path):
    settings = DEFAULT_SETTINGS
    docs, issues = parse_value("/k/a", yaml.safe_dump(http_lb("lb-a", 1)).encode(), None, settings)
    assert [s for s, _ in docs] == ["/k/a"] and not issues
    _, (issue,) = parse_value("/k/b", b"Listeners: [", None, settings)
    assert (issue.code, issue.path) == ("InvalidParameter.FormatError", "/k/b")
    _, (issue,) = parse_value("/k/c", b"x" * (settings.max_document_bytes + 1), None, settings)
    assert issue.code == "LimitExceeded"
    _, (issue,) = parse_value("/k/d", b"\xff\xfe", None, settings)
    assert issue.message == "not UTF-8 text"
    two = b"LoadBalancerId: lb-1\n---\nLoadBalancerId: lb-2\n"
    assert [s for s, _ in parse_value("/k/e", two, None, settings)[0]] == ["/k/e#1", "/k/e#2"]

    cert = {"Certificates": [{"CertId": "c1", "CertFile": "c1.pem"}]}
    _, (issue,) = parse_value("/k/f", yaml.safe_dump(cert).encode(), None, settings)
    assert issue.path == "/k/f/Certificates[0]/CertFile" and "cert_dir" in issue.message
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "c1.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    (raw,), issues = parse_value("/k/f", yaml.safe_dump(cert).encode(), tmp_path / "certs", settings)
    assert not issues and raw[1]["Certificates"][0]["CertContent"].startswith("-----BEGIN")
    outside = {"Certificates": [{"CertId": "c1", "CertFile": "../agent.yaml"}]}
    _, (issue,) = parse_value("/k/g", yaml.safe_dump(outside).encode(), tmp_path / "certs", settings)
    assert "inside the certificate directory" in issue.message


def test_listing_in_pages_then_watching(etcd: Etcd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(etcd_source, "PAGE", 2)
    prefix = "/paged/"
    for i in range(5):
        etcd.put(f"{prefix}lb-{i}", http_lb(f"lb-{i}", 1000 + i))
    config = AgentConfig(source="etcd", etcd_endpoints=[etcd.url], etcd_prefix=prefix, state_dir=tmp_path)
    events: list[dict] = []
    source = EtcdSource(config, DEFAULT_SETTINGS, _recorder(events))
    marks: list[str] = []

    async def scenario() -> None:
        assert source.read() is None  # never listed: the agent serves what it has on disk
        task = asyncio.create_task(source.run(marks.append))
        while not source.synced:
            await asyncio.sleep(0.02)
        snap = source.read()
        assert snap is not None and sorted(s for s, _ in snap.docs) == [f"{prefix}lb-{i}" for i in range(5)]
        listed = source.last_read
        assert listed is not None and listed.revision == source.revision
        await asyncio.to_thread(etcd.put, f"{prefix}lb-9", http_lb("lb-9", 1009))
        await asyncio.to_thread(etcd.ctl, "del", f"{prefix}lb-0")
        while f"{prefix}lb-9" not in source._values or f"{prefix}lb-0" in source._values:
            await asyncio.sleep(0.02)
        snap = source.read()
        assert snap is not None and snap.files_read == 1  # only the new value parsed again
        assert source.last_read is not None and source.last_read.roots["lb-9"][1] == source.revision - 1
        task.cancel()

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert [e["keys"] for e in events if e["event"] == "etcd_listed"] == [5]
    assert marks


def test_fleet_status_without_agents_and_without_etcd(etcd: Etcd, tmp_path: Path):
    etcd.put("/lonely/desired/lb-x", http_lb("lb-x", 1))
    keys = {"etcd_endpoints": [etcd.url], "etcd_prefix": "/lonely/desired/", "etcd_status_prefix": "/lonely/status/"}
    out = subprocess.run(
        [*CLBAGENT, "fleet", "status", "--config", str(_config(tmp_path, **keys))], capture_output=True, text=True
    )
    assert out.returncode == 3 and "lb-x" in out.stdout and "(no agent)" in out.stdout

    keys["etcd_endpoints"] = ["127.0.70.1:23799"]  # nothing listens there
    out = subprocess.run(
        [*CLBAGENT, "fleet", "status", "--config", str(_config(tmp_path, **keys))], capture_output=True, text=True
    )
    assert out.returncode == 1 and out.stderr.startswith("clbagent fleet status: cannot read etcd (127.0.70.1:23799)")
    assert "Traceback" not in out.stderr


def _tls_files(directory: Path) -> Path:
    """A CA, a server certificate for etcd's address (an IP SAN, as etcdctl checks) and a client
    certificate, as files."""
    from tests.l7.conftest import CA

    ca = CA("etcd test CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "etcd")]))
        .issuer_name(ca.name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ETCD_IP))]), False)
        .sign(ca.key, hashes.SHA256())
    )
    client = ca.issue("gw-tls", client=True)
    directory.mkdir()
    files = {
        "ca.pem": ca.pem,
        "server.pem": server.public_bytes(serialization.Encoding.PEM).decode(),
        "server.key": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
        "client.pem": client.cert,
        "client.key": client.key,
    }
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def _first_listing(config: AgentConfig) -> tuple[Any, list[dict]]:
    """What a new source reads once it listed etcd or failed to (within 5 s), and its events."""
    events: list[dict] = []
    source = EtcdSource(config, DEFAULT_SETTINGS, _recorder(events))

    async def follow() -> None:
        task = asyncio.create_task(source.run(lambda _: None))
        for _ in range(100):
            if source.synced or source.error:
                break
            await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(follow())
    return source.read(), events


def test_tls_with_a_client_certificate(tmp_path: Path):
    tls = _tls_files(tmp_path / "tls")
    (tmp_path / "etcd").mkdir()
    server = Etcd(tmp_path / "etcd", client_port=23795, tls=tls)
    server.start()
    try:
        server.put("/tls/lb-t", http_lb("lb-t", 1))
        results = {}
        for label, keys in {
            "with a client certificate": {"etcd_cert_file": tls / "client.pem", "etcd_key_file": tls / "client.key"},
            "without": {},
        }.items():
            config = AgentConfig(
                source="etcd",
                etcd_endpoints=[server.url],
                etcd_prefix="/tls/",
                etcd_ca_file=tls / "ca.pem",
                state_dir=tmp_path,
                **keys,
            )
            results[label] = _first_listing(config)
        snap, _ = results["with a client certificate"]
        assert snap is not None and [s for s, _ in snap.docs] == ["/tls/lb-t"]
        snap, events = results["without"]
        assert snap is None and events[0]["event"] == "etcd_unreachable" and "handshake" in events[0]["error"].lower()
    finally:
        server.kill()


def test_a_watch_that_stops_delivering_is_replaced_by_a_new_listing(
    etcd: Etcd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """etcd can cancel a watch in ways aetcd does not report (the events just stop): the audit
    notices that the values held never reach etcd's state, and the prefix is listed again."""
    monkeypatch.setattr(etcd_source, "AUDIT_EVERY", 0.3)
    monkeypatch.setattr(etcd_source, "AUDIT_GRACE", 0.5)
    created = aetcd.watcher.Watcher._handle_response

    async def deaf(self: aetcd.Watcher, response: Any) -> None:
        if response.created:  # the watch is set up, and then no event ever arrives
            await created(self, response)

    monkeypatch.setattr(aetcd.watcher.Watcher, "_handle_response", deaf)
    prefix = "/deaf/"
    etcd.put(f"{prefix}lb-1", http_lb("lb-1", 1))
    config = AgentConfig(source="etcd", etcd_endpoints=[etcd.url], etcd_prefix=prefix, state_dir=tmp_path)
    events: list[dict] = []
    source = EtcdSource(config, DEFAULT_SETTINGS, _recorder(events))

    async def scenario() -> None:
        task = asyncio.create_task(source.run(lambda _: None))
        while not source.connected:
            await asyncio.sleep(0.02)
        await asyncio.to_thread(etcd.put, f"{prefix}lb-2", http_lb("lb-2", 2))
        while f"{prefix}lb-2" not in source._values:
            await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(asyncio.wait_for(scenario(), 20))
    assert [e["event"] for e in events if e["event"] != "etcd_listed"][:1] == ["etcd_watch_stalled"]
    snap = source.read()
    assert snap is not None and sorted(s for s, _ in snap.docs) == [f"{prefix}lb-1", f"{prefix}lb-2"]


def test_apply_without_paths_refuses_an_etcd_config(tmp_path: Path):
    out = subprocess.run([*CLBAGENT, "apply", "--config", str(_config(tmp_path))], capture_output=True, text=True)
    assert out.returncode == 2 and "reads its documents from etcd" in out.stderr and "Traceback" not in out.stderr


def test_status_values_name_revisions_and_count_targets_by_health(etcd: Etcd, tmp_path: Path):
    config = AgentConfig(
        source="etcd",
        etcd_endpoints=[etcd.url],
        etcd_prefix="/w/desired/",
        etcd_status_prefix="/w/status/",
        agent_name="gw-w",
        state_dir=tmp_path,
    )
    writer = StatusWriter(config, _recorder([]))
    rows = [{"load_balancer": "lb-1", "state": "Alive"}, {"load_balancer": "lb-1", "state": "Dead"}]
    writer.health = lambda: list(rows)
    served = {"revision": "h1", "result": "applied", "errors": [], "generation": 3, "source": "/w/desired/lb-1"}

    def value() -> dict:
        found = etcd.get_prefix("/w/status/gw-w/lb-1")
        return json.loads(found["/w/status/gw-w/lb-1"][1]) if found else {}

    async def until(check: Callable[[dict], bool]) -> dict:
        for _ in range(100):
            current = await asyncio.to_thread(value)
            if check(current):
                return current
            await asyncio.sleep(0.1)
        raise AssertionError(f"the status value never matched; last: {current}")

    async def scenario() -> None:
        task = asyncio.create_task(writer.run())
        writer.update(ApplyReport("applied", 3), {"lb-1": served}, ReadInfo(9, {"lb-1": ("/w/desired/lb-1", 8, "h1")}))
        first = await until(lambda v: v.get("health") == {"Alive": 1, "Dead": 1})
        assert (first["applied_revision"], first["desired_revision"], first["generation"]) == (8, 8, 3)
        rows[1]["state"] = "Alive"  # a health transition alone reaches etcd at the next keepalive
        await until(lambda v: v.get("health") == {"Alive": 2})
        bad = {**served, "result": "quarantined", "errors": [{"code": "X", "path": "p", "message": "m"}]}
        writer.update(ApplyReport("applied", 4), {"lb-1": bad}, ReadInfo(11, {"lb-1": ("/w/desired/lb-1", 10, "h2")}))
        later = await until(lambda v: v.get("result") == "quarantined")
        assert (later["applied_revision"], later["desired_revision"]) == (8, 10)  # still serving revision 8
        task.cancel()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert json.loads((tmp_path / "etcd-applied.json").read_text()) == {"lb-1": 8}
