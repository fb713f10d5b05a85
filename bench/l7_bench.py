"""L7 benchmark of the path a user runs: YAML files on disk → ``clbagent render --out`` (CLI
start-up, load, validate, compile, write) and ``clbagent validate``, against ``nginx -t`` on the
written prefix, in the same run, for 1,000 and 5,000 HTTPS domains: 10 per load balancer, one
file per load balancer, each domain with its own certificate and RSA-2048 key (PEM files listed
in one more file, ``certificates.yaml``). Also the one-change-one-file check over 1,000 load
balancers.

Each command is measured three ways, reported separately:
- cold: no record of an earlier run (an empty cache directory each time): the full run, which
  also writes the record (clbagent.l7.memo);
- changed: one target weight changed in one load balancer's file since the last run (the record
  does not hold: a full run);
- warm: nothing changed since the last run of the same command line (answered from the record).
The floor is the CPU time of starting Python and importing what a full ``render`` imports.
``--compare-with DIR`` also runs the cold commands of another clbagent source tree (DIR holds
its ``clbagent`` package), interleaved with this one's.

Run:  .venv/bin/python bench/l7_bench.py [--sizes 1000,5000] [--per-lb 10] [--repeat 3]
Goal: render --out ≤ 10% of ``nginx -t`` on the same output (CPU seconds: the host is shared).
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clbagent.l7 import compile_nginx, write_prefix  # noqa: E402
from clbagent.nginx.process import check_config  # noqa: E402
from clbagent.validate import validate_documents  # noqa: E402


def rsa_keys(count: int) -> list[rsa.RSAPrivateKey]:
    """``count`` distinct RSA-2048 keys, cheaply: generating 5,000 keys would take minutes, so each
    key is built from a distinct pair of a small pool of primes (about sqrt(2 * count) of them).
    Fine for a benchmark, never for real keys."""
    pool = 2
    while pool * (pool - 1) // 2 < count:
        pool += 1
    primes: list[int] = []
    while len(primes) < pool:
        numbers = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()
        primes += [numbers.p, numbers.q]
    pairs = [(p, q) for i, p in enumerate(primes) for q in primes[i + 1 :]]
    keys = []
    for n in range(count):
        p, q = pairs[n]
        d = pow(65537, -1, (p - 1) * (q - 1))
        public = rsa.RSAPublicNumbers(65537, p * q)
        private = rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), public)
        keys.append(private.private_key(unsafe_skip_rsa_key_validation=True))  # built right above
    return keys


def certificates(count: int) -> list[tuple[str, str, str]]:
    """(name, certificate PEM, key PEM) of ``count`` certificates, each for its own domain and with
    its own key, issued by one bench CA (key generation is not what is measured)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    out = []
    for n, key in enumerate(rsa_keys(count)):
        name = f"d{n}.bench.test"
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
        out.append((name, cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()))
    return out


def vip(i: int) -> str:
    return f"127.{100 + i // 62500}.{(i // 250) % 250}.{i % 250 + 1}"


