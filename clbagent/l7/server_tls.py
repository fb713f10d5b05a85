"""TLS of one HTTPS listener or domain: which policy applies, which certificate files it uses.

Policy precedence: the listener's ``TLSCipherPolicy`` (named or a custom ``TLSPolicies`` entry),
then the bound personalized config's ``ssl_protocols``/``ssl_ciphers``, then the default (TLS 1.2+,
or the documented CLB default with the ``legacy_tls_default`` setting). Every result carries the
forced-off list and the OpenSSL warnings of ``clbagent.tls_policies``.

Mutual TLS and TLSv1/TLSv1.1 do not mix: OpenSSL 3 negotiates those versions only at security
level 0, where certificate verification also accepts client keys of any size (RSA 768). An
explicit policy asking for both is refused (``TlsRefusedError``); the legacy default does not apply to
mutual-TLS listeners, which keep TLS 1.2+.
"""

from __future__ import annotations

from dataclasses import dataclass

from clbagent.errors import Code
from clbagent.model import Certificate, CertificateInput, Listener
from clbagent.personalized_config import Directive
from clbagent.tls_policies import (
    DEFAULT_CIPHERS,
    DEFAULT_PROTOCOLS,
    SECURE_CIPHERS,
    SECURE_PROTOCOLS,
    TlsSettings,
    default_tls,
    named,
    resolve,
)
from clbagent.validate.catalog import Catalog

from . import names


@dataclass(frozen=True)
class TlsBlock:
    """What a server renders for TLS: certificate pairs, policy, optional client verification."""

    certificates: tuple[tuple[str, str], ...]  # (certificate path, key path), RSA then ECC
    protocols: tuple[str, ...]
    ciphers: str
    tls13_suites: str
    client_ca: str | None
    verify_depth: int


class TlsRefusedError(ValueError):
    """A TLS setting OpenSSL cannot serve safely or at all; the load balancer is not rendered."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.code = Code.INVALID_PARAMETER
        super().__init__(message)


def is_mutual(lis: Listener) -> bool:
    slots = [lis.certificate, *(r.certificate for r in lis.rules or [])]
    return any(s is not None and s.ssl_mode == "MUTUAL" for s in slots)


def _explicit(lis: Listener, catalog: Catalog, personalized: list[Directive], legacy: bool) -> tuple[TlsSettings, str]:
    if lis.tls_cipher_policy:
        found = named(lis.tls_cipher_policy)
        if found is not None:
            return found, lis.at("TLSCipherPolicy")
        custom = catalog.tls_policies[lis.tls_cipher_policy]
        tls12 = tuple(c for c in custom.ciphers if not c.startswith("TLS_"))
        tls13 = tuple(c for c in custom.ciphers if c.startswith("TLS_"))
        return resolve(tuple(custom.tls_versions), tls12, tls13), lis.at("TLSCipherPolicy")
    given = {d.name: d.args for d in personalized if d.name in ("ssl_protocols", "ssl_ciphers")}
    protocols = given.get("ssl_protocols", DEFAULT_PROTOCOLS if legacy else SECURE_PROTOCOLS)
    ciphers = given["ssl_ciphers"][0].split(":") if "ssl_ciphers" in given else None
    chosen = ciphers or (DEFAULT_CIPHERS.split(":") if legacy else SECURE_CIPHERS)
    return resolve(tuple(protocols), tuple(chosen)), "ConfigId"


def listener_policy(
    lis: Listener, catalog: Catalog, personalized: list[Directive], legacy_default: bool = False
) -> tuple[TlsSettings, str]:
    """Resolved settings and the field they came from (for warning paths). Raises ``TlsRefusedError``."""
    mutual = is_mutual(lis)
    legacy = legacy_default and not mutual
    if lis.tls_cipher_policy or any(d.name in ("ssl_protocols", "ssl_ciphers") for d in personalized):
        settings, where = _explicit(lis, catalog, personalized, legacy)
    else:
        settings, where = default_tls(legacy), lis.at("Protocol")
    if settings.error:
        raise TlsRefusedError(where, f"listener {lis.id}: {settings.error}")
    if mutual and settings.legacy:
        raise TlsRefusedError(
            where,
            f"listener {lis.id} verifies client certificates, which needs TLS 1.2 or later: OpenSSL accepts "
            "TLSv1/TLSv1.1 only at security level 0, where client keys of any size (RSA 768) pass",
        )
    return settings, where


def _pem(text: str) -> str:
    body = text.replace("\r\n", "\n").strip("\n")
    return body + "\n"


def certificate_files(cert: CertificateInput, catalog: Catalog) -> tuple[dict[str, str], list[str], str | None]:
    """Files a certificate slot needs, its server certificate IDs (RSA first) and the CA path.

    Inline PEM in a listener or rule was given a stable CertId by validation."""
    files: dict[str, str] = {}
    servers: list[str] = []
    objs: list[tuple[str, str, str]] = []  # (id, chain, key)
    for ident in (cert.cert_id, cert.ecc_cert_id):
        obj: Certificate | None = catalog.certificates.get(ident) if ident else None
        if obj is not None and obj.cert_content and obj.cert_key:
            objs.append((obj.cert_id, obj.cert_content, obj.cert_key))
    for ident, chain, key in objs:
        crt_path, key_path = names.cert_files(ident)
        files[crt_path] = _pem(chain)
        files[key_path] = _pem(key)
        servers.append(ident)
    ca: str | None = None
    if cert.ssl_mode == "MUTUAL":
        ca_obj = catalog.certificates.get(cert.cert_ca_id) if cert.cert_ca_id else None
        if ca_obj is not None and ca_obj.cert_content:
            ca = names.ca_file(ca_obj.cert_id)
            files[ca] = _pem(ca_obj.cert_content)
    return files, servers, ca


def tls_block(
    cert: CertificateInput, settings: TlsSettings, catalog: Catalog, verify_depth: int
) -> tuple[TlsBlock, dict[str, str]]:
    files, idents, ca = certificate_files(cert, catalog)
    pairs = tuple(names.cert_files(i) for i in idents)
    block = TlsBlock(
        certificates=pairs,
        protocols=tuple(settings.protocols),
        ciphers=settings.ciphers,
        tls13_suites=":".join(settings.tls13_suites),
        client_ca=ca,
        verify_depth=verify_depth,
    )
    return block, files
