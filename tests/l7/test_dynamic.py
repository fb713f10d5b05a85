"""Dynamic upstreams through the compiler (real nginx, real backends): a prefix written by
``render --out`` balances in Lua under a plain ``nginx -p``, and a target change touches only the
load balancer's data file and reaches a running nginx over the control channel without a reload."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from clbagent.l7 import NginxConfig, compile_nginx, down_key, write_prefix
from clbagent.l7.compile import main_conf
from clbagent.nginx.process import Nginx
from clbagent.nginx.upstreams_channel import UpstreamsChannel, upstreams_of
from clbagent.validate import validate_documents
from tests.l7.conftest import LUA_AVAILABLE, Backend, http_get, listener, load_balancer, rule
from tests.lua.conftest import wait_for

pytestmark = [pytest.mark.nginx, pytest.mark.skipif(not LUA_AVAILABLE, reason="nginx's Lua module is not installed")]
VIP, PORT, LB = "127.0.10.77", 18177, "lb-dyn"
WEIGHTED, STICKY, HASHED = "w.test", "c.test", "h.test"


def document(weighted: list[dict], sticky: list[dict], hashed: list[dict]) -> dict:
    rules = [
        rule("w", WEIGHTED, "/", weighted, DefaultServer=True),
        rule("c", STICKY, "/", sticky, SessionExpireTime=300),
        rule("h", HASHED, "/", hashed, Scheduler="IP_HASH"),
    ]
    return load_balancer(LB, VIP, [listener("l", "HTTP", PORT, rules)])


def spread(host: str, n: int, **kw) -> Counter:
    return Counter(http_get(VIP, PORT, host, **kw).backend for _ in range(n))


@pytest.fixture
def prefix() -> Iterator[Path]:
    """A prefix directory nginx's unprivileged workers can reach (outside pytest's 0700 tree)."""
    base = Path(tempfile.mkdtemp(prefix="clb-dyn-"))
    base.chmod(0o755)
    yield base / "nginx"
    Nginx(base / "nginx").stop()
    shutil.rmtree(base, ignore_errors=True)


def test_render_out_balances_in_lua_under_plain_nginx(prefix: Path, backends, tmp_path: Path) -> None:
    a, b, zero = backends("a"), backends("b"), backends("zero")
    s1, s2, h1, h2 = backends("s1"), backends("s2"), backends("h1"), backends("h2")
    doc = document([a.target(30), b.target(10), zero.target(0)], [s1.target(), s2.target()], [h1.target(), h2.target()])
    (tmp_path / "lb.json").write_text(json.dumps(doc))
    cli = [sys.executable, "-m", "clbagent.cli", "render", str(tmp_path / "lb.json"), "--out", str(prefix)]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "dynamic upstreams (default:" in done.stderr  # the Lua module is installed here
    assert (prefix / "run").stat().st_mode & 0o777 == 0o700  # the control socket's directory
    Nginx(prefix).start()

    seen = spread(WEIGHTED, 400)
    assert 270 <= seen["a"] <= 330 and seen["a"] + seen["b"] == 400, seen  # 3:1 within ±10 %
    assert seen["zero"] == 0  # weight 0: no traffic

    chosen = {}
    for i in range(12):  # ip_hash keys on the first three octets of an IPv4 client
        source = f"127.{30 + 17 * i}.{(i * 53) % 250}.1"
        pinned = spread(HASHED, 6, source=source)
        assert len(pinned) == 1, (source, pinned)
        chosen[source] = next(iter(pinned))
    assert set(chosen.values()) == {"h1", "h2"}, chosen

    first = http_get(VIP, PORT, STICKY)
    cookie = first.headers["set-cookie"].split(";")[0]
    assert spread(STICKY, 10, headers={"Cookie": cookie}) == Counter({first.backend: 10})
    pinned: Backend = s1 if first.backend == "s1" else s2
    pinned.kill()
    after = http_get(VIP, PORT, STICKY, headers={"Cookie": cookie})
    assert after.status == 200 and after.backend != first.backend  # failover
    moved = after.headers["set-cookie"].split(";")[0]
    assert moved != cookie and spread(STICKY, 5, headers={"Cookie": moved}) == Counter({after.backend: 5})
    name = cookie.partition("=")[0]
    bogus = http_get(VIP, PORT, STICKY, headers={"Cookie": f"{name}=not-a-server"})
    assert bogus.status == 200 and bogus.headers["set-cookie"].split(";")[0] == moved


def test_static_rendering_has_no_lua(tmp_path: Path) -> None:
    doc = document([{"EniIp": "127.0.20.1", "Port": 80, "Weight": 10}], [], [])
    (tmp_path / "lb.json").write_text(json.dumps(doc))
    cli = [sys.executable, "-m", "clbagent.cli", "render", str(tmp_path / "lb.json"), "--upstreams", "static"]
    done = subprocess.run([*cli, "--format", "json"], capture_output=True, text=True, timeout=120)
    out = json.loads(done.stdout)
    assert out["upstreams"] == "static"
    assert "lua" not in out["nginx"]["nginx.conf"] and not any(p.startswith("upstreams/") for p in out["nginx"])


def test_the_cookie_filter_is_rendered_only_with_cookie_persistence() -> None:
    """Without any sticky rule no response pays for a Lua header filter; the first sticky rule
    changes nginx.conf (so the agent reloads instead of sending data only)."""
    target = [{"EniIp": "127.0.20.1", "Port": 80, "Weight": 10}]

    def conf(sticky: list[dict]) -> str:
        state = validate_documents([("doc", document(target, sticky, []))])
        return compile_nginx(state, prefix="/srv/clb", dynamic=True).files["nginx.conf"]

    assert "header_filter_by_lua" not in conf([])
    assert 'header_filter_by_lua_block { require("clb.balancer").header_filter() }' in conf(target)


def test_a_target_change_is_data_only_and_follows_without_reload(prefix: Path, backends) -> None:
    a, b, c = backends("a"), backends("b"), backends("c")
    s, h = backends("s"), backends("h")

    def compiled(weighted: list[dict], down: frozenset[str] = frozenset()) -> NginxConfig:
        state = validate_documents([("doc", document(weighted, [s.target()], [h.target()]))])
        return compile_nginx(state, down, prefix=str(prefix), dynamic=True)

    first = compiled([a.target(10), b.target(10)])
    before = first.files
    after = compiled([a.target(0), b.target(10), c.target(30)]).files  # reweight one, add one
    dead_b = frozenset({down_key(LB, "l", "w", f"{b.ip}:{b.port}")})
    health = compiled([a.target(10), b.target(10)], dead_b).files
    data = f"upstreams/{LB}.json"
    for other in (after, health):
        assert before.keys() == other.keys()
        assert [p for p in before if before[p] != other[p]] == [data]

    write_prefix(first, prefix)
    nginx = Nginx(prefix)
    nginx.start()
    assert set(spread(WEIGHTED, 20)) == {"a", "b"}
    master, workers = nginx.pid, sorted(nginx.workers())

    with UpstreamsChannel.of_prefix(prefix) as channel:
        changed = channel.sync(upstreams_of(after))
    assert len(changed) == 1  # the weighted rule's upstream, nothing else
    seen = spread(WEIGHTED, 80)
    # smooth WRR per worker: 1:3 within a request or two of each worker's share
    assert seen["a"] == 0 and 16 <= seen["b"] <= 24 and seen["b"] + seen["c"] == 80, seen
    assert (nginx.pid, sorted(nginx.workers())) == (master, workers), "no reload"


def test_the_agent_layout_serves_the_current_generation(prefix: Path, backends) -> None:
    """nginx -p <root> -c <root>/current/nginx.conf, ``current`` a symlink to a generation: the
    data files come from the generation served, and a reload onto a new generation loads its own."""
    a, b, s, h = backends("a"), backends("b"), backends("s"), backends("h")
    root = prefix
    for name, mode in (("logs", 0o755), ("tmp", 0o755), ("run", 0o700)):
        (root / name).mkdir(mode=mode, parents=True)

    def generation(number: int, weighted: list[dict]) -> None:
        state = validate_documents([("doc", document(weighted, [s.target()], [h.target()]))])
        files = compile_nginx(state, prefix=str(root), dynamic=True).files
        conf = main_conf(str(root), dynamic=True, upstreams=upstreams_of(files), conf_dir=str(root / "current"))
        gen = root / "generations" / f"g{number:06d}"
        write_prefix(NginxConfig({**files, "nginx.conf": conf}), gen)
        test = subprocess.run(["nginx", "-p", str(root), "-c", str(gen / "nginx.conf"), "-t"], capture_output=True)
        assert test.returncode == 0, test.stderr
        (root / "next").symlink_to(gen.relative_to(root))
        (root / "next").replace(root / "current")

    generation(1, [a.target(10)])
    serving = ["nginx", "-p", str(root), "-c", str(root / "current" / "nginx.conf")]
    started = subprocess.run(serving, capture_output=True)
    assert started.returncode == 0, started.stderr
    nginx = Nginx(root)
    wait_for(lambda: nginx.pid is not None and (root / "run" / "ctl.sock").exists(), "nginx")
    assert spread(WEIGHTED, 6) == Counter({"a": 6})
    generation(2, [b.target(10)])
    nginx.reload()
    assert spread(WEIGHTED, 6) == Counter({"b": 6})
