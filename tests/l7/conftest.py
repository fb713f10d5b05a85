"""Shared fixtures of the L7 tests: a test PKI, real backend HTTP servers, the real nginx.

Everything runs on loopback: VIPs on 127.0.10.x, backends on 127.0.20.x, client source
addresses on 127.0.30.x+ (ip_hash and ACL tests pick their source address).
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import json
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from clbagent.l7 import compile_nginx, write_prefix
from clbagent.l7.compile import LUA_MODULE
from clbagent.nginx.process import Nginx, check_config
from clbagent.settings import Settings
from clbagent.validate import validate_documents

NGINX_AVAILABLE = shutil.which("nginx") is not None or Path("/usr/sbin/nginx").exists()
LUA_AVAILABLE = NGINX_AVAILABLE and LUA_MODULE.exists()
MODES = ("static", "dynamic")  # how upstreams get their members (docs/dynamic-upstreams.md)


# --------------------------------------------------------------------------- documents


def target(ip: str, port: int, weight: int = 10) -> dict[str, Any]:
    return {"EniIp": ip, "Port": port, "Weight": weight}


def rule(loc: str, domain: str, url: str, targets: list[dict], **extra: Any) -> dict[str, Any]:
    base = {"LocationId": loc, "Domain": domain, "Url": url, "Targets": targets, "HealthCheck": {"HealthSwitch": 0}}
    return {**base, **extra}


def listener(lid: str, protocol: str, port: int, rules: list[dict], **extra: Any) -> dict[str, Any]:
    return {"ListenerId": lid, "Protocol": protocol, "Port": port, "Rules": rules, **extra}


def load_balancer(lb_id: str, vip: str, listeners: list[dict], **extra: Any) -> dict[str, Any]:
    return {"LoadBalancerId": lb_id, "LoadBalancerVips": [vip], "Listeners": listeners, **extra}


def compile_docs(
    docs: list[dict],
    down: frozenset[str] = frozenset(),
    prefix: str = "/tmp/clb",
    settings: Settings | None = None,
    dynamic: bool = False,
):
    state = validate_documents([(f"doc{i}", d) for i, d in enumerate(docs)], settings or Settings())
    errors = [i for i in state.issues if i.severity == "error"]
    cfg = compile_nginx(state, down, prefix=prefix, dynamic=dynamic)
    errors += [i for i in cfg.warnings if i.severity == "error"]
    assert not errors, "\n".join(str(e) for e in errors)
    return cfg


# --------------------------------------------------------------------------- PKI


@dataclass
class Pem:
    cert: str
    key: str

    def write(self, directory: Path, name: str) -> tuple[str, str]:
        c, k = directory / f"{name}.crt", directory / f"{name}.key"
        c.write_text(self.cert)
        k.write_text(self.key)
        return str(c), str(k)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key(bits: int = 2048) -> rsa.RSAPrivateKey:
    """An RSA key; ``cryptography`` makes none under 1024 bits, OpenSSL's tool still does."""
    if bits >= 1024:
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{bits}"],
        capture_output=True,
        check=True,
    ).stdout
    return serialization.load_pem_private_key(pem, None)  # type: ignore[return-value]


def _pem_key(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()


class CA:
    """A certificate authority that issues server and client certificates."""

    def __init__(self, cn: str):
        self.key = _key()
        now = datetime.datetime.now(datetime.UTC)
        self.name = _name(cn)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, cn: str, sans: list[str] = (), client: bool = False, bits: int = 2048) -> Pem:
        key = _key(bits)
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), False)
        if client:
            builder = builder.add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Pem(cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key))

    def issue_sha1(self, cn: str, work: Path) -> Pem:
        """A server certificate signed with SHA-1 (``cryptography`` no longer signs with it)."""
        (work / "ca.crt").write_text(self.pem)
        (work / "ca.key").write_text(_pem_key(self.key))
        req = ["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}"]
        subprocess.run([*req, "-keyout", work / "leaf.key", "-out", work / "leaf.csr"], capture_output=True, check=True)
        sign = ["openssl", "x509", "-req", "-sha1", "-days", "30", "-set_serial", "7", "-in", work / "leaf.csr"]
        subprocess.run(
            [*sign, "-CA", work / "ca.crt", "-CAkey", work / "ca.key", "-out", work / "leaf.crt"],
            capture_output=True,
            check=True,
        )
        return Pem((work / "leaf.crt").read_text(), (work / "leaf.key").read_text())


