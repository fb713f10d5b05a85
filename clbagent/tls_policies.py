"""TLS policies: the five named policies, the defaults and what this host's OpenSSL can do.

Every cipher string the agent renders ends with the forced-off list (T1953). Debian 12's OpenSSL 3
negotiates TLSv1.0/1.1 only at security level 0 and cannot negotiate DES-CBC3-SHA at all; both
are handled here explicitly and reported as warnings instead of silently serving something else.
A cipher string is judged by OpenSSL itself (the library nginx links): a string that selects no
TLS 1.2 cipher would stop ``nginx -t`` for every tenant, so it is refused.

The default for a listener that names no policy is TLS 1.2 and 1.3 at OpenSSL's normal security
level. The documented CLB default (TLSv1-TLSv1.2 with 3DES, T1923/T1955), which needs security
level 0, is the ``legacy_tls_default`` agent setting.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from functools import cache

FORCED_OFF = ("!aNULL", "!eNULL", "!EXPORT", "!DES", "!RC4", "!MD5", "!PSK", "!DHE")
DEFAULT_PROTOCOLS = ("TLSv1", "TLSv1.1", "TLSv1.2")
SECURE_PROTOCOLS = ("TLSv1.2", "TLSv1.3")
# T1955, verbatim but for its trailing ';' (a statement terminator, not a cipher).
DEFAULT_CIPHERS = (
    "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305:kEDH+AESGCM:ECDHE-RSA-AES128-SHA256:"
    "ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES256-SHA384:"
    "ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES256-SHA:ECDHE-ECDSA-AES256-SHA:AES128-GCM-SHA256:"
    "AES256-GCM-SHA384:AES128:AES256:AES:HIGH:!aNULL:!eNULL:!EXPORT:!DES:!RC4:!MD5:!PSK:!DHE:3DES"
)
# T1959: the allowed range of a custom ssl_ciphers ('CA-MELLIA256-SHA' is the source's spelling).
ALLOWED_RANGE = (
    "ECDH-ECDSA-AES128-SHA256:ECDH-RSA-AES256-SHA:ECDH-ECDSA-AES256-SHA:SRP-DSS-AES-256-CBC-SHA:"
    "SRP-AES-128-CBC-SHA:ECDH-RSA-AES128-SHA256:DH-RSA-AES128-SHA256:DH-RSA-CAMELLIA128-SHA:"
    "DH-DSS-AES256-GCM-SHA384:DH-RSA-AES256-SHA256:AES256-SHA256:SEED-SHA:CA-MELLIA256-SHA:"
    "ECDH-RSA-AES256-SHA384:ECDH-ECDSA-AES128-GCM-SHA256:DH-RSA-AES128-SHA:DH-RSA-AES128-GCM-SHA256:"
    "DH-DSS-AES128-SHA:ECDH-RSA-AES128-SHA:DH-DSS-CAMELLIA256-SHA:SRP-AES-256-CBC-SHA:DH-DSS-AES128-SHA256:"
    "SRP-RSA-AES-256-CBC-SHA:ECDH-ECDSA-AES256-GCM-SHA384:ECDH-RSA-AES256-GCM-SHA384:DH-DSS-AES256-SHA256:"
    "ECDH-ECDSA-AES256-SHA384:AES128-SHA:DH-DSS-AES128-GCM-SHA256:AES128-SHA256:DH-RSA-SEED-SHA:"
    "ECDH-ECDSA-AES128-SHA:IDEA-CBC-SHA:AES128-GCM-SHA256:DH-RSA-CAMELLIA256-SHA:CAMELLIA128-SHA:"
    "DH-RSA-AES256-GCM-SHA384:SRP-RSA-AES-128-CBC-SHA:SRP-DSS-AES-128-CBC-SHA:ECDH-RSA-AES128-GCM-SHA256:"
    "DH-DSS-CAMELLIA128-SHA:DH-DSS-SEED-SHA:AES256-SHA:DH-RSA-AES256-SHA:kEDH+AESGCM:AES256-GCM-SHA384:"
    "DH-DSS-AES256-SHA:HIGH:AES128:AES256:AES"
)
_CLB_13 = (
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES128-SHA256",
    "ECDHE-RSA-AES256-SHA384",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA256",
    "AES256-SHA256",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-SHA",
    "AES256-SHA",
    "DES-CBC3-SHA",
)
_STRICT = (
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES128-SHA256",
    "ECDHE-RSA-AES256-SHA384",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-RSA-AES256-SHA",
)
_TLS13_SUITES = (
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_CCM_SHA256",
    "TLS_AES_128_CCM_8_SHA256",
)
_STRICT_13 = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-ECDSA-AES256-SHA384",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES128-SHA256",
    "ECDHE-RSA-AES256-SHA384",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-RSA-AES256-SHA",
)


@dataclass(frozen=True)
class Policy:
    protocols: tuple[str, ...]
    ciphers: tuple[str, ...]  # TLS 1.2 and older (OpenSSL names)
    tls13_suites: tuple[str, ...] = ()


NAMED_POLICIES: dict[str, Policy] = {
    "tls_cipher_policy_1_0": Policy(("TLSv1", "TLSv1.1", "TLSv1.2"), _CLB_13),
    "tls_cipher_policy_1_1": Policy(("TLSv1.1", "TLSv1.2"), _CLB_13),
    "tls_cipher_policy_1_2": Policy(("TLSv1.2",), _CLB_13),
    "tls_cipher_policy_1_2_strict": Policy(("TLSv1.2",), _STRICT),
    "tls_cipher_policy_1_2_strict_with_1_3": Policy(("TLSv1.2", "TLSv1.3"), _STRICT_13, _TLS13_SUITES),
}

CIPHER_TOKENS = frozenset(
    ALLOWED_RANGE.split(":")
    + [t.lstrip("!") for t in DEFAULT_CIPHERS.split(":")]
    + [c for p in NAMED_POLICIES.values() for c in p.ciphers]
)
UNSERVABLE = frozenset({"DES-CBC3-SHA", "3DES"})
LEGACY = frozenset({"TLSv1", "TLSv1.1"})
# The documented cipher list without what OpenSSL 3 cannot negotiate at its normal level.
SECURE_CIPHERS = tuple(c for c in DEFAULT_CIPHERS.split(":") if c not in UNSERVABLE)


@dataclass(frozen=True)
class TlsSettings:
    """What one HTTPS server renders: ``ssl_protocols``, ``ssl_ciphers`` and TLS 1.3 suites.
    ``error`` is set when OpenSSL cannot serve the combination at all."""

    protocols: tuple[str, ...]
    ciphers: str
    tls13_suites: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=())
    error: str | None = None

    @property
    def legacy(self) -> bool:
        """TLSv1/TLSv1.1 enabled, hence OpenSSL security level 0 (weak keys of any size accepted)."""
        return bool(LEGACY.intersection(self.protocols))


@cache
def openssl_refuses(ciphers: str) -> str | None:
    """OpenSSL's verdict on a TLS 1.2 cipher string: None when it selects at least one cipher."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.set_ciphers(ciphers)
    except ssl.SSLError:
        return "the cipher list selects no TLS 1.2 cipher this host's OpenSSL knows"
    return None


