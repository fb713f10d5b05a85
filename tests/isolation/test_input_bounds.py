"""Reading is bounded and confined: certificate files only from the certificate directory, and
every document size, depth, alias expansion, integer and string is refused cleanly, in linear time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from clbagent.loader import load
from tests.helpers import FIXTURES

CERT = (FIXTURES / "certs" / "www.example.com.crt").read_text()
KEY = (FIXTURES / "certs" / "www.example.com.key").read_text()


def _certs_doc(directory: Path, cert_file: str, key_file: str = "www.key") -> Path:
    path = directory / "certs.yaml"
    path.write_text(yaml.safe_dump({"Certificates": [{"CertId": "c", "CertFile": cert_file, "CertKeyFile": key_file}]}))
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``docs/`` with its own certificate and key, and a secret key outside it."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "www.crt").write_text(CERT)
    (docs / "www.key").write_text(KEY)
    (tmp_path / "secret.key").write_text(KEY)
    (tmp_path / "secret.key").chmod(0o600)
    return docs


def _issues_for(path: Path, cert_dir: Path | None = None) -> list:
    return load([path], cert_dir)[1]


def test_files_inside_the_document_directory_are_read(tree: Path) -> None:
    docs, issues = load([_certs_doc(tree, "www.crt")])
    assert issues == []
    assert docs[0][1]["Certificates"][0]["CertKey"] == KEY


@pytest.mark.parametrize("name", ["../secret.key", "{abs}", "link-out.key", "../docs/../secret.key", "/etc/shadow"])
def test_names_outside_the_directory_are_refused_alike(tree: Path, name: str) -> None:
    (tree / "link-out.key").symlink_to(tree.parent / "secret.key")
    name = name.format(abs=tree.parent / "secret.key")
    issues = _issues_for(_certs_doc(tree, "www.crt", name))
    assert [(i.code, i.path.split("/")[-1]) for i in issues] == [("InvalidParameter", "CertKeyFile")]
    assert "inside the certificate directory" in issues[0].message
    assert "BEGIN" not in issues[0].message


def test_the_answer_does_not_tell_whether_an_outside_file_exists(tree: Path) -> None:
    there = _issues_for(_certs_doc(tree, "www.crt", "../secret.key"))[0].message
    absent = _issues_for(_certs_doc(tree, "www.crt", "../no-such.key"))[0].message
    assert there == absent


def test_a_symlink_inside_the_directory_is_followed(tree: Path) -> None:
    (tree / "live.key").symlink_to(tree / "www.key")
    assert _issues_for(_certs_doc(tree, "www.crt", "live.key")) == []


def test_cert_dir_names_another_directory(tree: Path) -> None:
    assert _issues_for(_certs_doc(tree, "www.crt", "../secret.key"), cert_dir=tree.parent) == []
    issues = _issues_for(_certs_doc(tree, "www.crt"), cert_dir=tree.parent / "elsewhere")
    assert {i.message.split(" inside")[0] for i in issues} == {"must name a file"}


@pytest.mark.parametrize("kind", ["fifo", "device", "directory", "large"])
def test_only_small_regular_files_are_read(tree: Path, kind: str) -> None:
    target = tree / "odd.key"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "device":
        target = Path("/dev/zero")
        cert_dir = Path("/dev")
    elif kind == "directory":
        target.mkdir()
    else:
        target.write_text("A" * 70_000)
    start = time.monotonic()
    docs, issues = load([_certs_doc(tree, "www.crt", str(target))], cert_dir if kind == "device" else None)
    assert time.monotonic() - start < 5
    assert [i.path.split("/")[-1] for i in issues if "odd.key" in i.message or "/dev/zero" in i.message] == [
        "CertKeyFile"
    ], issues
    assert "CertKey" not in docs[0][1]["Certificates"][0]


BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(9)
)


@pytest.mark.parametrize(
    ("name", "text", "code"),
    [
        ("laughs.yaml", BILLION_LAUGHS, "LimitExceeded"),
        ("deep-flow.yaml", "[" * 100_000 + "]" * 100_000, "LimitExceeded"),
        ("deep-block.yaml", "".join(" " * i + "a:\n" for i in range(40)) + " " * 40 + "1\n", "LimitExceeded"),
        ("deep.json", "[" * 100_000 + "]" * 100_000, "LimitExceeded"),
        ("deep-ok-for-json.json", "[" * 500 + "]" * 500, "LimitExceeded"),
        ("big-int.yaml", "LoadBalancerId: lb\nPort: " + "9" * 5000 + "\n", "InvalidParameter.FormatError"),
        ("big-int.json", '{"Port": ' + "9" * 5000 + "}", "InvalidParameter.FormatError"),
        ("int64.yaml", "Port: " + str(1 << 64) + "\n", "LimitExceeded"),
        ("surrogate.yaml", 'LoadBalancerId: "\\udc80"\n', "InvalidParameter.FormatError"),
        ("surrogate.json", '{"LoadBalancerId": "\\udc80"}', "InvalidParameter.FormatError"),
        ("long-list.yaml", "Listeners: [" + "1," * 10_001 + "]\n", "LimitExceeded"),
        ("long-string.yaml", "LoadBalancerName: " + "x" * 300_000 + "\n", "LimitExceeded"),
        ("tagged.yaml", "a: !!python/object:os.system x\n", "InvalidParameter.FormatError"),
        ("date.yaml", "a: 2024-01-01\n", "InvalidParameter.FormatError"),
        ("not-utf8.yaml", "a: \udcff\n", "ResourceNotFound"),
        ("many-documents.yaml", "---\na: 1\n" * 10_001, "LimitExceeded"),
    ],
)
def test_documents_outside_the_bounds_are_refused_quickly(tmp_path: Path, name: str, text: str, code: str) -> None:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    start = time.process_time()
    docs, issues = load([path])
    assert time.process_time() - start < 5
    assert docs == [] and len(issues) == 1, issues
    assert issues[0].code == code and issues[0].path.startswith(str(path)), issues[0]


def test_a_document_larger_than_the_limit_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("w") as f:
        f.truncate(9 << 20)
    docs, issues = load([path])
    assert docs == [] and "larger than" in issues[0].message and issues[0].code == "LimitExceeded"


def test_aliases_within_the_bounds_still_load(tmp_path: Path) -> None:
    path = tmp_path / "anchors.yaml"
    path.write_text("base: &t {Port: 80}\ncopy: *t\nmerged: {<<: *t, Weight: 5}\n")
    docs, issues = load([path])
    assert issues == [] and docs[0][1]["merged"] == {"Port": 80, "Weight": 5}


def _cli(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "clbagent.cli", *argv], capture_output=True, text=True, timeout=120, input=stdin
    )


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "cannot read settings"),
        ("a: [", "not valid YAML"),
        ("no_such_setting: 1\n", "unknown setting"),
        ("- 1\n", "must be a mapping"),
        ("max_listeners: -1\n", "max_listeners"),
    ],
)
def test_bad_settings_are_a_clear_error(tmp_path: Path, content: str | None, words: str) -> None:
    settings = tmp_path / "settings.yaml"
    if content is not None:
        settings.write_text(content)
    proc = _cli("validate", str(FIXTURES / "seed"), "--settings", str(settings))
    assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_nul_in_a_file_name_is_an_error() -> None:
    docs, issues = load([Path("a\0b.yaml")])
    assert docs == [] and issues[0].code == "ResourceNotFound"


def test_an_undecodable_file_name_is_printed_safely(tmp_path: Path) -> None:
    path = Path(os.fsdecode(bytes(tmp_path) + b"/bad-\xff.yaml"))
    path.write_text("a: [")
    proc = _cli("validate", str(path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "\\xff" in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--vip", "not-an-ip"], "not an IP address"),
        (["--vip", "127.0.30.1", "--backend", "x:80"], "bad backend"),
        (["--vip", "127.0.30.1", "--into", "{into}"], "one load-balancer document"),
    ],
)
def test_import_arguments_are_checked(tmp_path: Path, argv: list[str], words: str) -> None:
    into = tmp_path / "list.yaml"
    into.write_text("[1, 2]\n")
    argv = [a.format(into=into) for a in argv]
    proc = _cli("import", "alibaba-https", str(FIXTURES / "alibaba" / "sample-request.txt"), *argv)
    assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_the_sample_request_imports_without_with() -> None:
    proc = _cli("import", "alibaba-https", str(FIXTURES / "alibaba" / "sample-request.txt"), "--vip", "127.0.30.1")
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load(proc.stdout)
    assert doc["Listeners"][0]["Certificate"]["CertId"] == "idkp-123-cn-test-xxxx"
    assert "warning: ResourceNotFound" in proc.stderr and "--with" in proc.stderr


def test_a_key_in_the_wrong_shape_is_not_quoted(tmp_path: Path) -> None:
    path = tmp_path / "k.yaml"
    secret = "MHcCAQEEIBSECRETKEYMATERIAL"
    path.write_text(json.dumps({"Certificates": [{"CertId": "c", "CertContent": CERT, "CertKey": {"pem": secret}}]}))
    proc = _cli("validate", str(path), "--json")
    assert proc.returncode == 2 and secret not in proc.stdout + proc.stderr


@pytest.mark.parametrize("field", ["LoadBalancerName", "LoadBalancerVips"])
def test_a_key_pasted_into_another_field_is_not_quoted(tmp_path: Path, field: str) -> None:
    path = tmp_path / "k.yaml"
    value = KEY if field == "LoadBalancerName" else [KEY]
    path.write_text(yaml.safe_dump({"LoadBalancerId": "lb-k", "LoadBalancerVips": ["127.0.10.1"], field: value}))
    proc = _cli("validate", str(path), "--json")
    body = KEY.splitlines()[1]
    assert proc.returncode == 2 and body[:20] not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "params",
    [
        "ListenerPort=\uff14\uff14\uff13",
        "ListenerPort=443&HealthCheck=on&HealthyThreshold=\u00b3",
        "ServerCertificates=" + "[" * 5000,
    ],
)
def test_odd_request_parameters_are_errors_not_tracebacks(tmp_path: Path, params: str) -> None:
    request = tmp_path / "request.txt"
    request.write_text(f"Action=CreateLoadBalancerHTTPSListener&LoadBalancerId=lb-1&ServerCertificateId=c&{params}\n")
    proc = _cli("import", "alibaba-https", str(request), "--vip", "127.0.30.1")
    assert "Traceback" not in proc.stderr and proc.returncode in (0, 2), proc.stderr


def test_a_newline_in_a_file_name_stays_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "evil\nInvalidParameter: forged.yaml"
    path.write_text("a: [")
    issues = load([path])[1]
    assert "\n" not in issues[0].path and "\\n" in issues[0].path
