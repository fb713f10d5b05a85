"""TLS of one HTTPS listener or domain: which policy applies, which certificate files it uses.

Policy precedence: the listener's ``TLSCipherPolicy`` (named or a custom ``TLSPolicies`` entry),
then the bound personalized config's ``ssl_protocols``/``ssl_ciphers``, then the documented
defaults. Every result carries the forced-off list and the OpenSSL warnings of ``clbagent.tls_policies``.
"""

from __future__ import annotations

from dataclasses import dataclass

from clbagent.model import Certificate, CertificateInput, Listener
from clbagent.personalized_config import Directive
from clbagent.tls_policies import DEFAULT_CIPHERS, DEFAULT_PROTOCOLS, TlsSettings, default_tls, named, resolve
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


def listener_policy(lis: Listener, catalog: Catalog, personalized: list[Directive]) -> tuple[TlsSettings, str]:
    """Resolved settings and the field they came from (for warning paths)."""
    if lis.tls_cipher_policy:
        found = named(lis.tls_cipher_policy)
        if found is not None:
            return found, lis.at("TLSCipherPolicy")
        custom = catalog.tls_policies[lis.tls_cipher_policy]
        tls12 = tuple(c for c in custom.ciphers if not c.startswith("TLS_"))
        tls13 = tuple(c for c in custom.ciphers if c.startswith("TLS_"))
        return resolve(tuple(custom.tls_versions), tls12, tls13), lis.at("TLSCipherPolicy")
    given = {d.name: d.args for d in personalized if d.name in ("ssl_protocols", "ssl_ciphers")}
    if given:
        protocols = given.get("ssl_protocols", DEFAULT_PROTOCOLS)
        ciphers = given.get("ssl_ciphers", (DEFAULT_CIPHERS,))[0].split(":")
        return resolve(tuple(protocols), tuple(ciphers)), "ConfigId"
    return default_tls(), lis.at("Protocol")


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
