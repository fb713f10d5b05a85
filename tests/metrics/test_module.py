"""When nginx.conf loads clbagent's nginx module of the counters: only a module built for the
installed nginx (its version and module signature in the binary, as nginx compares them), since
nginx refuses to start with any other; without it the log phase reads the joined variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from clbagent.l7.compile import main_conf
from clbagent.nginx import metrics_channel
from clbagent.nginx.metrics_channel import module_path

SIGNATURE = "8,4,8,0011111111010111001111111111111111"


def _built(tmp_path: Path, abi: str | None) -> Path:
    module = tmp_path / "ngx_http_clb_metrics_module.so"
    module.write_bytes(b"\x7fELF")
    if abi is not None:
        (tmp_path / "ngx_http_clb_metrics_module.so.abi").write_text(abi)
    return module


@pytest.fixture
def nginx(tmp_path: Path) -> str:
    """A stand-in nginx binary holding the version and signature strings as nginx 1.22.1 does."""
    binary = tmp_path / "nginx"
    binary.write_bytes(b"\0junk\0nginx/1.22.1\0more\0" + SIGNATURE.encode() + b"\0end")
    return str(binary)


@pytest.mark.parametrize(
    ("abi", "loaded"),
    [
        (f"1.22.1 {SIGNATURE}\n", True),
        (f"1.22.2 {SIGNATURE}\n", False),  # another nginx version
        ("1.22.1 8,4,8,0011111111010111001111111111111110\n", False),  # other build options
        ("1.22 " + SIGNATURE, False),  # a prefix of the version is not the version
        ("1.22.1", False),  # no signature
        (None, False),  # no record of what it was built for
    ],
)
def test_module_only_when_built_for_the_installed_nginx(tmp_path: Path, nginx: str, abi: str | None, loaded: bool):
    module = _built(tmp_path, abi)
    assert module_path(module, nginx) == (module if loaded else None)


def test_no_module_without_the_file_or_nginx(tmp_path: Path, nginx: str):
    module = _built(tmp_path, f"1.22.1 {SIGNATURE}\n")
    module.unlink()
    assert module_path(module, nginx) is None
    assert module_path(_built(tmp_path, f"1.22.1 {SIGNATURE}\n"), str(tmp_path / "no-nginx")) is None


def test_nginx_conf_loads_the_module_only_when_counting(tmp_path: Path, nginx: str, monkeypatch: pytest.MonkeyPatch):
    module = _built(tmp_path, f"1.22.1 {SIGNATURE}\n")
    monkeypatch.setattr(metrics_channel, "MODULE", module)
    monkeypatch.setattr(metrics_channel, "NGINX", nginx)
    line = f"load_module {module};\n"
    dynamic = main_conf("/srv/p", dynamic=True)
    assert dynamic.count(line) == 1 and dynamic == main_conf("/srv/p", dynamic=True)  # byte-deterministic
    assert dynamic.index("ngx_http_lua_module.so") < dynamic.index(line) < dynamic.index("http {")
    assert line not in main_conf("/srv/p", dynamic=False)  # no Lua: nothing would call it
    monkeypatch.setattr(metrics_channel, "MODULE", tmp_path / "missing.so")
    assert "clb_metrics" not in main_conf("/srv/p", dynamic=True).split("http {")[0]
