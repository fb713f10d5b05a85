"""Every bundled example validates; every bad fixture fails with its documented code and path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clbagent.cli import main
from tests.helpers import FIXTURES, ROOT, expectation, run_json

GOOD = [FIXTURES / "examples", FIXTURES / "seed", FIXTURES / "alibaba" / "sample-document.yaml"]
CERTS = FIXTURES / "certs"
BAD = sorted((FIXTURES / "bad").glob("*.yaml"))
BAD_ALIBABA = sorted((FIXTURES / "bad-alibaba").glob("*.txt"))


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.name)
def test_good_fixtures_validate(path: Path, capsys) -> None:
    extra = [str(FIXTURES / "alibaba" / "objects.yaml")] if path.suffix else []
    rc, issues = run_json(["validate", str(path), *extra, "--cert-dir", str(CERTS)], capsys)
    assert [i for i in issues if i["severity"] == "error"] == []
    assert rc == 0


def test_console_script_exit_codes() -> None:
    exe = Path(sys.executable).with_name("clbagent")
    good = subprocess.run([exe, "validate", FIXTURES / "examples", "--cert-dir", CERTS], capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    bad = subprocess.run([exe, "validate", BAD[0]], capture_output=True, text=True)
    assert bad.returncode == 2
    assert expectation(BAD[0])["expect"].split()[0] in bad.stderr


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_fixture_reports_its_code_and_path(path: Path, capsys) -> None:
    code, where = expectation(path)["expect"].split(" ", 1)
    rc, issues = run_json(["validate", str(path), "--cert-dir", str(CERTS)], capsys)
    assert rc == 2
    assert {"code": code, "path": where} in [{"code": i["code"], "path": i["path"]} for i in issues]
    assert all(i["message"] for i in issues)


def test_every_tencent_code_has_a_bad_fixture() -> None:
    codes = {expectation(p)["expect"].split()[0] for p in BAD}
    wanted = {
        "InvalidParameter.PortCheckFailed",
        "InvalidParameter.RewriteAlreadyExist",
        "InvalidParameter.LocationNotFound",
        "InvalidParameter.ListenerIdNotFound",
        "InvalidParameter.ProtocolCheckFailed",
        "InvalidParameter.FormatError",
        "InvalidParameterValue.Length",
        "InvalidParameterValue.Range",
        "InvalidParameterValue.Duplicate",
        "InvalidParameterValue",
        "InvalidParameter",
        "MissingParameter",
        "LimitExceeded",
    }
    assert wanted <= codes


@pytest.mark.parametrize("path", BAD_ALIBABA, ids=lambda p: p.stem)
def test_bad_alibaba_request_reports_its_code(path: Path, capsys) -> None:
    meta = expectation(path)
    code, where = meta["expect"].split(" ", 1)
    argv = [
        "import",
        "alibaba-https",
        str(path),
        "--vip",
        meta.get("vip", "127.0.30.1"),
        "--backend",
        "127.0.31.1",
        "--with",
        str(FIXTURES / "alibaba" / "objects.yaml"),
        "--cert-dir",
        str(CERTS),
    ]
    if "into" in meta:
        argv += ["--into", str(path.parent / meta["into"])]
    rc, issues = run_json(argv, capsys)
    assert rc == 2
    assert (code, where) in [(i["code"], i["path"]) for i in issues if i["severity"] == "error"]


def test_alibaba_sample_imports_to_the_expected_document(tmp_path: Path, capsys) -> None:
    out = tmp_path / "imported.yaml"
    rc = main(
        [
            "import",
            "alibaba-https",
            str(FIXTURES / "alibaba" / "sample-request.txt"),
            "--vip",
            "127.0.30.1",
            "--backend",
            "127.0.31.1",
            "--backend",
            "127.0.31.2:8080,20",
            "--with",
            str(FIXTURES / "alibaba" / "objects.yaml"),
            "--cert-dir",
            str(CERTS),
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    doc = yaml.safe_load(out.read_text())
    assert doc == yaml.safe_load((FIXTURES / "alibaba" / "sample-document.yaml").read_text())
    listener = doc["Listeners"][0]
    rule = listener["Rules"][0]
    assert listener["Certificate"]["SSLMode"] == "MUTUAL"  # a CA certificate was given (R151)
    assert (listener["IdleTimeout"], listener["RequestTimeout"]) == (12, 23)
    assert rule["SessionExpireTime"] == 500 and rule["HealthCheck"]["HttpCode"] == "http_2xx,http_3xx"


def test_alibaba_json_form_equals_query_form(tmp_path: Path) -> None:
    from clbagent.importers.alibaba import parse_request

    query = parse_request((FIXTURES / "alibaba" / "sample-request.txt").read_text())
    as_json = parse_request(json.dumps(query))
    assert query == as_json
    assert query["TLSCipherPolicy"] == "tls_cipher_policy_1_1" and "Common request parameters" not in query


def test_readme_commands_are_the_scripts() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/demo.sh" in readme and "bash scripts/test.sh" in readme
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_alibaba_issues_are_reported_once_each() -> None:
    from clbagent.importers.alibaba import Context, convert, parse_request

    params = parse_request((FIXTURES / "alibaba" / "sample-request.txt").read_text())
    params.update(StickySession="maybe", HealthCheck="yes", IdleTimeout="99", HealthCheckTimeout="500")
    doc, issues = convert(params, Context(vips=["127.0.30.1"], backends=[("127.0.31.1", None, 10)]))
    assert doc is None
    paths = [i.path for i in issues if i.severity == "error"]
    assert sorted(paths) == sorted(set(paths))
    assert {"alibaba/StickySession", "alibaba/HealthCheck", "alibaba/IdleTimeout"} <= set(paths)


@pytest.mark.parametrize(
    "param,value,field,served",
    [
        ("HealthCheckInterval", "2", "IntervalTime", 5),
        ("CookieTimeout", "86400", "SessionExpireTime", 3600),
        ("CookieTimeout", "10", "SessionExpireTime", 30),
    ],
)
def test_alibaba_values_outside_what_is_served_are_clamped_with_a_warning(
    param: str, value: str, field: str, served: int
) -> None:
    """Alibaba accepts intervals of 1-50 s and cookies of 1-86400 s: the import keeps the document,
    serves the nearest value and says so."""
    from clbagent.importers.alibaba import Context, convert, parse_request

    params = parse_request((FIXTURES / "alibaba" / "sample-request.txt").read_text())
    params[param] = value
    doc, issues = convert(params, Context(vips=["127.0.30.1"], backends=[("127.0.31.1", None, 10)]))
    assert doc is not None
    rule = doc["Listeners"][0]["Rules"][0]
    assert (rule["HealthCheck"] if field == "IntervalTime" else rule)[field] == served
    (warning,) = [i for i in issues if i.path == f"alibaba/{param}"]
    assert warning.severity == "warning" and str(served) in warning.message