def resolve(protocols: tuple[str, ...], ciphers: tuple[str, ...], tls13: tuple[str, ...] = ()) -> TlsSettings:
    """Final settings: forced-off list appended once, legacy TLS and 3DES handled explicitly."""
    warnings: list[str] = []
    kept = [c for c in ciphers if c not in FORCED_OFF]
    dead = sorted(c for c in kept if c.lstrip("+") in UNSERVABLE)
    if dead:
        warnings.append(
            f"{', '.join(dead)} cannot be negotiated by this host's OpenSSL; clients that offer only it will fail"
        )
    text = ":".join([*kept, *FORCED_OFF])
    legacy = sorted(LEGACY.intersection(protocols))
    if legacy:
        text += ":@SECLEVEL=0"
        warnings.append(
            f"{' and '.join(legacy)} enabled: OpenSSL security level lowered to 0 for this server so that "
            "these versions can be negotiated"
        )
    refused = openssl_refuses(text)
    if refused and set(protocols) == {"TLSv1.3"}:
        refused += " (a TLS 1.3-only policy cannot be served: nginx needs a TLS 1.2 cipher list that matches)"
    return TlsSettings(tuple(protocols), text, tuple(tls13), tuple(warnings), refused)


def default_tls(legacy: bool = False) -> TlsSettings:
    """The settings of a listener that names no policy (``legacy``: the documented CLB default)."""
    if legacy:
        return resolve(DEFAULT_PROTOCOLS, tuple(DEFAULT_CIPHERS.split(":")))
    return resolve(SECURE_PROTOCOLS, SECURE_CIPHERS)


def named(policy: str) -> TlsSettings | None:
    p = NAMED_POLICIES.get(policy)
    return None if p is None else resolve(p.protocols, p.ciphers, p.tls13_suites)
