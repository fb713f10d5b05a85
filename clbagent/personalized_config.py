"""Personalized configuration: parse the text, allow only the documented directives and ranges.

The text is tokenised with crossplane's nginx lexer and kept as (directive, args) pairs; the
renderer writes those pairs back through its quoting function, so the original text is never
pasted into a configuration file (T1909-T1972, R111-R119).
"""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Callable
from dataclasses import dataclass

from crossplane.errors import NgxParserSyntaxError
from crossplane.lexer import _balance_braces, _lex_file_object

from clbagent.errors import Code
from clbagent.tls_policies import CIPHER_TOKENS, FORCED_OFF

MAX_BYTES = 64 * 1024
DEFAULT_PROXY_BUFFERS = ("8", "4k")  # nginx's defaults on a 4 KiB-page host
DEFAULT_PROXY_BUFFER_SIZE = "4k"
REPEATABLE = frozenset({"add_header", "more_set_headers", "proxy_set_header", "error_page"})
PROXY_SET_HEADER = {
    "X-Real-Port": "$remote_port",
    "X-clb-stgw-vip": "$server_addr",
    "Stgw-request-id": "$stgw_request_id",
    "X-Forwarded-Port": "$vport",
    "X-Method": "$request_method",
    "X-Uri": "$uri",
    "X-clb-lbid": "$lbid",  # C20: named in the description column only; accepted
}
HEADER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
HEADER_VALUE = re.compile(r"^[\x20-\x7e]{0,512}$")
ERROR_URI = re.compile(r"^/[A-Za-z0-9._/=?-]*$")


@dataclass(frozen=True)
class Directive:
    name: str
    args: tuple[str, ...]


class ConfigError(ValueError):
    def __init__(self, code: Code, message: str):
        self.code = code
        super().__init__(message)


def _number(value: str, unit: str, low: int, high: int, name: str) -> int:
    """Parse ``60s``/``4k``/``60M`` (the unit may be omitted for seconds) and check the range."""
    m = re.fullmatch(
        rf"([0-9]{{1,9}})({unit})?", value, re.I if unit in ("k", "M") else 0
    )  # nginx: 4k/4K, 60m/60M; seconds only as "s"; ASCII digits only (nginx reads no others)
    if not m or (m.group(2) is None and unit != "s"):
        shown = f"{low}-{high}{unit}"
        raise ConfigError(Code.FORMAT_ERROR, f"{name} takes a value like {high}{unit}, in {shown}, not {value!r}")
    n = int(m.group(1))
    if not low <= n <= high:
        raise ConfigError(Code.RANGE, f"{name} must be {low}-{high}{unit}, not {value}")
    return n


def _range(unit: str, low: int, high: int) -> Callable[[str, tuple[str, ...]], None]:
    def check(name: str, args: tuple[str, ...]) -> None:
        _arity(name, args, 1)
        _number(args[0], unit, low, high, name)

    return check


def _arity(name: str, args: tuple[str, ...], n: int) -> None:
    if len(args) != n:
        raise ConfigError(Code.FORMAT_ERROR, f"{name} takes {n} argument{'s' if n > 1 else ''}, got {len(args)}")


def _choice(*values: str) -> Callable[[str, tuple[str, ...]], None]:
    def check(name: str, args: tuple[str, ...]) -> None:
        _arity(name, args, 1)
        if args[0] not in values:
            raise ConfigError(Code.INVALID_VALUE, f"{name} must be one of {', '.join(values)}")

    return check


def _ssl_protocols(name: str, args: tuple[str, ...]) -> None:
    allowed = ("TLSv1", "TLSv1.1", "TLSv1.2")
    if not args or any(a not in allowed for a in args) or len(set(args)) != len(args):
        raise ConfigError(Code.INVALID_VALUE, "ssl_protocols takes distinct values from TLSv1, TLSv1.1, TLSv1.2")


def _ssl_ciphers(name: str, args: tuple[str, ...]) -> None:
    _arity(name, args, 1)
    for token in args[0].split(":"):
        bare = token.lstrip("!+-")
        if token.startswith("!") and token in FORCED_OFF:
            continue
        if bare not in CIPHER_TOKENS:
            raise ConfigError(Code.INVALID_VALUE, f"ssl_ciphers token {token!r} is not in the allowed range")


