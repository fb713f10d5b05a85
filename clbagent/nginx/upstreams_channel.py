"""The agent's side of nginx's dynamic upstreams (docs/dynamic-upstreams.md).

Members, weights and down flags of each rule's upstream live in nginx's shared memory; the agent
changes them per upstream over the control channel, a root-only unix socket of the prefix
(``run/ctl.sock``), with no reload. The same JSON shape is the prefix's data files
(``upstreams/<LoadBalancerId>.json``) that nginx loads at start, so a rendered prefix serves
without the agent.
The nginx text the Lua side needs (module, dicts, phases, upstream blocks, the channel's server)
is here too, so that the renderer, the tests and the benchmark write it one way.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clbagent.nginx import metrics_channel as metrics

SOCKET = "run/ctl.sock"  # relative to the prefix
DATA_DIR = "upstreams"  # relative to the directory of nginx.conf: one <LoadBalancerId>.json each
BATCH_BYTES = 256 * 1024  # one PUT stays well under the channel's client_max_body_size
LUA_DIR = Path(__file__).resolve().parents[1] / "lua"  # the Lua code, shipped as package data
NGINX_MODULES = Path("/usr/lib/nginx/modules")  # Debian's
NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")  # an upstream name, as lua/clb/spec.lua accepts it
PLAIN_PATH = re.compile(r"/[A-Za-z0-9_./-]*")  # a path that needs no quoting in nginx or Lua text


@dataclass(frozen=True)
class Member:
    endpoint: str  # "10.0.0.1:80" or "[2001:db8::1]:80"
    weight: int  # 0-100, 0 = no traffic
    down: bool = False  # marked down by health checking
    sid: str | None = None  # cookie value naming this member (sticky upstreams)


@dataclass(frozen=True)
class Sticky:
    cookie: str
    max_age: int


@dataclass(frozen=True)
class Upstream:
    members: tuple[Member, ...]
    method: str = "wrr"
    sticky: Sticky | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "members": [_member_json(m) for m in self.members]}
        if self.sticky:
            out["sticky"] = {"cookie": self.sticky.cookie, "max_age": self.sticky.max_age}
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Upstream:
        sticky = data.get("sticky")
        members = tuple(
            Member(m["endpoint"], m["weight"], m.get("down", False), m.get("sid"))
            for m in data.get("members") or ()  # nginx's cjson writes an empty list as {}
        )
        return cls(members, data.get("method", "wrr"), Sticky(sticky["cookie"], sticky["max_age"]) if sticky else None)


def _member_json(m: Member) -> dict[str, Any]:
    out: dict[str, Any] = {"endpoint": m.endpoint, "weight": m.weight, "down": m.down}
    if m.sid is not None:
        out["sid"] = m.sid
    return out


def render_data_file(upstreams: Mapping[str, Upstream]) -> str:
    """One data file (``upstreams/<LoadBalancerId>.json``): byte-deterministic, compact, one
    upstream per line (sorted)."""
    lines = [
        f"{json.dumps(name)}:{json.dumps(upstreams[name].to_json(), sort_keys=True, separators=(',', ':'))}"
        for name in sorted(upstreams)
    ]
    return '{"upstreams":{\n' + ",\n".join(lines) + "\n}}\n"


def upstreams_of(files: Mapping[str, str]) -> dict[str, Upstream]:
    """Every upstream of the data files of a composed file set (what nginx should hold)."""
    out: dict[str, Upstream] = {}
    for path in sorted(files):
        if path.startswith(f"{DATA_DIR}/") and path.endswith(".json"):
            for name, data in json.loads(files[path])["upstreams"].items():
                out[name] = Upstream.from_json(data)
    return out


def _plain(path: Path) -> str:
    if not PLAIN_PATH.fullmatch(str(path)):
        raise ValueError(f"{path}: an nginx prefix or Lua directory path must be absolute, of [A-Za-z0-9_./-]")
    return str(path)


def main_directives(modules: Path = NGINX_MODULES) -> str:
    """Main-context lines that load nginx's Lua module (the NDK it needs first)."""
    m = _plain(modules)
    return f"load_module {m}/ndk_http_module.so;\nload_module {m}/ngx_http_lua_module.so;\n"


