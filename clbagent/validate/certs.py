"""Certificate format rules (R85-R92): PEM blocks, 64-column bodies, chain order, key match, expiry."""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa

from clbagent.errors import Code, Issue
from clbagent.model import Certificate

KEY_LABELS = ("RSA PRIVATE KEY", "EC PRIVATE KEY", "PRIVATE KEY")
B64_LINE = re.compile(r"^[A-Za-z0-9+/=]+$")
LABEL = re.compile(r"^-----(BEGIN|END) ([A-Z ]{1,40})-----$")
MAX_BLOCKS = 10  # a server certificate and its intermediates
CACHED = 1 << 16  # parsed certificates and checked key pairs kept between validation passes
# A text of well-formed PEM blocks only (64-column base64 bodies, no headers, no blank lines):
# judged in one linear match, the line-by-line analysis runs only when this does not match.
_B64 = "[A-Za-z0-9+/=]"
WELL_FORMED = re.compile(
    rf"(?:-----BEGIN ([A-Z ]{{1,40}})-----\n(?:{_B64}{{64}}\n)*{_B64}{{1,64}}\n-----END \1-----(?:\n(?=-)|\Z))+"
)
BLOCK_LABEL = re.compile(r"-----BEGIN ([A-Z ]{1,40})-----")  # in well-formed text, only at line starts


def _blocks(lines: list[str]) -> tuple[list[tuple[str, list[str]]], bool]:
    """The (label, body lines) of each BEGIN/END block, and whether text lies outside them; one pass."""
    blocks: list[tuple[str, list[str]]] = []
    outside = False
    current: tuple[str, list[str]] | None = None
    for line in lines:
        m = LABEL.match(line)
        if current is None:
            if m and m.group(1) == "BEGIN":
                current = (m.group(2), [])
            elif line.strip():
                outside = True
        elif m and m.group(1) == "END" and m.group(2) == current[0]:
            blocks.append(current)
            current = None
        elif m:
            return [], True  # a block opened inside another, or closed with another label
        else:
            current[1].append(line)
    return blocks, outside or current is not None


def _layout(text: str, labels: tuple[str, ...], what: str) -> list[str]:
    """Problems with the PEM layout of ``text``; empty when every block is well formed. Linear in
    the text: certificates are tenant input."""
    body = text.replace("\r\n", "\n").strip("\n")
    if WELL_FORMED.fullmatch(body):
        found = BLOCK_LABEL.findall(body)
        if len(found) <= MAX_BLOCKS and all(label in labels for label in found):
            return []
    return layout_by_line(body, labels, what)


def layout_by_line(body: str, labels: tuple[str, ...], what: str) -> list[str]:
    """The line-by-line analysis behind ``_layout``, which names each problem."""
    if not body.startswith("-----BEGIN "):
        return [f"{what} must be PEM text starting with a '-----BEGIN ...-----' line"]
    lines = body.split("\n")
    blocks, outside = _blocks(lines)
    if not blocks:
        return [f"{what} has no complete BEGIN/END block"]
    if len(blocks) > MAX_BLOCKS:
        return [f"{what} has more than {MAX_BLOCKS} PEM blocks"]
    problems: list[str] = []
    if outside:
        problems.append(f"{what} has text outside its BEGIN/END blocks")
    elif any(not ln.strip() for ln in lines):
        problems.append(f"{what} must not contain blank lines (not even between chained certificates)")
    for n, (label, block) in enumerate(blocks, 1):
        if label not in labels:
            problems.append(f"{what} block {n} is '{label}', expected {' or '.join(labels)}")
            continue
        body_lines = [ln for ln in block if not ln.startswith(("Proc-Type", "DEK-Info"))]
        if not body_lines or any(not B64_LINE.match(ln) for ln in body_lines if ln):
            problems.append(f"{what} block {n} body is not base64")
        elif any(len(ln) != 64 for ln in body_lines[:-1]) or len(body_lines[-1]) > 64:
            problems.append(f"{what} block {n} body lines must be 64 characters (the last at most 64)")
    return problems


@functools.lru_cache(maxsize=CACHED)
def _chain(text: str) -> tuple[x509.Certificate, ...] | str:
    """The certificates of a PEM text, or why it does not parse; parsed once per distinct text."""
    try:
        return tuple(x509.load_pem_x509_certificates(text.encode()))
    except ValueError as exc:
        return str(exc)


def load_chain(text: str) -> list[x509.Certificate]:
    """The certificates of a PEM text; ``ValueError`` when it does not parse."""
    chain = _chain(text)
    if isinstance(chain, str):
        raise ValueError(chain)
    return list(chain)


