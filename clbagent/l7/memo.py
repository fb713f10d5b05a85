"""The memo of ``validate`` and ``render``: a command run again on unchanged input answers from the
record of its last run, without parsing, validating or compiling anything.

One record is kept per command line (its arguments and working directory) in the user's cache
directory, ``$XDG_CACHE_HOME/clbagent`` or ``~/.cache/clbagent`` (0700, the user's own). A record
answers only when everything the answer depends on is as it was:

- the code: every file of the clbagent package (its nginx module included), the nginx binary (size
  and time), the Python interpreter, the installed distributions (names and versions);
- the settings file named by ``--settings`` (its bytes);
- the document files (the same list, each one's bytes) and every certificate or key file they
  named, read again through the loader's own checks (:func:`clbagent.reading.read_cert_file`);
- host facts the answer depends on (whether nginx's Lua module is installed);
- the time: the record lapses when a certificate it saw expires or enters its warning window;
- ``render --out``: the prefix holds exactly the files written (contents, modes, no others).

Anything else (no record, changed input, an unusable cache directory) runs the command in full,
which then replaces the record. A full run under the same code and settings still takes from the
record the parse of every document text it has seen before (by the digest of the text): a change
to one file parses one file. A record holds the command's output, the digests of the files read
and written and the parsed documents (as JSON, before certificate files are read into them), never
a private key. ``--no-cache`` runs in full and leaves the record alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import clbagent
from clbagent.nginx.process import NGINX
from clbagent.reading import digest

from .prefix import holds

if TYPE_CHECKING:
    from clbagent.reading import Reading
    from clbagent.validate import DesiredState

FORMAT = 1  # of a record; a record of another format is ignored
KEPT = 32  # records kept (the most recently written): one per command line run


@dataclass
class Run:
    """What a full run notes for its record."""

    reading: Reading  # files read, documents parsed (clbagent.loader.load)
    facts: dict[str, bool] = field(default_factory=dict)  # path -> whether it exists
    until: float | None = None  # POSIX time at which the answer may change by itself
    limits: tuple[int, int] = (0, 0)  # document and certificate file size limits of the settings
    written: dict[str, str] | None = None  # render --out: relative path -> SHA-256 of the content


def add_argument(parser: Any) -> None:
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="run in full even when the input is unchanged since the last run of the same command "
        "line (by default that answers from its record in ~/.cache/clbagent)",
    )


def answer(args: Any, full: Callable[[Run | None], int], out: Path | None = None) -> int:
    """The exit code of the command ``args``: replayed from its record if the record still holds,
    else from ``full`` (given a :class:`Run` to fill, or None when nothing is to be recorded)."""
    try:
        where = None if args.no_cache else _record_path(args)
    except OSError:  # e.g. the working directory is gone: the record cannot be named
        where = None
    if where is None:
        return full(None)
    head = _head(args)
    record = _read(where)
    try:
        if record is not None and _still_holds(record, head, args.paths, out):
            stderr_text, stdout_text, rc = str(record["stderr"]), str(record["stdout"]), int(record["rc"])
            sys.stderr.write(stderr_text)
            sys.stdout.write(stdout_text)
            return rc
    except (KeyError, TypeError, ValueError, AttributeError):  # a damaged record: run in full
        record = None
    from clbagent.reading import Reading

    parsed = record.get("parsed") if record is not None and record["head"] == head else None
    run = Run(Reading(known=parsed if isinstance(parsed, dict) else {}))  # same code and settings
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            rc = full(run)
    finally:
        sys.stderr.write(stderr.getvalue())  # the commands print their issues before the rest
        sys.stdout.write(stdout.getvalue())
    if out is None or run.written is not None:  # not a render whose prefix could not be written
        record = {
            "format": FORMAT,
            "head": head,
            "seen": run.reading.seen,
            "parsed": run.reading.parsed,
            "facts": run.facts,
            "until": run.until,
            "limits": run.limits,
            "written": run.written,
            "stdout": stdout.getvalue(),
            "stderr": stderr.getvalue(),
            "rc": rc,
        }
        _write(where, record)
    return rc


def note_state(run: Run, state: DesiredState) -> None:
    """What the validated ``state`` tells the record: when it lapses, the file size limits."""
    from clbagent.validate.certs import now_utc

    until = state.stable_until(now_utc())
    run.until = None if until is None else until.timestamp()
    run.limits = (state.settings.max_document_bytes, state.settings.cert_file_max_bytes)


def written_digests(files: dict[str, str]) -> dict[str, str]:
    return {rel: digest(text.encode()) for rel, text in files.items()}


def _record_path(args: Any) -> Path | None:
    """The record file of this command line, or None when the cache directory cannot be trusted
    (not the user's own, writable by others) or created."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = Path(base) / "clbagent"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(folder)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        return None
    line = json.dumps([os.getcwd(), _arguments(args)], sort_keys=True)
    return folder / f"{digest(line.encode())[:32]}.json"


def _arguments(args: Any) -> dict[str, str]:
    return {k: repr(v) for k, v in sorted(vars(args).items()) if not callable(v) and k != "no_cache"}


def _head(args: Any) -> str:
    """Digest of the command line, the code, the nginx binary and the settings file."""
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT, os.getcwd(), _arguments(args), sys.version, sys.executable]).encode())
    package = Path(clbagent.__file__).parent
    for folder, dirs, files in os.walk(package):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            path = os.path.join(folder, name)
            h.update(f"\0{os.path.relpath(path, package)}\0".encode())
            with open(path, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    for entry in sys.path:
        if entry.endswith("-packages") and os.path.isdir(entry):
            h.update("\0".join(sorted(n for n in os.listdir(entry) if n.endswith(".dist-info"))).encode())
    try:  # an upgraded nginx may no longer load clbagent's metrics module (render --out names it)
        st = os.stat(NGINX)
        h.update(f"\0nginx {st.st_size} {st.st_mtime_ns}".encode())
    except OSError:
        h.update(b"\0no nginx")
    settings = getattr(args, "settings", None)
    if settings is not None:
        try:
            h.update(Path(settings).read_bytes())
        except OSError as exc:
            h.update(f"unreadable settings: {exc}".encode())
    return h.hexdigest()


def _read(where: Path) -> dict[str, Any] | None:
    try:
        fd = os.open(where, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            return None
        try:
            record = json.loads(f.read())
        except ValueError:
            return None
    return record if isinstance(record, dict) and record.get("format") == FORMAT else None


def _write(where: Path, record: dict[str, Any]) -> None:
    """Replace the record atomically (a concurrent run reads the old one or the new one)."""
    import tempfile  # only a full run writes: a replay does not import it

    try:
        fd, tmp = tempfile.mkstemp(dir=where.parent, prefix=".", suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        os.replace(tmp, where)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    _prune(where.parent)


def _prune(folder: Path) -> None:
    """Remove all but the ``KEPT`` most recent records (command lines differ: temporary paths)."""
    with contextlib.suppress(OSError):
        records = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for old in records[KEPT:]:
            old.unlink()


def _still_holds(record: dict[str, Any], head: str, paths: list[Path], out: Path | None) -> bool:
    """Whether the record answers this run (see the module's description)."""
    if record["head"] != head or (record["until"] is not None and time.time() >= record["until"]):
        return False
    if any(os.path.exists(path) != exists for path, exists in record["facts"].items()):
        return False
    if not _same_files(record["seen"], paths, record["limits"]):
        return False
    return out is None or (record["written"] is not None and holds(out, record["written"]))


def _same_files(seen: list[list[str]], paths: list[Path], limits: list[int]) -> bool:
    """Whether the loader would read exactly what it read when ``seen`` was noted."""
    from clbagent.reading import DocumentError, digest, document_files, read_cert_file, read_document_file, refusal

    doc_limit, cert_limit = limits
    try:
        files = [os.fspath(f) for f in document_files(paths)]
    except (OSError, ValueError):
        return False
    if files != [entry[1] for entry in seen if entry[0] == "doc"]:
        return False
    resolved: dict[str, str] = {}
    folders: dict[tuple[str, str], tuple[Path, Path]] = {}  # thousands of files, a few directories
    for kind, *where, noted in sorted(seen, key=lambda entry: entry[0] != "doc"):  # documents first: cheap
        if kind == "doc":
            try:
                found = digest(read_document_file(Path(where[0]), doc_limit).encode())
            except (DocumentError, OSError, UnicodeDecodeError, ValueError):
                return False  # the reason may differ: a run that met an unreadable file is not replayed
        else:
            name, doc_dir, cert_dir = where
            dirs = folders.get((doc_dir, cert_dir))
            if dirs is None:
                dirs = folders[doc_dir, cert_dir] = (Path(doc_dir), Path(cert_dir))
            try:
                text = read_cert_file(name, *dirs, cert_limit, resolved)
            except DocumentError as exc:
                text = refusal(exc)
            found = digest(text.encode())
        if found != noted:
            return False
    return True