def http_directives(
    data_dir: Path, dict_size: str, lua_dir: Path = LUA_DIR, *, count: bool = True, sticky: bool = True
) -> str:
    """http-context lines: where the Lua code is, the shared dicts, loading every data file
    of ``data_dir`` at start and reload, and the phases that set the cookie and give connections back.
    ``count``: the log phase also counts the L7 metrics (docs/metrics.md). ``sticky``: some upstream
    has cookie persistence; without any, the header filter phase (a Lua call on every response)
    is left out."""
    data, lua = _plain(data_dir), _plain(lua_dir)
    if not re.fullmatch(r"[1-9][0-9]{0,5}[km]", dict_size):
        raise ValueError(f"shared dict size {dict_size!r}: a number with k or m")
    shm, load, worker, log = metrics.http_lines() if count else ("", "", "", "")
    cookie = '    header_filter_by_lua_block { require("clb.balancer").header_filter() }\n' if sticky else ""
    return (
        f'    lua_package_path "{lua}/?.lua;;";\n'
        f"    lua_shared_dict clb_upstreams {dict_size};\n"
        "    lua_shared_dict clb_conns 4m;\n"
        f"{shm}"
        f'    init_by_lua_block {{ require("clb.init").load_dir("{data}") {load} }}\n'
        f"{worker}"
        f"{cookie}"
        f'    log_by_lua_block {{ require("clb.balancer").log() {log} }}\n'
    )


def upstream_block(name: str, keepalive: int = 32) -> str:
    """The ``upstream`` block of one dynamic upstream (keepalive after the balancer, as it must be):
    no member address, so that member changes never change it."""
    if not NAME.fullmatch(name):
        raise ValueError(f"upstream name {name!r}: 1-128 of [A-Za-z0-9_.-]")
    pool = f"    keepalive {int(keepalive)};\n" if keepalive else ""
    return (
        f"upstream {name} {{\n"
        "    server 0.0.0.1:1;  # placeholder: the balancer picks every peer\n"
        f'    balancer_by_lua_block {{ require("clb.balancer").balance("{name}") }}\n'
        f"{pool}}}\n"
    )


def channel_server(prefix: Path) -> str:
    """The control channel's server: a unix socket in ``<prefix>/run`` (which must be 0700)."""
    return (
        "    server {\n"
        f"        listen unix:{_plain(prefix)}/{SOCKET};\n"
        "        client_max_body_size 1m;\n"
        "        client_body_buffer_size 1m;\n"
        "        access_log off;\n"
        '        location / { content_by_lua_block { require("clb.channel").handle() } }\n'
        f"{metrics.CHANNEL_LINES}"
        "    }\n"
    )


def shared_dict_size(upstreams: Mapping[str, Upstream]) -> str:
    """``lua_shared_dict clb_upstreams`` size for these upstreams: room for four times their JSON
    (nginx's slab allocator rounds entries up to a power of two; members may grow between
    renders), rounded up to a power of two megabytes so that small changes keep the size (a new
    size empties the dict at the next reload, and the agent must then re-send everything)."""
    payload = sum(_encoded_size(u) + 2 * len(name) + 256 for name, u in upstreams.items())
    megabytes = 4
    while megabytes * 1024 * 1024 < 4 * payload:
        megabytes *= 2
    return f"{megabytes}m"


@functools.lru_cache(maxsize=1 << 16)
def _encoded_size(upstream: Upstream) -> int:
    """JSON size of one upstream, remembered: an edit changes a few of thousands (Upstream is frozen)."""
    return len(json.dumps(upstream.to_json()))


@dataclass(frozen=True)
class Held:
    """What nginx holds: ``instance`` changes when its shared memory was recreated empty."""

    instance: str
    upstreams: dict[str, Upstream]
    versions: dict[str, int] = field(default_factory=dict)
    active: dict[str, dict[str, int]] = field(default_factory=dict)  # upstream → endpoint → connections


class ChannelError(Exception):
    """nginx refused a request (``status``, and the offending field ``path``) or did not answer."""

    def __init__(self, status: int, message: str, path: str = ""):
        super().__init__(f"{status} {path}: {message}" if path else f"{status}: {message}")
        self.status, self.message, self.path = status, message, path


