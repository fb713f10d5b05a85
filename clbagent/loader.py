"""Reading desired-state documents from files and directories (YAML or JSON).

Every document comes from a tenant, so reading is bounded before anything else looks at it: file
size, YAML alias expansion, nesting depth, list and string lengths, integer size (see
:func:`check_bounds`). Certificate files named by ``CertFile``/``CertKeyFile`` are read here, only
from inside the certificate directory (:func:`clbagent.reading.read_cert_file`), so that everything
after loading works on data only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import yaml

from clbagent.errors import Code, Issue
from clbagent.reading import (
    SUFFIXES,
    DocumentError,
    Reading,
    Seen,
    digest,
    document_files,
    read_bounded,
    read_cert_file,
    read_document_file,
    refusal,
    shown,
)

if TYPE_CHECKING:  # imported when needed: the settings need pydantic
    from clbagent.settings import Settings

__all__ = [  # the file readers are clbagent.reading's, named here too for the loader's users
    "SUFFIXES",
    "DocumentError",
    "Reading",
    "Seen",
    "digest",
    "document_files",
    "load",
    "parse_problem",
    "parse_text",
    "read_bounded",
    "read_cert_file",
    "read_cert_files",
    "read_document_file",
    "read_documents",
    "refusal",
    "shown",
]

SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster than pure Python
INT_LIMIT = 1 << 63


NO_KEY = object()  # a mapping waiting for its next key


class _YamlBuilder:
    """Plain data straight from libyaml's event stream, bounded as it goes.

    One pass does what a bounded load needs: nesting depth and alias expansion are counted on the
    events (libyaml's own composer recurses and crashes on deep input), and documents without
    anchors or tags (the usual case) are built here, several times faster than PyYAML's Python
    constructor. Plain scalars are resolved with PyYAML's own YAML 1.1 rules."""

    CONSTRUCTOR = yaml.constructor.SafeConstructor()
    RESOLVERS = yaml.resolver.Resolver.yaml_implicit_resolvers
    STR = "tag:yaml.org,2002:str"
    RESOLVED: ClassVar[dict[str, Any]] = {}  # plain scalar -> its (immutable) value

    def __init__(self, settings: Settings):
        self.settings = settings
        self.plain = True
        self.depth = 0
        self.expanded = 0
        self.sizes: dict[str, int] = {}
        self.stack: list[tuple[Any, str | None, int]] = []  # container, anchor, expanded at its start
        self.keys: list[Any] = []  # for each open mapping: its pending key (or a marker)
        self.docs: list[Any] = []

    def run(self, text: str) -> list[Any] | None:
        """The documents, or None when they must be built by the full loader (bounds still hold)."""
        limit = self.settings.max_document_nodes
        scalar_event, add, scalar = yaml.ScalarEvent, self.add, self.scalar
        starts = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
        ends = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
        for event in yaml.parse(text, Loader=SafeLoader):
            kind = type(event)
            if kind is scalar_event:
                self.expanded += 1
                if event.anchor:
                    self.sizes[event.anchor] = 1
                    self.plain = False
                if self.plain:
                    add(scalar(event))
            elif kind in starts:
                self.open(event)
            elif kind in ends:
                self.close()
            elif kind is yaml.AliasEvent:
                self.expanded += self.sizes.get(event.anchor or "", 1)
                self.plain = False
            if self.expanded > limit:
                raise DocumentError(f"more than {limit} values (YAML aliases expanded)")
        return self.docs if self.plain else None

    def open(self, event: Any) -> None:
        self.expanded += 1
        self.depth += 1
        if self.depth > self.settings.max_document_depth:
            raise DocumentError(f"nested deeper than {self.settings.max_document_depth} levels")
        if event.anchor or (event.tag is not None and not event.implicit):
            self.plain = False
        self.stack.append(({} if isinstance(event, yaml.MappingStartEvent) else [], event.anchor, self.expanded))
        self.keys.append(NO_KEY)

    def close(self) -> None:
        self.depth -= 1
        container, anchor, start = self.stack.pop()
        self.keys.pop()
        if anchor:
            self.sizes[anchor] = self.expanded - start + 1
        if isinstance(container, list) and len(container) > self.settings.max_list_length:
            raise DocumentError(f"a list holds more than {self.settings.max_list_length} items")
        if self.plain:
            self.add(container)

    def add(self, value: Any) -> None:
        stack = self.stack
        if not stack:
            if value is not None:
                self.docs.append(value)
            return
        container = stack[-1][0]
        if type(container) is list:
            container.append(value)
            return
        key = self.keys[-1]
        if key is NO_KEY:
            if type(value) is not str or value == "<<":
                self.plain = False  # a complex or merge key: the full loader and check_bounds judge it
            self.keys[-1] = value
        else:
            container[key] = value
            self.keys[-1] = NO_KEY

    def scalar(self, event: Any) -> Any:
        value = event.value
        plain = not event.style and event.implicit[0]
        if plain and event.tag is None:
            known = self.RESOLVED.get(value, NO_KEY)  # short ASCII plain scalars repeat (keys, ports)
            if known is not NO_KEY:
                return known
        if len(value) > self.settings.max_string_length:
            raise DocumentError(f"a string is longer than {self.settings.max_string_length} characters")
        if not value.isascii():
            _check_string(value, "", self.settings)
        if event.tag is not None and event.tag != "!":
            self.plain = False
            return None
        if not plain:  # quoted or block: a string
            return value
        tag = next((t for t, regexp in self.RESOLVERS.get(value[:1], ()) if regexp.match(value)), self.STR)
        if tag == self.STR:
            out: Any = value
        else:
            construct = self.CONSTRUCTOR.yaml_constructors.get(tag)
            if construct is None or tag.endswith((":merge", ":value", ":timestamp")):
                self.plain = False
                return None
            out = construct(self.CONSTRUCTOR, yaml.ScalarNode(tag, value))
            if isinstance(out, int) and not isinstance(out, bool) and not -INT_LIMIT <= out < INT_LIMIT:
                raise DocumentError("an integer is out of the 64-bit range")
        if len(value) <= 64 and value.isascii() and len(self.RESOLVED) < 65536:
            self.RESOLVED[value] = out
        return out


def parse_text(
    text: str, source: str, settings: Settings | None = None, reading: Reading | None = None
) -> list[tuple[str, Any]]:
    """Documents in one text: JSON, or YAML with one or more ``---`` separated documents.
    Raises :class:`DocumentError` for input outside the bounds, ``ValueError``/``yaml.YAMLError``
    for text that does not parse. ``reading``: parses of earlier loads to reuse, and where to note
    this one's (plain data, so JSON holds it exactly)."""
    settings = settings or _defaults()
    if reading is None:
        found = _parse(text, source, settings)
    else:
        key = digest(f"{source.endswith('.json')}\0{text}".encode())
        before = reading.known.get(key)
        found = _parse(text, source, settings) if before is None else json.loads(before)
        if "PRIVATE KEY" not in text:  # noted parses are kept on disk: never one with a key written inline
            reading.parsed[key] = before or json.dumps(found, allow_nan=True)
    if len(found) > settings.max_documents_per_file:
        raise DocumentError(f"more than {settings.max_documents_per_file} documents in one file")
    if len(found) == 1:
        return [(source, found[0])]
    return [(f"{source}#{i + 1}", d) for i, d in enumerate(found)]


def _parse(text: str, source: str, settings: Settings) -> list[Any]:
    if source.endswith(".json"):
        try:
            found = [json.loads(text)]
        except RecursionError:
            raise DocumentError(f"nested deeper than {settings.max_document_depth} levels") from None
        check_bounds(found[0], settings)
    else:
        built = _YamlBuilder(settings).run(text)
        if built is None:  # anchors, tags or merge keys: PyYAML builds it, bounded above and here
            built = [d for d in yaml.load_all(text, Loader=SafeLoader) if d is not None]
            for data in built:
                check_bounds(data, settings)
        found = built
    return found


def parse_problem(exc: Exception) -> str:
    """What is wrong with a text that does not parse, without quoting the text (it may hold a key)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} (line {exc.lineno}, column {exc.colno})"
    if "integer string conversion" in str(exc):
        return "an integer has too many digits"
    return type(exc).__name__


def check_bounds(data: Any, settings: Settings) -> None:
    """Refuse data outside the limits; iterative, so depth cannot exhaust the stack, and linear in
    the expanded size (aliases were bounded before)."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    nodes = 0
    while stack:
        node, where, depth = stack.pop()
        nodes += 1
        if nodes > settings.max_document_nodes:
            raise DocumentError(f"more than {settings.max_document_nodes} values")
        if depth > settings.max_document_depth:
            raise DocumentError(f"nested deeper than {settings.max_document_depth} levels", where)
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, str):
                    raise DocumentError("mapping keys must be strings", where, Code.FORMAT_ERROR)
                _check_string(key, where, settings)
                stack.append((value, f"{where}/{key}" if where else key, depth + 1))
        elif isinstance(node, list):
            if len(node) > settings.max_list_length:
                raise DocumentError(f"a list holds more than {settings.max_list_length} items", where)
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(node))
        elif isinstance(node, str):
            _check_string(node, where, settings)
        elif isinstance(node, bool) or node is None:
            continue
        elif isinstance(node, int):
            if not -INT_LIMIT <= node < INT_LIMIT:
                raise DocumentError("an integer is out of the 64-bit range", where)
        elif isinstance(node, float):
            continue
        else:
            raise DocumentError(f"a value of type {type(node).__name__} is not plain data", where, Code.FORMAT_ERROR)


