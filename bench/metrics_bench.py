"""Metrics benchmark (not a test): what counting L7 metrics costs on the request path, and what a
scrape costs at 1,000 load balancers.

1. Request path: one nginx (one worker), one dynamic upstream, two locations to it: one counted
   (its scope set, the log phase counts: what the compiler writes), one not counted (no scope,
   a location-level log phase that only gives the balancer's connection back: what nginx would
   run without metrics). wrk on each in alternating pairs; requests per second and per CPU
   second of the worker; the median of the per-pair ratios. Then the log phase alone, called in
   a loop inside the same nginx after that traffic (so LuaJIT compiled it as the requests ran),
   against the CPU of one not-counted request.
2. Scrape: 1,000 load balancers (two rules each, one target) compiled as the agent does, served
   by nginx; each rule and each domain's 404 receives a request; then the agent's metrics
   endpoint is scraped: series count and time, against a scrape of the agent's own families only
   and against the raw read of nginx's counters, in the same run.

Run:  .venv/bin/python bench/metrics_bench.py [--seconds 2] [--rounds 8] [--lbs 1000] [--scrapes 10]
Goals: counted/not counted ≥ 95%; scrape ≤ 100 ms at 1,000 load balancers.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.dynamic_bench import COMMON, Bench, free_port, prefix_dirs, start  # noqa: E402
from clbagent.agent.metrics import AgentMetrics  # noqa: E402
from clbagent.l7 import compile_nginx, write_prefix  # noqa: E402
from clbagent.nginx.metrics_channel import REQUEST_VAR, SCOPE_VAR, read_text  # noqa: E402
from clbagent.nginx.process import Nginx  # noqa: E402
from clbagent.nginx.upstreams_channel import (  # noqa: E402
    DATA_DIR,
    SOCKET,
    channel_server,
    http_directives,
    main_directives,
    upstream_block,
)
from clbagent.settings import Settings  # noqa: E402
from clbagent.validate import validate_documents  # noqa: E402

FRONT, BACK = "127.0.64.1", "127.0.64.2"
LOCATIONS = f"""\
        location /counted {{ set ${SCOPE_VAR} bench/lbl-bench/loc-bench/www.example.com; proxy_pass http://d0; }}
        location /plain {{ log_by_lua_block {{ require("clb.balancer").log() }} proxy_pass http://d0; }}
        location /logcost {{ set ${SCOPE_VAR} bench/lbl-bench/loc-cost/www.example.com; content_by_lua_block {{
            local log, n = require("clb.metrics").log, tonumber(ngx.var.arg_n)
            local function nothing() end
            local t0 = os.clock()
            for _ = 1, n do nothing("{SCOPE_VAR}", "{REQUEST_VAR}") end
            local t1 = os.clock()
            for _ = 1, n do log("{SCOPE_VAR}", "{REQUEST_VAR}") end
            ngx.say((os.clock() - t1 - (t1 - t0)) / n)
        }} }}
"""


class CountingBench(Bench):
    """dynamic_bench's front nginx, with a counted and an uncounted location to the same upstream."""

    def _conf(self, which: list[int]) -> str:
        body = (
            '    proxy_http_version 1.1;\n    proxy_set_header Connection "";\n'
            + http_directives(self.front / DATA_DIR, "4m")
            + upstream_block("d0")
            + f"    server {{\n        listen {FRONT}:{self.port};\n{LOCATIONS}    }}\n"
            + channel_server(self.front)
        )
        return main_directives() + COMMON.format(body=body)


def request_path(work: Path, seconds: int, rounds: int) -> None:
    import bench.dynamic_bench as dyn

    dyn.FRONT, dyn.BACK = FRONT, "127.0.64.{}"
    bench = CountingBench(work, 1)
    try:
        pairs = []
        for i in range(rounds):
            order = ("/plain", "/counted") if i % 2 == 0 else ("/counted", "/plain")
            got = {path: bench.wrk(path, seconds) for path in order}
            pairs.append((got["/plain"], got["/counted"]))
        print("  pairs, not counted / counted req/s:", ", ".join(f"{p.rate:,.0f} / {c.rate:,.0f}" for p, c in pairs))
        for label, key in (("per wall-clock second", "rate"), ("per CPU second of the worker", "per_cpu")):
            p = statistics.median(getattr(x[0], key) for x in pairs)
            c = statistics.median(getattr(x[1], key) for x in pairs)
            ratio = statistics.median(getattr(x[1], key) / getattr(x[0], key) for x in pairs)
            print(
                f"throughput {label} (wrk -t1 -c32, {rounds} pairs of {seconds}s): not counted {p:,.0f}, "
                f"counted {c:,.0f}; counted/not counted = {ratio:.1%} (median of pairs, goal >= 95%)"
            )
        # the log phase alone, called in a loop inside nginx (CPU time: robust on a loaded host);
        # without an upstream, so the member's counters are not updated
        calls = [float(httpx.get(f"http://{FRONT}:{bench.port}/logcost?n=100000", timeout=60).text) for _ in range(5)]
        per_request = 1 / statistics.median(x[0].per_cpu for x in pairs)
        log_cost = statistics.median(calls)
        print(
            f"  the counting log phase alone: {log_cost * 1e6:.2f} us CPU per request (median of 5 loops of 100,000), "
            f"{log_cost / per_request:.1%} of a not-counted request's worker CPU ({per_request * 1e6:.1f} us)"
        )
        families = text_string_to_metric_families(read_text(bench.front / SOCKET).decode())
        counted = sum(x.value for f in families if f.name == "clb_http_requests" for x in f.samples)
        print(f"  requests counted by nginx: {counted:,.0f} (only the counted location's)")
    finally:
        bench.close()


def documents(n: int, back_port: int) -> list[tuple[str, dict]]:
    def lb(i: int) -> dict:
        target = {"EniIp": BACK, "Port": back_port, "Weight": 10}
        rules = [
            {"LocationId": f"loc-{i}-{u}", "Domain": f"lb{i}.example.com", "Url": f"/{u}", "DefaultServer": u == "a",
             "HealthCheck": {"HealthSwitch": 0}, "Targets": [target]}
            for u in ("a", "b")
        ]  # fmt: skip
        listener = {"ListenerId": f"lbl-{i}", "Protocol": "HTTP", "Port": 21000 + i, "Rules": rules}
        return {"LoadBalancerId": f"lb-{i}", "LoadBalancerVips": [FRONT], "Listeners": [listener]}

    return [(f"lb-{i}.yaml", lb(i)) for i in range(n)]


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def scrape_time(url: str, repeats: int) -> float:
    """Median seconds of a whole scrape as a scraper in its own process sees it (curl's total)."""
    out = [
        float(subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{time_total}", url], capture_output=True,
                             text=True, check=True).stdout)
        for _ in range(repeats)
    ]  # fmt: skip
    return statistics.median(out)


def cpu_per_call(fn, repeats: int, nginx: Nginx | None = None) -> float:
    """CPU seconds one call costs: this process's, or (``nginx``) its workers' (the one that answers)."""

    def cpu() -> float:
        if nginx is None:
            return time.process_time()
        return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in nginx.workers())

    start = cpu()
    for _ in range(repeats):
        fn()
    return (cpu() - start) / repeats


def scrape(work: Path, lbs: int, repeats: int) -> None:
    back = work / "back"
    prefix_dirs(back)
    back_port = free_port(BACK)
    backend = start(back, COMMON.format(body=f'    server {{ listen {BACK}:{back_port}; return 200 "ok\\n"; }}\n'))
    prefix = work / "lbs"
    t = time.perf_counter()
    state = validate_documents(documents(lbs, back_port), Settings())
    write_prefix(compile_nginx(state, prefix=str(prefix), dynamic=True), prefix)
    nginx = start(prefix, (prefix / "nginx.conf").read_text())
    print(f"scrape at {lbs:,} load balancers (2 rules each; compiled and started in {time.perf_counter() - t:.1f}s)")
    try:
        for i in range(lbs):
            conn = http.client.HTTPConnection(FRONT, 21000 + i, timeout=10)
            for path in ("/a", "/b", "/missing"):
                conn.request("GET", path, headers={"Host": f"lb{i}.example.com"})
                conn.getresponse().read()
            conn.close()
        time.sleep(1.5)  # the workers flush once a second
        own, full = AgentMetrics(), AgentMetrics()
        full.watch_l7(lambda: read_text(prefix / SOCKET))
        ports = {}
        for name, m in (("own", own), ("full", full)):
            ports[name] = free_port(FRONT)
            m.serve(FRONT, ports[name])
        text = httpx.get(f"http://{FRONT}:{ports['full']}/metrics", timeout=30).text
        series = sum(1 for line in text.splitlines() if line.startswith("clb_"))
        t_full = scrape_time(f"http://{FRONT}:{ports['full']}/metrics", repeats)
        t_own = scrape_time(f"http://{FRONT}:{ports['own']}/metrics", repeats)
        t_read = timed(lambda: read_text(prefix / SOCKET), repeats)
        cpu_nginx = cpu_per_call(lambda: read_text(prefix / SOCKET), repeats, nginx)
        cpu_agent = cpu_per_call(full.exposition, repeats) - cpu_per_call(own.exposition, repeats)
        print(f"  {series:,} clb_* series ({series / lbs:.0f} per load balancer), {len(text) / 1e6:.1f} MB per scrape")
        print(
            f"  scrape (curl GET of the endpoint), median of {repeats}: {t_full * 1000:.0f} ms (goal <= 100 ms: "
            f"{t_full / 0.1:.0%} of it); the agent's own families alone {t_own * 1000:.1f} ms; nginx's text "
            f"read alone {t_read * 1000:.0f} ms ({t_read / t_full:.0%} of the scrape)"
        )
        print(
            f"  CPU time (less sensitive to a loaded host): nginx worker per scrape {cpu_nginx * 1000:.0f} ms, "
            f"agent per scrape beyond its own families {cpu_agent * 1000:.0f} ms; together "
            f"{(cpu_nginx + cpu_agent) / 0.1:.0%} of the 100 ms goal"
        )
    finally:
        nginx.stop()
        backend.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--lbs", type=int, default=1000)
    ap.add_argument("--scrapes", type=int, default=10)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (scripts/apt-packages-lua.txt)")
        return 1
    work = Path(tempfile.mkdtemp(prefix="clb-metricsbench-"))
    work.chmod(0o755)
    try:
        request_path(work / "path", args.seconds, args.rounds)
        scrape(work / "scrape", args.lbs, args.scrapes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