@dataclass
class Pki:
    ca: CA
    other_ca: CA
    server_a: Pem  # *.a.test, a.test and the seed domains
    server_b: Pem  # *.b.test
    client: Pem  # issued by ca
    foreign_client: Pem  # issued by other_ca

    def certificates(self) -> list[dict[str, str]]:
        """``Certificates`` objects for documents: cert-a, cert-b (SVR) and ca-1 (CA)."""
        return [
            {"CertId": "cert-a", "CertType": "SVR", "CertContent": self.server_a.cert, "CertKey": self.server_a.key},
            {"CertId": "cert-b", "CertType": "SVR", "CertContent": self.server_b.cert, "CertKey": self.server_b.key},
            {"CertId": "ca-1", "CertType": "CA", "CertContent": self.ca.pem},
        ]


@pytest.fixture(scope="session")
def pki() -> Pki:
    ca, other = CA("clbagent test CA"), CA("someone else's CA")
    return Pki(
        ca,
        other,
        ca.issue("a.test", ["a.test", "*.a.test", "www.a.test"]),
        ca.issue("b.test", ["b.test", "*.b.test"]),
        ca.issue("client-1", client=True),
        other.issue("intruder", client=True),
    )


# --------------------------------------------------------------------------- backends


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _BackendServer

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body_len = len(self.rfile.read(length)) if length else 0
        query = parse_qs(urlsplit(self.path).query)
        delay = float(query.get("sleep", [self.server.delay])[0])
        if delay:
            time.sleep(delay)
        pad = int(query.get("pad", ["0"])[0])
        payload = {
            "backend": self.server.label,
            "method": self.command,
            "path": self.path,
            "headers": {k: v for k, v in self.headers.items()},
            "body_len": body_len,
            "pad": "x" * pad,
        }
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", query.get("type", ["application/json"])[0])
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        with self.server.lock:
            self.server.hits += 1

    do_GET = do_POST = do_HEAD = _answer


class _BackendServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], label: str, delay: float):
        self.label, self.delay, self.hits = label, delay, 0
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)

    def process_request(self, request, client_address):  # type: ignore[override]
        self.conns.append(request)
        super().process_request(request, client_address)


@dataclass
class Backend:
    ip: str
    port: int
    label: str
    server: _BackendServer
    thread: threading.Thread

    @property
    def hits(self) -> int:
        return self.server.hits

    def target(self, weight: int = 10) -> dict[str, Any]:
        return target(self.ip, self.port, weight)

    def kill(self) -> None:
        """Stop listening and cut every open connection (a dead process, not a graceful stop)."""
        self.server.shutdown()
        self.server.server_close()
        for c in self.server.conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def backends() -> Iterator[Callable[..., Backend]]:
    """Factory of backends: ``backends("b1")`` → a server on 127.0.20.x answering with its label."""
    started: list[Backend] = []
    counter = [0]

    def make(label: str, delay: float = 0.0, ip: str | None = None) -> Backend:
        counter[0] += 1
        ip = ip or f"127.0.20.{counter[0]}"
        server = _BackendServer((ip, 0), label, delay)
        thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
        thread.start()
        b = Backend(ip, server.server_address[1], label, server, thread)
        started.append(b)
        return b

    yield make
    for b in started:
        with contextlib.suppress(OSError):
            b.kill()


