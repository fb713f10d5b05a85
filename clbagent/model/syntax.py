"""Syntax of user text that ends up in nginx configuration: domains, URLs, health-check paths.

These checks are the first of two guards (the second is the single quoting function of the
renderer): only the documented character sets get through, so user text can never open a block,
end a directive or interpolate an nginx variable where it is not meant to.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationInfo
from pydantic_core import PydanticCustomError

from clbagent.errors import Code
from clbagent.model.regex import RegexError, check_regex
from clbagent.settings import DEFAULT_SETTINGS, Settings

# Characters the documents forbid inside a regex domain or URL (T1419, T1992, T2029). The
# backslash of the raw lists is allowed: the documents' own example `~*\.(gif|jpg|bmp)$` needs it,
# and the renderer escapes it.
REGEX_FORBIDDEN = set("\"{};'` ~") | {chr(c) for c in range(0x20)} | {"\x7f"}
URL_PLAIN = re.compile(r"^/[A-Za-z0-9._/=?-]*$")
HEALTH_PATH = re.compile(r"^/[A-Za-z0-9._/=?-]*$")
HEALTH_DOMAIN = re.compile(r"^[a-z0-9._-]+$")
LABEL = re.compile(r"^[a-z0-9_-]+$")

DomainKind = Literal["exact", "wildcard_head", "wildcard_tail", "regex"]
UrlKind = Literal["exact", "prefix_stop", "regex", "regex_nocase", "prefix"]


def settings_of(info: ValidationInfo | None) -> Settings:
    ctx = info.context if info is not None else None
    if isinstance(ctx, dict) and isinstance(ctx.get("settings"), Settings):
        return ctx["settings"]
    return DEFAULT_SETTINGS


def fail(code: Code, message: str, **ctx: Any) -> PydanticCustomError:
    return PydanticCustomError(code.value, message, ctx or None)


@dataclass(frozen=True)
class Domain:
    kind: DomainKind
    text: str  # the full value as written, e.g. "*.example.com" or "~^www\d+\.example\.com$"


@dataclass(frozen=True)
class Url:
    kind: UrlKind
    pattern: str  # without the modifier

    @property
    def is_regex(self) -> bool:
        return self.kind in ("regex", "regex_nocase")

    @property
    def modifier(self) -> str:
        return {"exact": "=", "prefix_stop": "^~", "regex": "~", "regex_nocase": "~*", "prefix": ""}[self.kind]


def _check_regex(pattern: str, what: str, caseless: bool) -> None:
    if not pattern:
        raise fail(Code.FORMAT_ERROR, f"{what} regex is empty after its '~' marker")
    bad = sorted({c for c in pattern if c in REGEX_FORBIDDEN})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise fail(Code.FORMAT_ERROR, f"{what} regex contains forbidden characters: {shown}")
    if not pattern.isascii():
        raise fail(Code.FORMAT_ERROR, f"{what} regex must be ASCII")
    try:
        check_regex(pattern, caseless)
    except RegexError as exc:
        raise fail(Code.FORMAT_ERROR, f"{what} regex is refused: {exc}") from None


def parse_domain(value: str, settings: Settings = DEFAULT_SETTINGS) -> Domain:
    """Classify a rule domain (exact, one-`*` wildcard, or `~` regex) or raise a CLB error.
    nginx matches server_name regexes caselessly."""
    return _parse_domain(value, settings.domain_max_length, settings.domain_allow_underscore)


@functools.lru_cache(maxsize=65536)
def _parse_domain(value: str, max_length: int, allow_underscore: bool) -> Domain:
    if not 1 <= len(value) <= max_length:
        raise fail(Code.LENGTH, f"domain must be 1-{max_length} characters long")
    if value.startswith("~"):
        _check_regex(value[1:], "domain", caseless=True)
        return Domain("regex", value)
    if value != value.lower():
        raise fail(Code.FORMAT_ERROR, "domain must be lower case (only a-z, 0-9, '.', '-' are allowed)")
    if value.count("*") > 1:
        raise fail(Code.FORMAT_ERROR, "domain may contain '*' at most once")
    kind: DomainKind = "exact"
    body = value
    if value.startswith("*."):
        kind, body = "wildcard_head", value[2:]
    elif value.endswith(".*"):
        kind, body = "wildcard_tail", value[:-2]
    elif "*" in value:
        raise fail(Code.FORMAT_ERROR, "a wildcard domain must be '*.example.com' or 'www.example.*'")
    labels = body.split(".")
    allowed = "a-z, 0-9, '.', '-'" + (", '_'" if allow_underscore else "")
    for label in labels:
        if not label:
            raise fail(Code.FORMAT_ERROR, "domain has an empty label (two dots, or a leading/trailing dot)")
        if not LABEL.match(label) or (not allow_underscore and "_" in label):
            raise fail(Code.FORMAT_ERROR, f"domain may only contain {allowed}")
    return Domain(kind, value)


def parse_url(value: str, settings: Settings = DEFAULT_SETTINGS) -> Url:
    """Classify a rule URL by its nginx location modifier (`=`, `^~`, `~`, `~*`, prefix)."""
    return _parse_url(value, settings.url_max_length)


@functools.lru_cache(maxsize=65536)
def _parse_url(value: str, max_length: int) -> Url:
    if not 1 <= len(value) <= max_length:
        raise fail(Code.LENGTH, f"URL must be 1-{max_length} characters long")
    for mark, kind in (("^~", "prefix_stop"), ("~*", "regex_nocase"), ("~", "regex"), ("=", "exact")):
        if value.startswith(mark):
            rest = value[len(mark) :]
            if kind in ("regex", "regex_nocase"):
                _check_regex(rest, "URL", caseless=kind == "regex_nocase")
            else:
                _check_plain_url(rest)
            return Url(kind, rest)  # type: ignore[arg-type]
    _check_plain_url(value)
    return Url("prefix", value)


def _check_plain_url(path: str) -> None:
    if not path.startswith("/"):
        raise fail(Code.FORMAT_ERROR, "URL must start with '/' (after an optional '=' or '^~')")
    if not URL_PLAIN.match(path):
        raise fail(Code.FORMAT_ERROR, "URL may only contain A-Z, a-z, 0-9, '.', '-', '_', '/', '=', '?'")


def check_health_path(value: str, settings: Settings = DEFAULT_SETTINGS) -> str:
    if not 1 <= len(value) <= settings.health_path_max_length:
        raise fail(Code.LENGTH, f"health-check path must be 1-{settings.health_path_max_length} characters")
    if not HEALTH_PATH.match(value):
        raise fail(
            Code.FORMAT_ERROR,
            "health-check path must start with '/' and use only A-Z, a-z, 0-9, '.', '-', '_', '/', '=', '?'",
        )
    return value


def check_health_domain(value: str, settings: Settings = DEFAULT_SETTINGS) -> str:
    if not 1 <= len(value) <= settings.health_domain_max_length:
        raise fail(Code.LENGTH, f"health-check domain must be 1-{settings.health_domain_max_length} characters")
    if not HEALTH_DOMAIN.match(value) or ".." in value:
        raise fail(
            Code.FORMAT_ERROR,
            "health-check domain must be a fixed name of a-z, 0-9, '.', '-', '_' (no wildcard, no regex)",
        )
    return value


def check_visible_ascii(value: str, what: str, max_len: int) -> str:
    if len(value) > max_len:
        raise fail(Code.LENGTH, f"{what} must be at most {max_len} characters")
    if not all(0x21 <= ord(c) <= 0x7E for c in value):
        raise fail(Code.FORMAT_ERROR, f"{what} must contain visible ASCII characters only")
    return value