def _header(name: str, value: str) -> None:
    if not HEADER_NAME.match(name):
        raise ConfigError(Code.FORMAT_ERROR, f"header name {name!r} may only use letters, digits and '-'")
    if not HEADER_VALUE.match(value) or "$" in value or "\\" in value:
        raise ConfigError(
            Code.FORMAT_ERROR, "header value must be printable ASCII without '$' or '\\', at most 512 characters"
        )


def _add_header(name: str, args: tuple[str, ...]) -> None:
    _arity(name, args, 2)
    _header(*args)


def _more_set_headers(name: str, args: tuple[str, ...]) -> None:
    if not args:
        raise ConfigError(Code.FORMAT_ERROR, 'more_set_headers takes "Name:value" arguments')
    for arg in args:
        head, sep, value = arg.partition(":")
        if not sep:
            raise ConfigError(Code.FORMAT_ERROR, f'more_set_headers argument {arg!r} must look like "Name:value"')
        _header(head.strip(), value.strip())


def _proxy_set_header(name: str, args: tuple[str, ...]) -> None:
    _arity(name, args, 2)
    if PROXY_SET_HEADER.get(args[0]) != args[1]:
        pairs = ", ".join(f"{k} {v}" for k, v in PROXY_SET_HEADER.items())
        raise ConfigError(Code.INVALID_VALUE, f"proxy_set_header allows only: {pairs}")


def _proxy_buffers(name: str, args: tuple[str, ...]) -> None:
    _arity(name, args, 2)
    _number(args[0], "", 3, 8, "proxy_buffers count")
    _number(args[1], "k", 4, 16, "proxy_buffers size")


def _proxy_redirect(name: str, args: tuple[str, ...]) -> None:
    if args not in (("http://", "https://"), ("off",), ("default",)):
        raise ConfigError(Code.INVALID_VALUE, "proxy_redirect allows 'http:// https://', 'default' or 'off'")


def _status(text: str, low: int, high: int) -> bool:
    """An HTTP status code written in ASCII digits (``isdigit`` also accepts ``³⁰⁴``)."""
    return re.fullmatch(r"[0-9]{3}", text) is not None and low <= int(text) <= high


def _error_page(name: str, args: tuple[str, ...]) -> None:
    if len(args) < 2 or not ERROR_URI.match(args[-1]):
        raise ConfigError(Code.FORMAT_ERROR, "error_page takes 'code [= [response]] uri' with a URI starting with '/'")
    rest = list(args[:-1])
    if rest[-1].startswith("="):
        answer = rest.pop()[1:]
        if answer and not _status(answer, 200, 599):
            raise ConfigError(Code.RANGE, "error_page response must be a status code 200-599")
    if not rest or any(not _status(c, 300, 599) for c in rest):
        raise ConfigError(Code.RANGE, "error_page codes must be status codes 300-599")


CHECKS: dict[str, Callable[[str, tuple[str, ...]], None]] = {
    "ssl_protocols": _ssl_protocols,
    "ssl_ciphers": _ssl_ciphers,
    "client_header_timeout": _range("s", 30, 120),
    "client_header_buffer_size": _range("k", 1, 256),
    "client_body_timeout": _range("s", 30, 120),
    "client_max_body_size": _range("M", 1, 10240),
    "keepalive_timeout": _range("s", 0, 3600),
    "add_header": _add_header,
    "more_set_headers": _more_set_headers,
    "proxy_connect_timeout": _range("s", 4, 120),
    "proxy_read_timeout": _range("s", 30, 3600),
    "proxy_send_timeout": _range("s", 30, 3600),
    "keepalive_requests": _range("", 1, 10000),
    "proxy_buffer_size": _range("k", 1, 32),
    "proxy_buffers": _proxy_buffers,
    "proxy_request_buffering": _choice("on", "off"),
    "proxy_set_header": _proxy_set_header,
    "send_timeout": _range("s", 1, 3600),
    "ssl_verify_depth": _range("", 1, 10),
    "proxy_redirect": _proxy_redirect,
    "http2_max_field_size": _range("k", 1, 256),
    "error_page": _error_page,
    "proxy_ignore_client_abort": _choice("on", "off"),
}


