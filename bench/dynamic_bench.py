"""Dynamic upstreams benchmark (not a test): the Lua balancer against nginx's static ``upstream``
in one run, on the same nginx, the same backends and the same configuration otherwise.

1. Throughput: wrk against a location proxying to a static upstream and one proxying to the
   dynamic (Lua) upstream of the same members, in pairs of rounds; requests per second and per
   CPU second of the (single) nginx worker, and the median of the per-pair ratios.
2. Change to traffic: time from sending a member change to the first request answered by the new
   member — over the control channel (dynamic), and by rewriting the configuration and reloading
   (static) — with 1 and with 1,000 upstreams in the configuration.

Run:  .venv/bin/python bench/dynamic_bench.py [--seconds 2] [--rounds 8] [--sizes 1,1000] [--repeats 20]
Goals: dynamic throughput ≥ 90% of static; dynamic change ≤ 100 ms.
"""

from __future__ import annotations

import argparse
import http.client
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

from clbagent.nginx.process import Nginx, check_config  # noqa: E402
from clbagent.nginx.upstreams_channel import (  # noqa: E402
    DATA_DIR,
    Member,
    Upstream,
    UpstreamsChannel,
    channel_server,
    http_directives,
    main_directives,
    render_data_file,
    upstream_block,
)

FRONT, BACK = "127.0.40.1", "127.0.43.{}"
BACKENDS = 4

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


def start(prefix: Path, conf: str) -> Nginx:
    (prefix / "nginx.conf").write_text(conf)
    result = check_config(prefix)
    assert result.ok, result.output
    n = Nginx(prefix)
    n.start()
    return n


@dataclass(frozen=True)
class Run:
    """One wrk run: requests per wall-clock second, and per CPU second of the nginx worker (the
    steadier figure on a shared host: other load steals wall time, not the worker's CPU time)."""

    rate: float
    per_cpu: float


class Bench:
    """A backend nginx (four servers answering their own name) and a front nginx with ``size``
    static and ``size`` dynamic upstreams over the first ``members`` backends."""

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
        self.port = free_port(FRONT)
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
            front=FRONT,
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

    def worker_cpu(self) -> float:
        """CPU seconds the front nginx's worker has used so far."""
        (pid,) = self.nginx.workers()
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system

    def wrk(self, path: str, seconds: int) -> Run:
        cpu = self.worker_cpu()
        out = subprocess.run(
            ["wrk", "-t1", "-c32", f"-d{seconds}s", f"http://{FRONT}:{self.port}{path}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
        assert errors is None, out
        requests = int(re.search(r"(\d+) requests in", out).group(1))
        rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        return Run(rate, requests / (self.worker_cpu() - cpu))

    def follows(self, path: str, label: str, timeout: float = 120) -> None:
        """Request ``path`` until backend ``label`` answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            conn = http.client.HTTPConnection(FRONT, self.port, timeout=10)
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


def throughput(bench: Bench, seconds: int, rounds: int) -> None:
    """Paired rounds, the order alternating, so that the load of a shared host hits both alike."""
    pairs = []
    for i in range(rounds):
        order = ("/s0", "/d0") if i % 2 == 0 else ("/d0", "/s0")
        got = {path: bench.wrk(path, seconds) for path in order}
        pairs.append((got["/s0"], got["/d0"]))
    print("  pairs, static / dynamic req/s:", ", ".join(f"{s.rate:,.0f} / {d.rate:,.0f}" for s, d in pairs))
    for label, key in (("per wall-clock second", "rate"), ("per CPU second of the worker", "per_cpu")):
        s = statistics.median(getattr(p[0], key) for p in pairs)
        d = statistics.median(getattr(p[1], key) for p in pairs)
        ratio = statistics.median(getattr(p[1], key) / getattr(p[0], key) for p in pairs)
        print(
            f"throughput {label} (wrk -t1 -c32, {rounds} pairs of {seconds}s): static {s:,.0f}, "
            f"dynamic {d:,.0f}; dynamic/static = {ratio:.1%} (median of pairs, goal >= 90%)"
        )


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
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--sizes", default="1,1000")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (scripts/apt-packages-lua.txt)")
        return 1
    work = Path(tempfile.mkdtemp(prefix="clb-dynbench-"))
    work.chmod(0o755)
    try:
        for n, size in enumerate(int(x) for x in args.sizes.split(",")):
            bench = Bench(work / f"n{size}", size)
            try:
                if n == 0:
                    throughput(bench, args.seconds, args.rounds)
                change_times(bench, args.repeats)
            finally:
                bench.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
