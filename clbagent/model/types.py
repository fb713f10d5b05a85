"""Shared field types: ranges, enums and the V2 spellings accepted for them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

Port = Annotated[int, Field(ge=1, le=65535)]
Weight = Annotated[int, Field(ge=0, le=100)]
Switch = Annotated[int, Field(ge=0, le=1)]
Ident = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]

PROTOCOL_V2 = {1: "HTTP", 2: "TCP", 3: "UDP", 4: "HTTPS"}


def _upper_enum(value: Any) -> Any:
    """V2 APIs spell enums in lower case (wrr, least_conn, ip_hash, unidirectional, mutual)."""
    return value.upper() if isinstance(value, str) else value


def _lower_enum(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _protocol(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return PROTOCOL_V2.get(value, value)
    if isinstance(value, str) and value.isdigit():
        return PROTOCOL_V2.get(int(value), value)
    return _upper_enum(value)


Protocol = Annotated[Literal["TCP", "UDP", "HTTP", "HTTPS", "TCP_SSL"], BeforeValidator(_protocol)]
Scheduler = Annotated[Literal["WRR", "LEAST_CONN", "IP_HASH"], BeforeValidator(_upper_enum)]
SSLMode = Annotated[Literal["UNIDIRECTIONAL", "MUTUAL"], BeforeValidator(_upper_enum)]
ForwardType = Annotated[Literal["HTTP", "HTTPS", "TRPC"], BeforeValidator(_upper_enum)]
HttpMethod = Annotated[Literal["GET", "HEAD"], BeforeValidator(_upper_enum)]
SessionExpire = Annotated[int, Field(ge=0, le=3600)]

L4_PROTOCOLS = frozenset({"TCP", "UDP", "TCP_SSL"})
L7_PROTOCOLS = frozenset({"HTTP", "HTTPS"})
