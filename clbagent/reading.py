"""Reading the files of a desired state, bounded and confined: document files, and the certificate
and key files they name (only from inside the certificate directory). No parsing here: this is
what a check that nothing changed needs (see :mod:`clbagent.l7.memo`), without loading YAML.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from clbagent.errors import Code

SUFFIXES = (".yaml", ".yml", ".json")


class DocumentError(ValueError):
    """A document or file refused before validation: too large, too deep, or not plain data."""

    def __init__(self, message: str, where: str = "", code: Code = Code.LIMIT_EXCEEDED):
        super().__init__(message)
        self.where = where
        self.code = code


def shown(path: Path | str) -> str:
    """A file name safe to print on one line: undecodable bytes and control characters become escapes."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def document_files(paths: list[Path]) -> list[Path]:
    """Files to read: the given files, and every YAML/JSON file under given directories, sorted."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix in SUFFIXES and f.is_file()))
        else:
            out.append(p)
    return out


def read_bounded(path: Path | str, limit: int, follow: bool = True) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (a FIFO or device is refused, not read)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DocumentError("not a regular file", code=Code.INVALID_PARAMETER)
        if info.st_size > limit:
            raise DocumentError(f"larger than {limit} bytes")
        chunks = [os.read(fd, min(info.st_size, limit) + 1)]  # all of a file that holds still
        total = len(chunks[0])
        while chunks[-1] and total <= limit:  # a file that grew since fstat
            chunks.append(os.read(fd, min(1 << 16, limit + 1 - total)))
            total += len(chunks[-1])
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise DocumentError(f"larger than {limit} bytes")
    return data


def read_cert_file(name: str, doc_dir: Path, cert_dir: Path, limit: int, resolved: dict[str, str] | None = None) -> str:
    """The text of a certificate or key file named in a document, read only from inside ``cert_dir``.

    The name is taken relative to the document's directory and resolved (symlinks included); it
    must stay inside the resolved ``cert_dir``. The result is opened without following a symlink
    and must be a regular file of at most ``limit`` bytes. A name outside ``cert_dir`` gets the same
    answer whether or not it exists. ``resolved`` remembers resolved directories for the files of
    one load (thousands of certificates usually sit in one or two directories)."""
    memo = {} if resolved is None else resolved
    root = _real(os.fspath(cert_dir), memo)
    target = "" if "\0" in name else _real_name(_real(os.fspath(doc_dir), memo), name, memo)
    if not target.startswith(root.rstrip("/") + "/"):
        raise DocumentError(
            f"must name a file inside the certificate directory {shown(root)}", code=Code.INVALID_PARAMETER
        )
    try:
        data = read_bounded(target, limit, follow=False)
    except OSError as exc:
        raise DocumentError(f"cannot read {shown(name)}: {exc.strerror}", code=Code.RESOURCE_NOT_FOUND) from None
    except DocumentError as exc:
        raise DocumentError(f"{shown(name)} is refused: {exc}", code=exc.code) from None
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise DocumentError(f"{shown(name)} is not PEM text (ASCII)", code=Code.FORMAT_ERROR) from None


def _real(path: str, memo: dict[str, str]) -> str:
    found = memo.get(path)
    if found is None:
        found = memo[path] = os.path.realpath(path)
    return found


def _real_name(doc_dir: str, name: str, memo: dict[str, str]) -> str:
    """``doc_dir/name`` resolved like ``os.path.realpath``: the directory part through ``memo``,
    the last part itself unless it is a symlink or a dot name (then the whole path is resolved)."""
    full = os.path.join(doc_dir, name)
    head, last = os.path.split(full)
    if last in ("", ".", ".."):
        return os.path.realpath(full)
    target = os.path.join(_real(head, memo), last)
    return os.path.realpath(full) if os.path.islink(target) else target


Seen = list[tuple[str, ...]]  # ("doc", path, digest) and ("cert", name, doc_dir, cert_dir, digest)


@dataclass
class Reading:
    """What one load notes for a later one (see :mod:`clbagent.l7.memo`): every file read with a
    digest of what was read (or of why it could not be), in order; and the documents of each text
    parsed, as JSON by the digest of the text, so that a later load does not parse it again
    (``known``: those of an earlier load, under the same code and settings)."""

    seen: Seen = field(default_factory=list)
    known: dict[str, str] = field(default_factory=dict)
    parsed: dict[str, str] = field(default_factory=dict)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def refusal(exc: DocumentError) -> str:
    """A refused certificate file as noted in ``seen``: the same refusal gives the same digest."""
    return f"refused: {exc.code} {exc}"


def read_document_file(path: Path, limit: int) -> str:
    """The text of one document file; :class:`DocumentError` (bounds) or ``OSError``,
    ``UnicodeDecodeError``, ``ValueError`` when it cannot be read."""
    return read_bounded(path, limit).decode()