def https_fleet(domains: int, per_lb: int) -> list[tuple[str, dict]]:
    docs = []
    for lb in range((domains + per_lb - 1) // per_lb):
        rules = []
        for d in range(min(per_lb, domains - lb * per_lb)):
            n = lb * per_lb + d
            cert = {"SSLMode": "UNIDIRECTIONAL", "CertId": f"cert-{n}"}
            targets = [
                {"EniIp": f"10.{n // 250 % 250}.{n % 250}.{t + 1}", "Port": 8080, "Weight": 10} for t in range(2)
            ]
            rules.append(
                {
                    "LocationId": f"loc-{n}",
                    "Domain": f"d{n}.bench.test",
                    "Url": "/",
                    "DefaultServer": d == 0,
                    "Certificate": cert,
                    "Http2": True,
                    "Targets": targets,
                }
            )
        listener = {"ListenerId": "https", "Protocol": "HTTPS", "Port": 443, "SniSwitch": 1, "Rules": rules}
        docs.append(
            (f"lb{lb}", {"LoadBalancerId": f"lb-{lb:05d}", "LoadBalancerVips": [vip(lb)], "Listeners": [listener]})
        )
    return docs


def http_fleet(lbs: int) -> list[tuple[str, dict]]:
    docs = []
    for lb in range(lbs):
        targets = [{"EniIp": f"10.1.{lb % 250}.{t + 1}", "Port": 8080, "Weight": 10} for t in range(3)]
        rules = [
            {
                "LocationId": "root",
                "Domain": f"www{lb}.example.com",
                "Url": "/",
                "DefaultServer": True,
                "Targets": targets,
            }
        ]
        listener = {"ListenerId": "http", "Protocol": "HTTP", "Port": 80, "Rules": rules}
        docs.append(
            (f"lb{lb}", {"LoadBalancerId": f"lb-{lb:05d}", "LoadBalancerVips": [vip(lb)], "Listeners": [listener]})
        )
    return docs


def write_documents(domains: int, per_lb: int, certs: list[tuple[str, str, str]], work: Path) -> Path:
    """One YAML file per load balancer, and one listing the certificates, each domain's own, whose
    PEM files sit in ``certs/`` (as an operator keeps them)."""
    docs = work / f"docs-{domains}"
    (docs / "certs").mkdir(parents=True)
    listed = []
    for n, (name, cert, key) in enumerate(certs[:domains]):
        (docs / "certs" / f"{name}.crt").write_text(cert)
        (docs / "certs" / f"{name}.key").write_text(key)
        listed.append({"CertId": f"cert-{n}", "CertFile": f"certs/{name}.crt", "CertKeyFile": f"certs/{name}.key"})
    (docs / "certificates.yaml").write_text(yaml.safe_dump({"Certificates": listed}, sort_keys=False))
    for name, doc in https_fleet(domains, per_lb):
        (docs / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return docs


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall and CPU seconds of one command, which must succeed."""
    start, start_cpu = time.perf_counter(), children_cpu()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    wall, cpu = time.perf_counter() - start, children_cpu() - start_cpu
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
    return wall, cpu


def best(runs: list[tuple[float, float]]) -> tuple[float, float]:
    """Best wall and best CPU time (the machine is shared: the best run is the least disturbed, and
    CPU time is what other processes disturb least)."""
    return min(w for w, _ in runs), min(c for _, c in runs)


def cli(tree: Path | None) -> tuple[list[str], dict[str, str]]:
    """The command line of clbagent (this checkout's, or the one of the source tree ``tree``)."""
    env = dict(os.environ)
    if tree is None:
        return [str(Path(sys.executable).with_name("clbagent"))], env
    env["PYTHONPATH"] = str(tree)
    return [sys.executable, "-m", "clbagent.cli"], env


def with_cache(env: dict[str, str], cache: Path) -> dict[str, str]:
    return env | {"XDG_CACHE_HOME": str(cache)}


def measure(
    domains: int, per_lb: int, certs: list[tuple[str, str, str]], work: Path, repeat: int, other: Path | None
) -> dict:
    docs = write_documents(domains, per_lb, certs, work)
    prefix = work / f"prefix-{domains}"
    commands = {
        "validate": ["validate", str(docs)],
        "render": ["render", "--out", str(prefix), str(docs)],
    }
    trees = {"this": None, **({"other": other} if other else {})}
    exe, env = cli(None)
    env = with_cache(env, work / f"cache-{domains}")
    changed = docs / "lb0.yaml"
    texts = [changed.read_text(), changed.read_text().replace("Weight: 10", "Weight: 11", 1)]
    for argv in commands.values():
        run_once(exe + argv, env)  # the record that the first "changed" run finds outdated
    runs: dict[str, list[tuple[float, float]]] = {}
    nginx_t = []
    for n in range(repeat):  # every kind of run once per round: each round meets the same load
        for name, argv in commands.items():
            for label, tree in trees.items():  # cold: an empty cache directory each time
                tree_exe, tree_env = cli(tree)
                cache = work / f"cache-{domains}-{label}-{name}-{n}"
                runs.setdefault(f"{name} cold {label}", []).append(
                    run_once(tree_exe + argv, with_cache(tree_env, cache))
                )
        changed.write_text(texts[(n + 1) % 2])
        for name, argv in commands.items():
            runs.setdefault(f"{name} changed", []).append(run_once(exe + argv, env))
            runs.setdefault(f"{name} warm", []).append(run_once(exe + argv, env))
        start_cpu = children_cpu()
        test = check_config(prefix)
        if not test.ok:
            raise SystemExit(f"nginx -t failed for {domains} domains:\n{test.output[-2000:]}")
        nginx_t.append((test.seconds, children_cpu() - start_cpu))
    return {
        "domains": domains,
        "files": len(list(docs.glob("*.yaml"))),
        "size": sum(f.stat().st_size for f in prefix.rglob("*") if f.is_file()),
        "nginx -t": best(nginx_t),
        "runs": {key: best(values) for key, values in runs.items()},
    }


FLOOR = "import clbagent.commands.render, clbagent.loader, clbagent.validate, clbagent.l7.compile, clbagent.l4"


def one_change(lbs: int, work: Path) -> tuple[list[str], float, float]:
    docs = http_fleet(lbs)
    prefix = work / "one-change"
    write_prefix(compile_nginx(validate_documents(docs), prefix=str(prefix)), prefix)
    docs[lbs // 2][1]["Listeners"][0]["Rules"][0]["Targets"][1]["Weight"] = 77
    state = validate_documents(docs)
    start = time.perf_counter()
    cfg = compile_nginx(state, prefix=str(prefix))
    compiled = time.perf_counter() - start
    start = time.perf_counter()
    changed = write_prefix(cfg, prefix)
    return changed, compiled, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,5000")
    parser.add_argument("--per-lb", type=int, default=10, help="HTTPS domains per load balancer")
    parser.add_argument("--lbs", type=int, default=1000, help="load balancers for the one-change check")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (the best is kept)")
    parser.add_argument("--compare-with", type=Path, metavar="DIR", help="another clbagent source tree, cold runs")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="write the documents and prefixes here and keep them")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clb-bench-", dir=args.keep))
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
        certs = certificates(max(sizes))
        exe, _ = cli(None)
        start = best([run_once([*exe, "validate", "--help"]) for _ in range(args.repeat)])
        floor = best([run_once([sys.executable, "-c", FLOOR]) for _ in range(args.repeat)])
        print(f"start-up (clbagent validate --help): {start[0]:.3f} s wall, {start[1]:.3f} s CPU")
        print(f"floor (Python and the imports of a full render): {floor[0]:.3f} s wall, {floor[1]:.3f} s CPU")
        print("wall seconds (CPU seconds), and CPU seconds as a share of nginx -t's")
        for size in sizes:
            r = measure(size, args.per_lb, certs, work, args.repeat, args.compare_with)
            nginx_wall, nginx_cpu = r["nginx -t"]
            print(
                f"{r['domains']} domains, {r['files']} files, output {r['size'] / 1e6:.1f} MB: "
                f"nginx -t {nginx_wall:.3f} ({nginx_cpu:.3f}); floor {floor[1] / nginx_cpu:.1%}"
            )
            for key, (wall, cpu) in r["runs"].items():
                share, wall_share = cpu / nginx_cpu, wall / nginx_wall
                print(f"  {key:<22} {wall:>7.3f} ({cpu:6.3f}) {share:>7.1%}  wall {wall_share:>6.1%}")
        changed, compiled, written = one_change(args.lbs, work)
        print(
            f"one target changed in one of {args.lbs} load balancers: files rewritten {changed} "
            f"(full compile {compiled:.3f} s, write {written * 1000:.1f} ms)"
        )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
