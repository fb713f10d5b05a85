#!/usr/bin/env python3
"""Regenerate the certificates under fixtures/certs (a CA, server certificates, a client CA).

They are committed so the examples are stable; run this only to replace them.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

OUT = Path(__file__).resolve().parent.parent / "fixtures" / "certs"
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
END = dt.datetime(2125, 1, 1, tzinfo=dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, key, issuer, issuer_key, ca: bool, sans: list[str]) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(START)
        .not_valid_after(END)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key(key, pkcs8: bool = False) -> bytes:
    fmt = serialization.PrivateFormat.PKCS8 if pkcs8 else serialization.PrivateFormat.TraditionalOpenSSL
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = _cert("clbagent example CA", ca_key, "clbagent example CA", ca_key, True, [])
    (OUT / "ca.crt").write_bytes(_pem(ca))
    for name, sans in (
        ("www.example.com", ["www.example.com", "example.com"]),
        ("wildcard.example.net", ["*.example.net"]),
    ):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (OUT / f"{name}.crt").write_bytes(_pem(_cert(name, key, "clbagent example CA", ca_key, False, sans)))
        (OUT / f"{name}.key").write_bytes(_key(key))
    ekey = ec.generate_private_key(ec.SECP256R1())
    (OUT / "ecc.example.com.crt").write_bytes(
        _pem(_cert("ecc.example.com", ekey, "clbagent example CA", ca_key, False, ["ecc.example.com"]))
    )
    (OUT / "ecc.example.com.key").write_bytes(_key(ekey, pkcs8=True))
    client_ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    client_ca = _cert("clbagent client CA", client_ca_key, "clbagent client CA", client_ca_key, True, [])
    (OUT / "client-ca.crt").write_bytes(_pem(client_ca))
    return 0


if __name__ == "__main__":
    sys.exit(main())
