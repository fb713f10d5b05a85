"""Reading desired-state documents from files and directories (YAML or JSON).

Certificate files named by ``CertFile``/``CertKeyFile`` are read here, relative to the document,
so that everything after loading works on data only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from clbagent.errors import Code, Issue

SUFFIXES = (".yaml", ".yml", ".json")


def document_files(paths: list[Path]) -> list[Path]:
    """Files to read: the given files, and every YAML/JSON file under given directories, sorted."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix in SUFFIXES and f.is_file()))
        else:
            out.append(p)
    return out


def parse_text(text: str, source: str) -> list[tuple[str, Any]]:
    """Documents in one text: JSON, or YAML with one or more ``---`` separated documents."""
    if source.endswith(".json"):
        return [(source, json.loads(text))]
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    if len(docs) == 1:
        return [(source, docs[0])]
    return [(f"{source}#{i + 1}", d) for i, d in enumerate(docs)]


def _read_cert_files(raw: Any, base: Path, source: str) -> list[Issue]:
    issues: list[Issue] = []
    certs = raw.get("Certificates") if isinstance(raw, dict) else None
    if not isinstance(certs, list):
        return issues
    for i, cert in enumerate(certs):
        if not isinstance(cert, dict):
            continue
        for file_key, content_key in (("CertFile", "CertContent"), ("CertKeyFile", "CertKey")):
            name = cert.get(file_key)
            if not isinstance(name, str):
                continue
            path = base / name
            try:
                cert.setdefault(content_key, path.read_text())
            except (OSError, UnicodeDecodeError) as exc:
                issues.append(
                    Issue(
                        f"{source}/Certificates[{i}]/{file_key}",
                        Code.RESOURCE_NOT_FOUND,
                        f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}",
                    )
                )
    return issues


def load(paths: list[Path]) -> tuple[list[tuple[str, Any]], list[Issue]]:
    """Raw documents from paths, plus issues for files that cannot be read or parsed."""
    docs: list[tuple[str, Any]] = []
    issues: list[Issue] = []
    for f in document_files(paths):
        source = str(f)
        try:
            found = parse_text(f.read_text(), source)
        except (OSError, UnicodeDecodeError) as exc:
            issues.append(Issue(source, Code.RESOURCE_NOT_FOUND, f"cannot read the file: {exc}"))
            continue
        except (yaml.YAMLError, json.JSONDecodeError) as exc:
            issues.append(Issue(source, Code.FORMAT_ERROR, f"not valid YAML/JSON: {' '.join(str(exc).split())}"))
            continue
        for src, raw in found:
            issues.extend(_read_cert_files(raw, f.parent, src))
            docs.append((src, raw))
    return docs, issues