# --------------------------------------------------------------------------- nginx


@dataclass
class Served:
    prefix: Path
    nginx: Nginx
    config: Any
    docs: list[dict] = field(default_factory=list)
    mode: str = "static"

    def access_log(self) -> list[dict[str, Any]]:
        path = self.prefix / "logs" / "access.log"
        time.sleep(0.05)
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(params=MODES)
def serve(request: pytest.FixtureRequest) -> Iterator[Callable[..., Served]]:
    """``serve(docs, down=...)``: compile, write the prefix, ``nginx -t``, start (or reload) nginx.
    Every test using it runs twice: static upstreams, and dynamic ones (the Lua balancer).

    The prefix is outside pytest's 0700 tmp tree: nginx workers run as an unprivileged user and
    must reach the temp directories for request bodies."""
    if not NGINX_AVAILABLE:
        pytest.skip("nginx is not installed")
    mode = request.param
    if mode == "dynamic" and not LUA_AVAILABLE:
        pytest.skip("nginx's Lua module is not installed")
    base = Path(tempfile.mkdtemp(prefix="clb-l7-"))
    base.chmod(0o755)
    prefix = base / "nginx"
    running: list[Nginx] = []

    def start(docs: list[dict], down: frozenset[str] = frozenset(), settings: Settings | None = None) -> Served:
        cfg = compile_docs(docs, down, prefix=str(prefix), settings=settings, dynamic=mode == "dynamic")
        write_prefix(cfg, prefix)
        result = check_config(prefix)
        assert result.ok, result.output
        if running:
            running[0].reload()
        else:
            n = Nginx(prefix)
            n.start()
            running.append(n)
        return Served(prefix, running[0], cfg, docs, mode)

    yield start
    for n in running:
        n.stop()
    shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- clients


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def backend(self) -> str:
        return self.json()["backend"]


def http_get(
    vip: str,
    port: int,
    host: str,
    path: str = "/",
    *,
    headers: dict[str, str] | None = None,
    source: str | None = None,
    method: str = "GET",
    body: bytes | None = None,
    timeout: float = 10,
) -> Reply:
    """One plain HTTP/1.1 request to ``vip:port`` with a chosen Host (and source address)."""
    conn = http.client.HTTPConnection(vip, port, timeout=timeout, source_address=(source, 0) if source else None)
    try:
        conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def client_context(
    version: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
    cert: tuple[str, str] | None = None,
    alpn: list[str] | None = None,
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    ctx.set_ciphers(ciphers or "ALL:@SECLEVEL=0")
    if cert:
        ctx.load_cert_chain(*cert)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def https_get(
    vip: str, port: int, sni: str, path: str = "/", ctx: ssl.SSLContext | None = None, timeout: float = 10
) -> tuple[Reply, ssl.SSLSocket]:
    """An HTTPS request with SNI ``sni`` (Host the same); returns the reply and the TLS socket info."""
    ctx = ctx or client_context()
    raw = socket.create_connection((vip, port), timeout=timeout)
    tls = ctx.wrap_socket(raw, server_hostname=sni)
    try:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
        resp = http.client.HTTPResponse(tls)  # type: ignore[arg-type]
        resp.begin()
        reply = Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        return reply, tls
    finally:
        tls.close()


def handshake(vip: str, port: int, sni: str, ctx: ssl.SSLContext) -> tuple[str, str] | None:
    """(protocol, cipher) of a completed handshake, or None when the server refused it."""
    try:
        with socket.create_connection((vip, port), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname=sni) as tls:
            cipher = tls.cipher()
            return tls.version() or "", cipher[0] if cipher else ""
    except (ssl.SSLError, ConnectionResetError, OSError):
        return None


def openssl_connect(vip: str, port: int, sni: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"{vip}:{port}", "-servername", sni, *args],
        input=b"",
        capture_output=True,
        timeout=15,
    )


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=20)