def differences(sent: Mapping[str, Upstream], held: Held) -> list[str]:
    """Plain sentences for every upstream nginx holds differently from what was sent."""
    out = []
    for name in sorted(sent):
        have = held.upstreams.get(name)
        if have is None:
            out.append(f"upstream {name}: nginx holds nothing")
        elif have != sent[name]:
            out.append(f"upstream {name}: nginx holds {have.to_json()}, sent {sent[name].to_json()}")
    return out


def _batches(upstreams: Mapping[str, Upstream]) -> Iterator[dict[str, Any]]:
    batch: dict[str, Any] = {}
    size = 0
    for name in sorted(upstreams):
        body = upstreams[name].to_json()
        n = len(json.dumps(body)) + len(name)
        if batch and size + n > BATCH_BYTES:
            yield batch
            batch, size = {}, 0
        batch[name], size = body, size + n
    if batch:
        yield batch


class UpstreamsChannel:
    """HTTP over the unix socket of one nginx prefix."""

    def __init__(self, socket_path: Path | str, timeout: float = 5.0):
        import httpx  # here: validate and render, which import this module, never open the channel

        # Plain HTTP over a unix socket: no TLS context to build (loading CA bundles costs ~0.1 s).
        self._errors = httpx.HTTPError
        transport = httpx.HTTPTransport(uds=str(socket_path), verify=False)
        self._http = httpx.Client(transport=transport, base_url="http://nginx", timeout=timeout, verify=False)

    @classmethod
    def of_prefix(cls, prefix: Path, timeout: float = 5.0) -> UpstreamsChannel:
        return cls(prefix / SOCKET, timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> UpstreamsChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        try:
            resp = self._http.request(method, path, json=body)
        except self._errors as e:
            raise ChannelError(0, f"nginx control channel: {e}") from e
        try:
            data = resp.json()
        except ValueError as e:
            raise ChannelError(resp.status_code, "nginx control channel answered no JSON") from e
        return resp.status_code, data

    def send(self, upstreams: Mapping[str, Upstream]) -> dict[str, int]:
        """Replace these upstreams in nginx (in batches); their new versions by name."""
        versions: dict[str, int] = {}
        for batch in _batches(upstreams):
            status, data = self._call("PUT", "/upstreams", {"upstreams": batch})
            if status != 200:
                raise ChannelError(status, data.get("error", ""), data.get("path", ""))
            versions.update(data["versions"])
        return versions

    def delete(self, name: str) -> bool:
        """Remove one upstream; False when nginx held none by that name."""
        status, data = self._call("DELETE", f"/upstreams/{name}")
        if status == 404:
            return False
        if status != 200:
            raise ChannelError(status, data.get("error", ""), data.get("path", ""))
        return True

    def sync(self, desired: Mapping[str, Upstream]) -> list[str]:
        """Make nginx hold exactly ``desired`` (after a reload, an agent start, a lost dict): send
        the upstreams it holds differently, delete those it should not hold, then check. Returns
        the names changed; raises ChannelError (409) when nginx still holds something else."""
        held = self.held()
        stale = {n: u for n, u in desired.items() if held.upstreams.get(n) != u}
        extra = sorted(set(held.upstreams) - set(desired))
        if stale:
            self.send(stale)
        for name in extra:
            self.delete(name)
        left = differences(desired, self.held())
        if left:
            raise ChannelError(409, "; ".join(left))
        return sorted([*stale, *extra])

    def held_one(self, name: str) -> Upstream | None:
        """What nginx holds for one upstream (None: nothing by that name)."""
        status, data = self._call("GET", f"/upstreams/{name}")
        if status == 404:
            return None
        if status != 200:
            raise ChannelError(status, data.get("error", ""), data.get("path", ""))
        return Upstream.from_json(data)

    def held(self) -> Held:
        status, data = self._call("GET", "/upstreams")
        if status != 200:
            raise ChannelError(status, data.get("error", ""), data.get("path", ""))
        raw = data.get("upstreams") or {}
        return Held(
            instance=data["instance"],
            upstreams={n: Upstream.from_json(u) for n, u in raw.items()},
            versions={n: u["version"] for n, u in raw.items()},
            active={n: {m["endpoint"]: m.get("active", 0) for m in u.get("members") or ()} for n, u in raw.items()},
        )