def normalized_key(text: str) -> str:
    """The key in the traditional OpenSSL form (what ``openssl rsa`` writes), PKCS#8 included."""
    key = serialization.load_pem_private_key(text.encode(), password=None)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()


def check_certificate(cert: Certificate, root: str, now: datetime, warn_days: int) -> list[Issue]:
    """All format problems of one certificate object, plus expiry warnings."""
    out: list[Issue] = []
    at = f"{root}/{cert.at('CertContent')}"
    if cert.cert_content is None:
        return [Issue(at, Code.MISSING_PARAMETER, "certificate content is required (CertContent or CertFile)")]
    problems = _layout(cert.cert_content, ("CERTIFICATE",), "certificate")
    if problems:
        return [Issue(at, Code.FORMAT_ERROR, p) for p in problems]
    try:
        chain = load_chain(cert.cert_content)
    except ValueError as exc:
        return [Issue(at, Code.FORMAT_ERROR, f"certificate does not parse: {exc}")]
    for i in range(len(chain) - 1):
        if chain[i].issuer != chain[i + 1].subject:
            out.append(
                Issue(
                    at,
                    Code.FORMAT_ERROR,
                    (
                        f"chain order: certificate {i + 1} was not issued by certificate {i + 2}; "
                        "put the server certificate first, then its intermediates"
                    ),
                )
            )
            break
    leaf = chain[0]
    ends = leaf.not_valid_after_utc
    if ends < now:
        out.append(Issue(at, Code.FORMAT_ERROR, f"certificate expired on {ends:%Y-%m-%d}", "warning"))
    elif ends < now + timedelta(days=warn_days):
        out.append(Issue(at, Code.FORMAT_ERROR, f"certificate expires on {ends:%Y-%m-%d}", "warning"))
    if cert.cert_type == "SVR":
        out.extend(_check_key(cert, leaf, root))
    if cert.cert_algorithm == "sm2" and not (cert.sign_cert and cert.sign_cert_private_key):
        out.append(
            Issue(
                f"{root}/{cert.at('SignCert')}",
                Code.MISSING_PARAMETER,
                "an SM2 certificate needs both its signing certificate and signing key",
            )
        )
    return out


def _check_key(cert: Certificate, leaf: x509.Certificate, root: str) -> list[Issue]:
    at = f"{root}/{cert.at('CertKey')}"
    if not cert.cert_key:
        return [Issue(at, Code.MISSING_PARAMETER, "a server certificate needs its private key (CertKey)")]
    problems = _layout(cert.cert_key, KEY_LABELS, "private key")
    if problems:
        return [Issue(at, Code.FORMAT_ERROR, p) for p in problems]
    if "ENCRYPTED" in cert.cert_key:
        return [Issue(at, Code.FORMAT_ERROR, "encrypted private keys are not accepted; remove the passphrase")]
    spki = leaf.public_key().public_bytes(serialization.Encoding.DER, SPKI)
    problem = key_problem(cert.cert_key, spki)
    return [Issue(at, Code.FORMAT_ERROR, problem)] if problem else []


SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


@functools.lru_cache(maxsize=CACHED)
def key_problem(key_pem: str, leaf_spki: bytes) -> str | None:
    """Why the key cannot serve the certificate whose public key is ``leaf_spki`` (DER), or None.
    Cached: the same pair is checked on every validation pass, and parsing an RSA key is the
    slowest step of validation."""
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None, unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError) as exc:
        return f"private key does not parse: {exc}"
    if key.public_key().public_bytes(serialization.Encoding.DER, SPKI) != leaf_spki:
        return "private key does not match the certificate"
    return None


def now_utc() -> datetime:
    return datetime.now(UTC)


WEAK_HASHES = (hashes.SHA1, hashes.MD5)
MIN_BITS = {rsa.RSAPublicKey: 2048, dsa.DSAPublicKey: 2048, ec.EllipticCurvePublicKey: 224}


@functools.lru_cache(maxsize=CACHED)
def weak_leaf(pem: str) -> str | None:
    """Why OpenSSL at its normal security level (Debian: level 2) refuses to serve this leaf
    certificate, or None: a key under 112 bits of strength or a SHA-1/MD5 signature."""
    try:
        leaf = load_chain(pem)[0]
    except ValueError:
        return None  # reported by check_certificate
    key = leaf.public_key()
    for kind, bits in MIN_BITS.items():
        if isinstance(key, kind) and key.key_size < bits:
            return f"its {key.key_size}-bit key is weaker than {bits} bits"
    algorithm = leaf.signature_hash_algorithm
    if isinstance(algorithm, WEAK_HASHES):
        return f"it is signed with {algorithm.name.upper()}"
    return None