def _check_string(text: str, where: str, settings: Settings) -> None:
    if len(text) > settings.max_string_length:
        raise DocumentError(f"a string is longer than {settings.max_string_length} characters", where)
    try:
        text.encode()
    except UnicodeEncodeError:
        raise DocumentError("a string holds a lone surrogate (not a character)", where, Code.FORMAT_ERROR) from None


def read_cert_files(
    raw: Any,
    doc_dir: Path,
    cert_dir: Path,
    source: str,
    settings: Settings,
    resolved: dict[str, str] | None = None,
    seen: Seen | None = None,
) -> list[Issue]:
    """Fill ``CertContent``/``CertKey`` of a raw document from the files it names, inside ``cert_dir``.
    ``seen``: where each read and its outcome are noted (see :func:`load`)."""
    issues: list[Issue] = []
    certs = raw.get("Certificates") if isinstance(raw, dict) else None
    if not isinstance(certs, list):
        return issues
    for i, cert in enumerate(certs):
        if not isinstance(cert, dict):
            continue
        for file_key, content_key in (("CertFile", "CertContent"), ("CertKeyFile", "CertKey")):
            name = cert.get(file_key)
            if not isinstance(name, str) or content_key in cert:
                continue
            try:
                text = cert[content_key] = read_cert_file(
                    name, doc_dir, cert_dir, settings.cert_file_max_bytes, resolved
                )
            except DocumentError as exc:
                issues.append(Issue(f"{source}/Certificates[{i}]/{file_key}", exc.code, str(exc)))
                text = refusal(exc)
            if seen is not None:
                seen.append(("cert", name, os.fspath(doc_dir), os.fspath(cert_dir), digest(text.encode())))
    return issues


