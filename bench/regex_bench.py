"""Request-time cost of tenant regexes in the real nginx, against a plain-domain baseline measured
in the same run.

1. Candidate patterns that validate accepts are ranked by PCRE2 on their adversarial subjects
   (each quantifier pumped to the header size, then a byte that fails the match); the worst are
   served by a real nginx as ``server_name`` regexes and as ``location`` regexes, each rule behind
   an ACL that refuses the client, so a request costs the regex match and a 403, no backend.
2. Requests with the worst subjects (as Host, and as the URI) are timed against requests for a
   plain domain on the same server; the ratio is printed.
3. The hostile corpus of the tests (refused by validate) is timed in PCRE2 with nginx's default
   match limit, to show what the refusal prevents, and so is the time validate takes to refuse.

Run:  .venv/bin/python bench/regex_bench.py [--requests 300]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import re._parser as sre_parse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pcre2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clbagent.l7 import compile_nginx, write_prefix  # noqa: E402
from clbagent.model.regex import RegexError, adversarial_subjects, check_regex  # noqa: E402
from clbagent.nginx.process import Nginx, check_config  # noqa: E402
from clbagent.validate import validate_documents  # noqa: E402
from tests.isolation.corpus import CATASTROPHIC, NAMED_CAPTURES  # noqa: E402

VIP, PORT = "127.0.10.91", 18291
HOST_LIMIT = 4000  # a Host header nginx still reads into its default 8k buffers
CANDIDATES = [
    r"^([a-z0-9-]+\.)*deep\.r\.test$",
    r"^(www|api)\.r\.test$",
    r"^w\d+\.r\.test$",
    r"^.*\..*\..*$",
    r"^(\w+-)*x\.test$",
    r"^[a-z]*[0-9]*[a-z]*\.test$",
    r"^(\.[a-z]+)*\.test$",
    r"^.*a.*b$",
    r"^/a/.*/b/.*$",
    r"^/(\w+/)*x$",
    r"\.(gif|jpg|bmp)$",
    r"^/api/.*\.php$",
]


def subjects(pattern: str, limit: int) -> list[bytes]:
    found = [s[:limit] for s in adversarial_subjects(list(sre_parse.parse(pattern.encode())))]
    return found or [b"a" * limit]


def pcre2_seconds(pattern: str, subject: bytes, caseless: bool = True, rounds: int = 5) -> float:
    """Best time of one search with PCRE2 JIT (nginx runs ``pcre_jit on``), nginx's default limits."""
    compiled = pcre2.compile(pattern.encode(), pcre2.IGNORECASE if caseless else 0, jit=True)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        with contextlib.suppress(pcre2.LibraryError):  # nginx answers 500 then: the cost is spent all the same
            compiled.search(subject)
        best = min(best, time.perf_counter() - start)
    return best


def worst_subject(pattern: str, limit: int) -> tuple[float, bytes]:
    return max((pcre2_seconds(pattern, s), s) for s in subjects(pattern, limit))


def printable(subject: bytes, host: bool) -> str:
    """The subject as a request can carry it: nginx refuses '/' and '\\' in Host, and a request
    line cannot hold spaces, '?', '%' or a newline as plain path bytes."""
    text = subject.decode("latin-1")
    for bad in ("/", "\\") if host else ():
        text = text.replace(bad, "-")
    for bad in ("\n", " ", "?", "%", "#"):
        text = text.replace(bad, "!")
    return (text.strip(".") if host else text) or "x"


def documents(domains: list[str], urls: list[str]) -> list[tuple[str, dict]]:
    deny = {"AclId": "nobody", "AclEntries": [{"Entry": "192.0.2.0/24"}]}
    target = [{"EniIp": "127.0.20.91", "Port": 18299}]
    rules = [
        {"LocationId": "plain", "Domain": "plain.bench.test", "Url": "/", "DefaultServer": True, "Targets": target}
    ]
    rules += [{"LocationId": f"d{i}", "Domain": f"~{p}", "Url": "/", "Targets": target} for i, p in enumerate(domains)]
    rules += [
        {"LocationId": f"u{i}", "Domain": "plain.bench.test", "Url": f"~{p}", "Targets": target}
        for i, p in enumerate(urls)
    ]
    for r in rules:
        r["HealthCheck"] = {"HealthSwitch": 0}
    listener = {
        "ListenerId": "bench",
        "Protocol": "HTTP",
        "Port": PORT,
        "AclStatus": "on",
        "AclId": "nobody",
        "AclType": "white",
        "Rules": rules,
    }
    return [
        (
            "bench",
            {"LoadBalancerId": "lb-regex-bench", "LoadBalancerVips": [VIP], "Listeners": [listener], "Acls": [deny]},
        )
    ]


