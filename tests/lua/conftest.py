"""Fixtures of the dynamic-upstream tests: the real nginx with the Lua module, a hand-written
nginx.conf and a data file (upstreams/test.json) in a temp prefix, real backends on loopback (tests/l7/conftest.py)."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from clbagent.nginx.process import Nginx, check_config
from clbagent.nginx.upstreams_channel import (
    DATA_DIR,
    NGINX_MODULES,
    Upstream,
    UpstreamsChannel,
    channel_server,
    http_directives,
    main_directives,
    render_data_file,
    upstream_block,
)
from tests.l7.conftest import backends  # noqa: F401 (a fixture)

LUA_AVAILABLE = (NGINX_MODULES / "ngx_http_lua_module.so").exists() and shutil.which("nginx") is not None
VIP = "127.0.40.1"
LUA_FAULTS = ("runtime error", "[alert]", "[emerg]", "[crit]", "cannot use")  # in error.log: a bug

CONF = """\
{main}worker_processes 2;
pid run/nginx.pid;
error_log logs/error.log notice;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path tmp/client_body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_connect_timeout 2s;
    proxy_next_upstream error timeout;
{http}{upstreams}{extra}{channel}}}
"""

SERVER = """\
    server {{
        listen {vip}:{port};
        location / {{ proxy_pass http://{name}; }}
    }}
"""


def free_port(ip: str = VIP) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


@dataclass
class LuaNginx:
    prefix: Path
    nginx: Nginx
    ports: dict[str, int]  # upstream name → port of its server on VIP
    extra: str = ""  # more http-level configuration (a static upstream to compare with)

    def channel(self) -> UpstreamsChannel:
        return UpstreamsChannel.of_prefix(self.prefix)

    def write(self, upstreams: Mapping[str, Upstream], shm: str = "4m") -> None:
        """Rewrite nginx.conf and the data file (the same ports); reload with ``reload()``."""
        (self.prefix / DATA_DIR).mkdir(exist_ok=True)
        (self.prefix / DATA_DIR / "test.json").write_text(render_data_file(upstreams))
        blocks = "".join(
            upstream_block(n, keepalive=16) + SERVER.format(name=n, vip=VIP, port=p)
            for n, p in sorted(self.ports.items())
        )
        conf = CONF.format(
            main=main_directives(),
            http=http_directives(self.prefix / DATA_DIR, shm),
            upstreams=blocks,
            extra=self.extra,
            channel=channel_server(self.prefix),
        )
        (self.prefix / "nginx.conf").write_text(conf)
        result = check_config(self.prefix)
        assert result.ok, result.output

    def url(self, name: str) -> tuple[str, int]:
        return VIP, self.ports[name]


@pytest.fixture
def lua_nginx() -> Iterator[Callable[..., LuaNginx]]:
    """``lua_nginx({name: Upstream}, shm="4m", extra="")``: a started nginx whose upstreams come
    from the data file, each behind its own server on VIP."""
    if not LUA_AVAILABLE:
        pytest.skip("nginx or its Lua module is not installed")
    base = Path(tempfile.mkdtemp(prefix="clb-lua-"))
    base.chmod(0o755)  # workers (unprivileged) reach the temp directories
    running: list[Nginx] = []

    def start(upstreams: Mapping[str, Upstream], shm: str = "4m", extra: str = "") -> LuaNginx:
        prefix = base / "nginx"
        for d in ("logs", "tmp"):
            (prefix / d).mkdir(parents=True, exist_ok=True)
        (prefix / "run").mkdir(mode=0o700, exist_ok=True)
        served = LuaNginx(prefix, Nginx(prefix), {n: free_port() for n in upstreams}, extra)
        served.write(upstreams, shm)
        served.nginx.start()
        running.append(served.nginx)
        wait_for(lambda: (prefix / "run" / "ctl.sock").exists(), "control socket")
        return served

    yield start
    for n in running:
        n.stop()
    log = base / "nginx" / "logs" / "error.log"
    text = log.read_text() if log.exists() else ""
    shutil.rmtree(base, ignore_errors=True)
    faults = [line for line in text.splitlines() if any(f in line for f in LUA_FAULTS)]
    assert not faults, "\n".join(faults)


def wait_for(cond: Callable[[], object], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