def lex(text: str) -> list[Directive]:
    """Split the text into statements; blocks, includes and unterminated statements are refused."""
    if len(text.encode()) > MAX_BYTES:
        raise ConfigError(Code.LENGTH, f"personalized config must be at most 64k ({MAX_BYTES} bytes)")
    if "\x00" in text:
        raise ConfigError(Code.FORMAT_ERROR, "personalized config must not contain NUL characters")
    try:
        tokens = list(_balance_braces(_lex_file_object(io.StringIO(text))))
    except NgxParserSyntaxError as exc:
        raise ConfigError(Code.FORMAT_ERROR, f"personalized config does not parse: {exc.strerror}") from None
    out: list[Directive] = []
    current: list[str] = []
    for token, line, quoted in tokens:
        if not quoted and token.startswith("#") and not current:
            continue
        if not quoted and token in ("{", "}"):
            raise ConfigError(Code.FORMAT_ERROR, f"line {line}: blocks are not allowed in a personalized config")
        if not quoted and token == ";":
            if not current:
                raise ConfigError(Code.FORMAT_ERROR, f"line {line}: empty statement")
            out.append(Directive(current[0], tuple(current[1:])))
            current = []
            continue
        current.append(token)
    if current:
        raise ConfigError(Code.FORMAT_ERROR, f"statement '{current[0]}' must end with ';'")
    return out


def parse_customized(text: str) -> tuple[list[Directive], list[tuple[Code, str]]]:
    """Directives of a personalized config and every problem found in it (all at once)."""
    directives, problems = _parse(text)
    return list(directives), list(problems)


@functools.lru_cache(maxsize=1024)
def _parse(text: str) -> tuple[tuple[Directive, ...], tuple[tuple[Code, str], ...]]:
    """Cached: validation of the config, of each instance bound to it, and the compiler all read
    the same text in one pass."""
    try:
        directives = lex(text)
    except ConfigError as exc:
        return (), ((exc.code, str(exc)),)
    problems: list[tuple[Code, str]] = []
    seen: set[str] = set()
    for d in directives:
        check = CHECKS.get(d.name)
        if check is None:
            problems.append((Code.INVALID_PARAMETER, f"directive {d.name!r} is not allowed in a personalized config"))
            continue
        if d.name in seen and d.name not in REPEATABLE:
            problems.append((Code.DUPLICATE, f"directive {d.name!r} appears more than once"))
        seen.add(d.name)
        try:
            check(d.name, d.args)
        except ConfigError as exc:
            problems.append((exc.code, str(exc)))
    values = {d.name: d.args for d in directives}
    body = values.get("client_max_body_size")
    big = bool(body and re.fullmatch(r"[0-9]+[mM]", body[0]) and int(body[0][:-1]) > 256)
    if big and values.get("proxy_request_buffering") != ("off",):
        problems.append(
            (Code.INVALID_PARAMETER, "client_max_body_size above 256M needs 'proxy_request_buffering off;'")
        )
    if "proxy_buffer_size" in values and "proxy_buffers" not in values:
        problems.append((Code.MISSING_PARAMETER, "proxy_buffer_size needs proxy_buffers as well"))
    elif not problems:
        problems.extend(_buffers_fit(values))
    return tuple(directives), tuple(problems)


def _kib(value: str) -> int:
    return int(value.rstrip("kK"))


def _buffers_fit(values: dict[str, tuple[str, ...]]) -> list[tuple[Code, str]]:
    """nginx's rule for the proxy buffers together: the busy-buffers size it derives, twice the
    larger of proxy_buffer_size and one buffer, must not exceed all buffers but one."""
    count, size = values.get("proxy_buffers", DEFAULT_PROXY_BUFFERS)
    header = _kib(values.get("proxy_buffer_size", (DEFAULT_PROXY_BUFFER_SIZE,))[0])
    busy, room = 2 * max(header, _kib(size)), (int(count) - 1) * _kib(size)
    if busy <= room:
        return []
    return [
        (
            Code.INVALID_PARAMETER,
            f"proxy_buffer_size {header}k and proxy_buffers {count} {size} do not fit together: nginx needs "
            f"twice the larger of the two sizes ({busy}k) to be at most all buffers but one ({room}k)",
        )
    ]
