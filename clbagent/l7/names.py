"""Stable names derived from IDs: files, upstreams, zones, map variables, cookies, server ids.

One nginx serves every tenant, so a name one load balancer generates must never equal a name
another one generates or a user can write:

- file names are the IDs themselves with a fixed suffix per kind, in a directory per kind
  (``certs/<CertId>.crt|.key``, ``ca/<CertId>.crt``, ``conf.d/<LoadBalancerId>.conf``): IDs use
  ``[A-Za-z0-9_.-]`` only, so two different IDs never give the same file;
- upstream, zone and variable names are a kind prefix and a 128-bit hash of the full identity
  (load balancer, and the document path as well as the IDs of the object), so duplicated or
  look-alike IDs still give distinct names; a readable ID part follows for people;
- every generated variable name (and ``$cookie_<name>`` of the sticky cookies) is longer than 32
  characters, the longest name a PCRE2 named capture may have: a regex in a ``server_name`` or
  ``location`` can never define or shadow one.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from clbagent.nginx.upstreams_channel import DATA_DIR

_FOLD = re.compile(r"[^A-Za-z0-9]+")
PCRE2_MAX_NAME = 32  # longest named capture (= nginx variable a regex can set)


def digest(*parts: str, size: int = 32) -> str:
    """Hex SHA-256 of the parts (NUL-separated: IDs never contain NUL), 128 bits by default."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:size]


def token(text: str, limit: int = 24) -> str:
    """A readable, nginx-identifier-safe rendering of an ID (for people, not for uniqueness)."""
    return _FOLD.sub("_", text).strip("_")[:limit] or "x"


def variable(kind: str, *identity: str) -> str:
    """``$clb_<kind>_<hash>``: a map/geo variable no regex capture can name."""
    name = f"clb_{kind}_{digest(kind, *identity)}"
    assert len(name) > PCRE2_MAX_NAME
    return f"${name}"


def rule_key(lb: str, listener: str, location: str) -> str:
    return f"{lb}/{listener}/{location}"


def down_key(lb: str, listener: str, location: str, endpoint: str) -> str:
    """Health-hook key of one target of one rule: ``<lb>/<listener>/<location>/<ip:port>``."""
    return f"{rule_key(lb, listener, location)}/{endpoint}"


def upstream_name(identity: tuple[str, ...], location: str) -> str:
    return f"u_{digest('upstream', *identity)}_{token(location)}"


def pinned_name(identity: tuple[str, ...], sid: str) -> str:
    """The upstream of one sticky target (``sid``: its server id)."""
    return f"p_{digest('pinned', *identity)}_{sid}"


def zone_name(lb: str) -> str:
    return f"z_{digest('zone', lb)}_{token(lb)}"


def cookie_name(lb: str, listener: str, location: str) -> str:
    """The sticky cookie of a rule: from IDs only, so a reordered document keeps its cookies; long
    enough that nginx's ``$cookie_<name>`` variable is out of reach of a named capture too."""
    name = f"clb_{digest('sticky', lb, listener, location, size=24)}"
    assert len(f"cookie_{name}") > PCRE2_MAX_NAME
    return name


def server_id(secret: bytes, key: str, endpoint: str) -> str:
    """Opaque cookie value naming one target: a truncated HMAC of ``ip:port``, never the IP."""
    return hmac.new(secret or b"clbagent", f"{key}\0{endpoint}".encode(), hashlib.sha256).hexdigest()[:16]


def lb_file(lb: str) -> str:
    return f"conf.d/{lb}.conf"


def data_file(lb: str) -> str:
    """The members of a load balancer's dynamic upstreams (docs/dynamic-upstreams.md)."""
    return f"{DATA_DIR}/{lb}.json"


def cert_files(cert_id: str) -> tuple[str, str]:
    return f"certs/{cert_id}.crt", f"certs/{cert_id}.key"


def ca_file(cert_id: str) -> str:
    return f"ca/{cert_id}.crt"
