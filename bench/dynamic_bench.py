"""Dynamic upstreams benchmark (not a test): the Lua balancer against nginx's static ``upstream``.

1. Throughput on the path a user runs: one load balancer (an HTTP listener, one rule, three
   targets of weight 10) compiled by clbagent in static mode and in dynamic mode, each prefix
   served by its own nginx with the same settings (one worker pinned to CPU 0, backends and wrk on
   CPU 1), wrk against each in interleaved rounds (the order rotates). Variants: ``static``;
   ``dynamic`` as compiled (Lua balancer, L7 metrics counted in the log phase); ``dynamic-nometrics``
   (the same prefix with the metrics lines taken out: the balancer's own cost). Per round: req/s
   and requests per CPU second of the worker, and each variant's ratio to static of the same round;
   the median and the spread of the ratios. Keep-alive: the TCP connections the backends accepted
   during each run (their stub_status). The same with response bodies of 1 KiB and 16 KiB
   (``--bodies``; files the backends serve), as extra rows next to the tiny one. Then each variant
   under callgrind: user-space instructions per request (``--instances N``: N nginx instances each,
   median and range). ``--before DIR`` (an earlier
   ``clbagent/lua``, e.g. extracted with ``git archive``) adds ``nometrics-before``, that Lua's
   balancer on the same prefix, so a change is measured before and after in the same run;
   ``--floor`` adds ``nometrics-floor``, a balancer that only sets one member and an empty log
   phase: what nginx's Lua module costs by itself.
2. Change to traffic: time from sending a member change to the first request answered by the new
   member — over the control channel (dynamic), and by rewriting the configuration and reloading
   (static) — with 1 and with 1,000 upstreams in the configuration.

Run:  nice -n 10 .venv/bin/python bench/dynamic_bench.py [--seconds 2] [--rounds 9] [--bodies 0,1024,16384]
      [--before DIR] [--floor] [--instances 1] [--only throughput|instructions|change] [--sizes 1,1000] [--repeats 20]
Hold /tmp/clb-locks/bench_wrk while it runs on a shared host.
Goals: dynamic throughput ≥ 90% of static; dynamic change ≤ 100 ms.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clbagent.l7 import compile_nginx, write_prefix  # noqa: E402
from clbagent.l7.compile import lua_text  # noqa: E402
from clbagent.nginx.metrics_channel import SCOPE_VAR  # noqa: E402
from clbagent.nginx.process import NGINX, Nginx, check_config  # noqa: E402
from clbagent.nginx.upstreams_channel import (  # noqa: E402
    DATA_DIR,
    LUA_DIR,
    Member,
    Upstream,
    UpstreamsChannel,
    channel_server,
    http_directives,
    main_directives,
    render_data_file,
    shared_dict_size,
    upstream_block,
    upstreams_of,
)
from clbagent.validate import validate_documents  # noqa: E402

FRONT, BACK = "127.0.40.{}", "127.0.43.{}"
BACKENDS = 4
FRONT_CPU, OTHER_CPU = 0, 1  # the measured nginx worker alone on one core; wrk and backends on the other
VARIANTS = ("static", "dynamic", "dynamic-nometrics")
BEFORE = "nometrics-before"  # dynamic-nometrics with the Lua directory given by --before
FLOOR = "nometrics-floor"  # dynamic-nometrics with a balancer that only sets the first member (--floor)

# The least any Lua balancer does: set_current_peer of one member (read once), an empty log phase.
# What nginx's Lua module costs by itself, whatever the balancer's own work.
FLOOR_BALANCER = """\
local set_current_peer = require("ngx.balancer").set_current_peer
local M = {}
local host, port
function M.balance(name)
  if not host then
    local up = require("cjson").decode(ngx.shared.clb_upstreams:get("d:" .. name))
    host, port = up.members[1].endpoint:match("^(.*):(%d+)$")
    port = tonumber(port)
  end
  set_current_peer(host, port)
end
function M.log() end
function M.header_filter() end
return M
"""


def floor_lua(work: Path) -> Path:
    """A copy of the Lua directory with the floor's balancer."""
    lua = work / "floor-lua"
    shutil.copytree(LUA_DIR, lua)
    (lua / "clb" / "balancer.lua").write_text(FLOOR_BALANCER)
    return lua


def variants_of(work: Path, before: Path | None, floor: bool) -> dict[str, Path]:
    """The variants to measure, each with the Lua directory its nginx loads."""
    out = dict.fromkeys(VARIANTS, LUA_DIR)
    if before:
        out[BEFORE] = before.resolve()
    if floor:
        out[FLOOR] = floor_lua(work)
    return out