def per_request(host: str, path: str, n: int) -> float:
    """Mean seconds per request over one keep-alive connection (the answer is the ACL's 403)."""
    conn = http.client.HTTPConnection(VIP, PORT, timeout=30)
    try:
        conn.request("GET", path, headers={"Host": host})
        conn.getresponse().read()
        start = time.perf_counter()
        for _ in range(n):
            conn.request("GET", path, headers={"Host": host})
            resp = conn.getresponse()
            resp.read()
            if resp.status not in (400, 403, 500):
                raise SystemExit(f"unexpected {resp.status} for Host {host[:40]!r} {path[:40]!r}")
        return (time.perf_counter() - start) / n
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    accepted = []
    for p in CANDIDATES:
        try:
            check_regex(p, True)
            accepted.append(p)
        except RegexError as exc:
            print(f"refused candidate {p}: {exc}")
    ranked = sorted(((worst_subject(p, HOST_LIMIT), p) for p in accepted), reverse=True)
    print("accepted patterns, worst PCRE2 JIT search on their adversarial subjects:")
    for (seconds, _), p in ranked:
        print(f"  {seconds * 1e6:9.1f} µs  {p}")
    worst = [p for _, p in ranked[:3]]
    domains = [p for p in worst if not p.startswith("^/")] or worst[:1]
    urls = [p for p in accepted if p.startswith(("^/", "\\."))]
    base = Path(tempfile.mkdtemp(prefix="clb-regex-bench-"))
    base.chmod(0o755)
    prefix = base / "nginx"
    state = validate_documents(documents(domains, urls))
    assert state.ok, state.issues
    write_prefix(compile_nginx(state, prefix=str(prefix)), prefix)
    assert check_config(prefix).ok
    nginx = Nginx(prefix)
    nginx.start()
    try:
        baseline = per_request("plain.bench.test", "/", args.requests)
        same_size = per_request("plain.bench.test", "/" + "a" * (HOST_LIMIT - 1), args.requests)
        print(f"\nreal nginx, {args.requests} requests each, 403 from the ACL after the regexes ran:")
        print(f"  baseline  plain Host, path /:           {baseline * 1e6:8.1f} µs/request")
        print(f"  baseline  plain Host, {HOST_LIMIT}-byte path:  {same_size * 1e6:8.1f} µs/request")
        for p in domains:
            subject = printable(worst_subject(p, HOST_LIMIT)[1], host=True)
            t = per_request(subject, "/", args.requests)
            print(
                f"  Host {len(subject):5d} B for ~{p}: {t * 1e6:8.1f} µs/request, "
                f"ratio {t / baseline:5.2f} (plain) {t / same_size:5.2f} (same size)"
            )
        for p in urls:
            subject = printable(worst_subject(p, HOST_LIMIT)[1], host=False)
            path = (subject if subject.startswith("/") else "/" + subject)[:HOST_LIMIT]
            t = per_request("plain.bench.test", path, args.requests)
            print(
                f"  URI  {len(path):5d} B for ~{p}: {t * 1e6:8.1f} µs/request, ratio {t / same_size:5.2f} (same size)"
            )
    finally:
        nginx.stop()
        shutil.rmtree(base, ignore_errors=True)
    print("\nhostile corpus (refused by validate): PCRE2 JIT cost it would have per request, and the refusal")
    for text in [*CATASTROPHIC, *NAMED_CAPTURES]:
        pattern = text[1:]
        start = time.perf_counter()
        try:
            check_regex(pattern, True)
            verdict = "ACCEPTED"
        except RegexError as exc:
            verdict = str(exc)[:60]
        refuse = time.perf_counter() - start
        try:
            cost = (
                max(pcre2_seconds(pattern, s, rounds=1) for s in subjects(pattern, HOST_LIMIT))
                if "?" not in pattern
                else 0.0
            )
        except (pcre2.PatternError, ValueError, StopIteration):
            cost = 0.0
        print(f"  {cost * 1e3:9.3f} ms/request  refused in {refuse * 1e3:6.1f} ms  {pattern[:34]:34}  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