def load(
    paths: list[Path], cert_dir: Path | None = None, settings: Settings | None = None, reading: Reading | None = None
) -> tuple[list[tuple[str, Any]], list[Issue]]:
    """Raw documents from paths, plus issues for files that cannot be read or parsed.

    ``cert_dir`` (else ``settings.cert_dir``, else each document's own directory) is the only
    directory ``CertFile``/``CertKeyFile`` may be read from. ``reading``: what a later load can use
    (see :class:`Reading`)."""
    settings = settings or _defaults()
    docs: list[tuple[str, Any]] = []
    issues: list[Issue] = []
    resolved: dict[str, str] = {}
    try:
        files = document_files(paths)
    except (OSError, ValueError) as exc:
        return [], [Issue("(arguments)", Code.RESOURCE_NOT_FOUND, f"cannot list the documents: {exc}")]
    for f in files:
        source = shown(f)
        try:
            text = read_document_file(f, settings.max_document_bytes)
        except DocumentError as exc:
            issues.append(Issue(source, exc.code, f"document refused: {exc}"))
            text = None
        except (OSError, UnicodeDecodeError, ValueError) as exc:  # ValueError: a NUL in the name
            why = getattr(exc, "strerror", None) or ("not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else exc)
            issues.append(Issue(source, Code.RESOURCE_NOT_FOUND, f"cannot read the file: {why}"))
            text = None
        if reading is not None:
            reading.seen.append(("doc", os.fspath(f), digest(text.encode()) if text is not None else "unreadable"))
        if text is None:
            continue
        found, refused = read_documents(text, source, settings, reading)
        issues.extend(refused)
        allowed = cert_dir or settings.cert_dir or f.parent
        for src, raw in found:
            seen = None if reading is None else reading.seen
            issues.extend(read_cert_files(raw, f.parent, allowed, src, settings, resolved, seen))
            docs.append((src, raw))
    return docs, issues


def read_documents(
    text: str, source: str, settings: Settings, reading: Reading | None = None
) -> tuple[list[tuple[str, Any]], list[Issue]]:
    """The documents of one text, or the issue that keeps it from being read (whatever the text's
    origin: a file, an etcd value)."""
    try:
        return parse_text(text, source, settings, reading), []
    except DocumentError as exc:
        where = f"{source}/{exc.where}" if exc.where else source
        return [], [Issue(where, exc.code, f"document refused: {exc}")]
    except (yaml.YAMLError, ValueError) as exc:
        return [], [Issue(source, Code.FORMAT_ERROR, f"not valid YAML/JSON: {parse_problem(exc)}")]


def _defaults() -> Settings:
    from clbagent.settings import DEFAULT_SETTINGS

    return DEFAULT_SETTINGS