COMMON = """\
worker_processes 1;
pid run/nginx.pid;
error_log logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path tmp/client_body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
{body}
}}
"""

FRONT_BODY = """\
    proxy_http_version 1.1;
    proxy_set_header Connection "";
{http}{upstreams}
    server {{
        listen {front}:{port};
{locations}
    }}
{channel}"""

STATIC = "    upstream s{i} {{ {servers} keepalive 32; }}\n"
LOCATIONS = """\
        location /s{i} {{ proxy_pass http://s{i}; }}
        location /d{i} {{ proxy_pass http://d{i}; }}
"""


def free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def prefix_dirs(prefix: Path) -> None:
    for d in ("logs", "tmp"):
        (prefix / d).mkdir(parents=True, exist_ok=True)
    (prefix / "run").mkdir(mode=0o700, exist_ok=True)


def start(prefix: Path, conf: str | None = None) -> Nginx:
    if conf is not None:
        (prefix / "nginx.conf").write_text(conf)
    result = check_config(prefix)
    assert result.ok, result.output
    n = Nginx(prefix)
    n.start()
    return n


class Backends:
    """One nginx with a server per backend address answering its own name, on the wrk core, and a
    ``stub_status`` that counts the TCP connections it accepted (few with upstream keep-alive).
    ``/body/<n>`` is a file of ``n`` bytes (a response of a realistic size)."""

    def __init__(self, work: Path, bodies: tuple[int, ...] = ()):
        self.ports = [free_port(BACK.format(i + 1)) for i in range(BACKENDS)]
        self.status_port = free_port(BACK.format(9))
        prefix = work / "back"
        prefix_dirs(prefix)
        (prefix / "html" / "body").mkdir(parents=True)
        for n in bodies:
            (prefix / "html" / "body" / str(n)).write_bytes(b"x" * n)
        files = f"location /body/ {{ root {prefix}/html; }}"
        servers = "".join(
            f'    server {{ listen {BACK.format(i + 1)}:{p}; location / {{ return 200 "b{i}\\n"; }} {files} }}\n'
            for i, p in enumerate(self.ports)
        )
        servers += f"    server {{ listen {BACK.format(9)}:{self.status_port}; location / {{ stub_status; }} }}\n"
        conf = COMMON.format(body=servers).replace(
            "worker_processes 1;", f"worker_processes 1;\nworker_cpu_affinity {affinity(OTHER_CPU)};"
        )
        self.nginx = start(prefix, conf)

    def accepted(self) -> int:
        """TCP connections accepted so far (the status request itself adds one)."""
        conn = http.client.HTTPConnection(BACK.format(9), self.status_port, timeout=10)
        conn.request("GET", "/")
        text = conn.getresponse().read().decode()
        conn.close()
        return int(text.splitlines()[2].split()[0])

    def close(self) -> None:
        self.nginx.stop()


def affinity(cpu: int) -> str:
    """nginx's worker_cpu_affinity mask of one CPU."""
    return "1" + "0" * cpu


def document(vip: str, port: int, backends: Backends) -> dict:
    targets = [{"EniIp": BACK.format(i + 1), "Port": backends.ports[i], "Weight": 10} for i in range(3)]
    rule = {
        "LocationId": "loc-root",
        "Domain": "www.example.com",
        "Url": "/",
        "DefaultServer": True,
        "Targets": targets,
    }
    listener = {"ListenerId": "lbl-http", "Protocol": "HTTP", "Port": port, "Rules": [rule]}
    return {"LoadBalancerId": "lb-bench", "LoadBalancerVips": [vip], "Listeners": [listener]}


@dataclass(frozen=True)
class Run:
    """One wrk run: requests per wall-clock second, per CPU second of the nginx worker (the
    steadier figure on a shared host: other load steals wall time, not the worker's CPU time), and
    the TCP connections the backends accepted meanwhile."""

    rate: float
    per_cpu: float
    backend_connections: int


class Front:
    """One load balancer document compiled in one mode and served by its own nginx (one worker on
    ``FRONT_CPU``). ``dynamic-nometrics`` is the dynamic prefix without the L7 metrics: the
    http-level Lua without the counting, and no scope variable set in the servers and locations."""

    def __init__(
        self, work: Path, variant: str, vip: str, port: int, backends: Backends, serve: bool = True, lua: Path = LUA_DIR
    ):
        self.variant, self.url, self.backends = variant, f"http://{vip}:{port}/", backends
        self.prefix = work / variant
        dynamic = variant != "static"
        state = validate_documents([("lb-bench.yaml", document(vip, port, backends))])
        cfg = compile_nginx(state, prefix=str(self.prefix), dynamic=dynamic)
        conf = cfg.files["nginx.conf"].replace(
            "worker_processes auto;", f"worker_processes 1;\nworker_cpu_affinity {affinity(FRONT_CPU)};"
        )
        assert conf != cfg.files["nginx.conf"], "nginx.conf no longer says worker_processes auto"
        if variant in ("dynamic-nometrics", BEFORE, FLOOR):
            conf = without_metrics(conf, cfg.files, str(self.prefix), lua)
        cfg.files["nginx.conf"] = conf
        write_prefix(cfg, self.prefix)
        self.nginx = Nginx(self.prefix)
        if serve:
            self.nginx = start(self.prefix)

    def instructions(self, warm: int, seconds: int) -> tuple[float, int]:
        """The worker's user-space instructions per request, counted by callgrind (nginx in one
        process under valgrind, wrk for ``seconds`` after ``warm`` seconds): the figure a shared
        host does not disturb. Kernel time (the sockets) is left out, so it overstates the share
        of the Lua code. Returns it and the number of requests counted (access log lines)."""
        out = self.prefix / "callgrind.out"
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--smc-check=all-non-file"]
        argv += [NGINX, "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf")]
        proc = subprocess.Popen(
            [*argv, "-g", "daemon off; master_process off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            self.follows_any(timeout=120)
            self.load(warm)
            subprocess.run(["callgrind_control", "--zero", str(proc.pid)], capture_output=True, check=True)
            log = self.prefix / "logs" / "access.log"
            before = log.read_bytes().count(b"\n")
            self.load(seconds)
            time.sleep(0.5)
            requests = log.read_bytes().count(b"\n") - before
            subprocess.run(["callgrind_control", "--dump", str(proc.pid)], capture_output=True, check=True)
        finally:
            proc.terminate()
            proc.wait()
        dumped = (self.prefix / "callgrind.out.1").read_text()  # the explicit dump: since the zeroing
        total = int(re.search(r"^summary: (\d+)", dumped, re.M).group(1))
        return total / requests, requests

    def load(self, seconds: int) -> None:
        subprocess.run(["wrk", "-t1", "-c8", f"-d{seconds}s", self.url], capture_output=True, check=True)

    def follows_any(self, timeout: float) -> None:
        """Wait until the front answers (slow to start under valgrind)."""
        host, port = self.url.split("/")[2].split(":")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection(host, int(port), timeout=5)
                conn.request("GET", "/")
                conn.getresponse().read()
                conn.close()
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError("the front under valgrind never answered")

    def worker_cpu(self) -> float:
        (pid,) = self.nginx.workers()
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system

    def wrk(self, seconds: int, body: int = 0) -> Run:
        """One wrk run; ``body``: the size of the backends' response (0: their tiny one)."""
        cpu, accepted = self.worker_cpu(), self.backends.accepted()
        url = f"{self.url}body/{body}" if body else self.url
        out = subprocess.run(
            ["taskset", "-c", str(OTHER_CPU), "wrk", "-t1", "-c32", f"-d{seconds}s", url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
        assert errors is None, out
        requests = int(re.search(r"(\d+) requests in", out).group(1))
        rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        return Run(rate, requests / (self.worker_cpu() - cpu), self.backends.accepted() - accepted - 1)

    def close(self) -> None:
        self.nginx.stop()


def without_metrics(conf: str, files: dict[str, str], prefix: str, lua: Path = LUA_DIR) -> str:
    """The compiled nginx.conf with the http-level Lua of ``count=False`` (the balancer's phases
    only, their code taken from ``lua``), and every include file without its scope variable."""
    upstreams = upstreams_of(files)
    counted = lua_text(prefix, prefix, upstreams).http
    assert counted in conf, "the compiled http-level Lua changed: update the benchmark"
    sticky = any(u.sticky for u in upstreams.values())
    bare = http_directives(Path(prefix) / DATA_DIR, shared_dict_size(upstreams), lua, count=False, sticky=sticky)
    for path in [p for p in files if p.startswith("conf.d/")]:
        files[path] = re.sub(rf"\n *set \${SCOPE_VAR} [^\n]*;", "", files[path])
    return conf.replace(counted, bare)


def throughput(work: Path, seconds: int, rounds: int, bodies: tuple[int, ...], lua: dict[str, Path]) -> None:
    """Rounds of one run per variant, the order rotating, so that the load of a shared host hits
    all alike; every variant's ratio to static is taken within its round. Once per response size
    in ``bodies`` (0: the backends' tiny answer). ``lua``: the variants and their Lua directories."""
    variants = tuple(lua)
    backends = Backends(work, tuple(b for b in bodies if b))
    port = free_port(FRONT.format(1))
    fronts: dict[str, Front] = {}
    results: dict[int, dict[str, list[Run]]] = {}
    try:
        for i, v in enumerate(variants):
            fronts[v] = Front(work, v, FRONT.format(i + 1), port, backends, lua=lua[v])
        for front in fronts.values():
            front.wrk(1)  # warm-up: LuaJIT traces, keep-alive pools
        orders = itertools.cycle(itertools.permutations(variants))
        for body in bodies:
            runs: dict[str, list[Run]] = results.setdefault(body, {v: [] for v in variants})
            for _ in range(rounds):
                for v in next(orders):
                    runs[v].append(fronts[v].wrk(seconds, body))
    finally:
        for front in fronts.values():
            front.close()
        backends.close()
    for body, runs in results.items():
        size = f"{body:,}-byte responses" if body else "tiny responses (3 bytes)"
        print(f"throughput, {size}: wrk -t1 -c32, {rounds} rounds of {seconds} s each; worker on CPU {FRONT_CPU}")
        report(runs)


def report(runs: dict[str, list[Run]]) -> None:
    """Each variant's rates, and its ratios to static (median, quartiles, range over the rounds)."""
    for v in runs:
        rates = ", ".join(f"{r.rate:,.0f}" for r in runs[v])
        conns = sorted(r.backend_connections for r in runs[v])
        print(f"  {v:18} req/s: {rates}; backend TCP connections per run: {conns[0]}-{conns[-1]}")
    for label, key in (("per wall-clock second", "rate"), ("per CPU second of the worker", "per_cpu")):
        print(f"  {label}: static median {statistics.median(getattr(r, key) for r in runs['static']):,.0f}")
        for v in list(runs)[1:]:
            ratios = sorted(getattr(d, key) / getattr(s, key) for s, d in zip(runs["static"], runs[v], strict=True))
            q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
            print(
                f"    {v:18} median {statistics.median(getattr(r, key) for r in runs[v]):,.0f}; "
                f"{v}/static = {statistics.median(ratios):.1%} median of {len(ratios)} rounds "
                f"(quartiles {q1:.1%}-{q3:.1%}, range {ratios[0]:.1%}-{ratios[-1]:.1%}; goal >= 90%)"
            )


def instructions(work: Path, warm: int, seconds: int, lua: dict[str, Path], instances: int) -> None:
    """Each variant's nginx under callgrind in turn, ``instances`` times (each a new nginx: LuaJIT
    forms its traces differently each time, a few hundred instructions apart): user-space
    instructions per request, median and range."""
    variants = tuple(lua)
    backends = Backends(work)
    port = free_port(FRONT.format(1))
    got: dict[str, list[float]] = {v: [] for v in variants}
    try:
        fronts = [
            Front(work, v, FRONT.format(i + 1), port, backends, serve=False, lua=lua[v]) for i, v in enumerate(variants)
        ]
        for _ in range(instances):
            for front in fronts:
                got[front.variant].append(front.instructions(warm, seconds)[0])
    finally:
        backends.close()
    print(
        f"instructions per request of the nginx worker (callgrind, user space only, {seconds} s of wrk -c8 each, "
        f"{instances} nginx instance(s) per variant):"
    )
    static = statistics.median(got["static"])
    for v, counts in got.items():
        n = statistics.median(counts)
        ratio = "" if v == "static" else f"; static/{v} = {static / n:.1%}"
        print(f"  {v:18} median {n:,.0f} (range {min(counts):,.0f}-{max(counts):,.0f}){ratio}")


class Bench:
    """A backend nginx (four servers answering their own name) and a front nginx with ``size``
    static and ``size`` dynamic upstreams over the first ``members`` backends, for the time from a
    change to traffic."""

    def __init__(self, work: Path, size: int):
        self.work, self.size = work, size
        self.back_ports = [free_port(BACK.format(i + 1)) for i in range(BACKENDS)]
        back = work / "back"
        prefix_dirs(back)
        servers = "".join(
            f'    server {{ listen {BACK.format(i + 1)}:{p}; location / {{ return 200 "b{i}\\n"; }} }}\n'
            for i, p in enumerate(self.back_ports)
        )
        self.back = start(back, COMMON.format(body=servers))
        self.front = work / "front"
        prefix_dirs(self.front)
        self.port = free_port(FRONT.format(1))
        self.nginx = self._start_front([0, 1, 2])
        self.channel = UpstreamsChannel.of_prefix(self.front)

    def endpoints(self, which: list[int]) -> list[str]:
        return [f"{BACK.format(i + 1)}:{self.back_ports[i]}" for i in which]

    def upstream(self, which: list[int]) -> Upstream:
        return Upstream(tuple(Member(e, 10) for e in self.endpoints(which)))

    def _conf(self, which: list[int]) -> str:
        servers = " ".join(f"server {e} weight=10;" for e in self.endpoints(which))
        body = FRONT_BODY.format(
            http=http_directives(self.front / DATA_DIR, "32m"),
            front=FRONT.format(1),
            port=self.port,
            upstreams="".join(STATIC.format(i=i, servers=servers) + upstream_block(f"d{i}") for i in range(self.size)),
            locations="".join(LOCATIONS.format(i=i) for i in range(self.size)),
            channel=channel_server(self.front),
        )
        return main_directives() + COMMON.format(body=body)

    def _write(self, which: list[int]) -> None:
        data = render_data_file({f"d{i}": self.upstream(which) for i in range(self.size)})
        (self.front / DATA_DIR).mkdir(exist_ok=True)
        (self.front / DATA_DIR / "bench.json").write_text(data)
        (self.front / "nginx.conf").write_text(self._conf(which))

    def _start_front(self, which: list[int]) -> Nginx:
        self._write(which)
        return start(self.front, self._conf(which))

    def follows(self, path: str, label: str, timeout: float = 120) -> None:
        """Request ``path`` until backend ``label`` answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            conn = http.client.HTTPConnection(FRONT.format(1), self.port, timeout=10)
            conn.request("GET", path)
            body = conn.getresponse().read().decode().strip()
            conn.close()
            if body == label:
                return
        raise TimeoutError(f"{path}: {label} never answered")

    def change_dynamic(self, target: int) -> float:
        """Swap member ``target`` in for the others of the last upstream; seconds until it answers."""
        t = time.perf_counter()
        self.channel.send({f"d{self.size - 1}": self.upstream([target])})
        self.follows(f"/d{self.size - 1}", f"b{target}")
        return time.perf_counter() - t

    def change_static(self, target: int) -> float:
        """The same change the static way: new configuration, ``nginx -t``, reload."""
        t = time.perf_counter()
        self._write([target])
        assert check_config(self.front).ok
        self.nginx.reload()
        self.follows(f"/s{self.size - 1}", f"b{target}")
        return time.perf_counter() - t

    def close(self) -> None:
        self.channel.close()
        self.nginx.stop()
        self.back.stop()


def change_times(bench: Bench, repeats: int) -> None:
    dyn = [bench.change_dynamic(3 if i % 2 == 0 else 0) for i in range(repeats)]
    sta = [bench.change_static(3 if i % 2 == 0 else 0) for i in range(max(2, repeats // 5))]
    d, s = statistics.median(dyn), statistics.median(sta)
    print(
        f"change → traffic, {bench.size} upstream(s): dynamic median {d * 1000:.1f} ms (max "
        f"{max(dyn) * 1000:.1f} ms, goal ≤ 100 ms), static reload median {s * 1000:.0f} ms; "
        f"static/dynamic = {s / d:.0f} times"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--bodies", default="0,1024,16384", help="response sizes in bytes (0: tiny)")
    ap.add_argument("--instances", type=int, default=1, help="callgrind: nginx instances per variant")
    ap.add_argument("--before", type=Path, help="an earlier clbagent/lua directory: its balancer as one more variant")
    ap.add_argument("--floor", action="store_true", help="one more variant: a balancer that only sets a member")
    ap.add_argument("--only", choices=("throughput", "change", "instructions"), help="run one part only")
    ap.add_argument("--sizes", default="1,1000")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (scripts/apt-packages-lua.txt)")
        return 1
    work = Path(tempfile.mkdtemp(prefix="clb-dynbench-"))
    work.chmod(0o755)
    lua = variants_of(work, args.before, args.floor)
    try:
        if args.only in (None, "throughput"):
            bodies = tuple(int(x) for x in args.bodies.split(","))
            throughput(work / "throughput", args.seconds, args.rounds, bodies, lua)
        if args.only in (None, "instructions"):
            if shutil.which("valgrind"):
                instructions(work / "instructions", 5, 10, lua, args.instances)
            else:
                print("instructions: valgrind is not installed (scripts/apt-packages-lua.txt)")
        for size in [int(x) for x in args.sizes.split(",")] if args.only in (None, "change") else []:
            bench = Bench(work / f"n{size}", size)
            try:
                change_times(bench, args.repeats)
            finally:
                bench.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
