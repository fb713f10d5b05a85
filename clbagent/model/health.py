"""HealthCheck: every field of the V3 structure (T9733-T9749)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from clbagent.errors import Code
from clbagent.model.base import PATH_KEY, Obj
from clbagent.model.syntax import (
    check_health_domain,
    check_health_path,
    check_visible_ascii,
    fail,
    settings_of,
)
from clbagent.model.types import HttpMethod, Port, Switch, _upper_enum

HTTP_CODE_BITS = {"http_1xx": 1, "http_2xx": 2, "http_3xx": 4, "http_4xx": 8, "http_5xx": 16}


def _http_code(value: Any) -> Any:
    """Accept the bitmask (31) or the console names ("http_2xx,http_3xx" or a list of them)."""
    names = value.split(",") if isinstance(value, str) and not value.isdigit() else value
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        bits = 0
        for name in names:
            key = name.strip().lower()
            if key not in HTTP_CODE_BITS:
                raise fail(Code.INVALID_VALUE, f"unknown status class {name!r:.40}; use http_1xx ... http_5xx")
            bits |= HTTP_CODE_BITS[key]
        return bits
    return value


class HealthCheck(Obj):
    V2_KEYS = {
        "healthSwitch": "HealthSwitch",
        "timeOut": "TimeOut",
        "intervalTime": "IntervalTime",
        "healthNum": "HealthNum",
        "unhealthNum": "UnHealthNum",
        "httpCode": "HttpCode",
        "httpCheckPath": "HttpCheckPath",
        "httpCheckDomain": "HttpCheckDomain",
        "httpCheckMethod": "HttpCheckMethod",
    }

    health_switch: Switch = Field(1, alias="HealthSwitch")
    time_out: int = Field(2, alias="TimeOut", ge=2, le=60, description="L4 only; must be < IntervalTime")
    interval_time: int = Field(5, alias="IntervalTime", ge=5, le=300)
    health_num: int = Field(3, alias="HealthNum", ge=2, le=10)
    un_health_num: int = Field(3, alias="UnHealthNum", ge=2, le=10)
    http_code: Annotated[int, BeforeValidator(_http_code)] | None = Field(
        None, alias="HttpCode", ge=1, le=31, description="bitmask 1=1xx 2=2xx 4=3xx 8=4xx 16=5xx"
    )
    http_check_path: str | None = Field(None, alias="HttpCheckPath")
    http_check_domain: str | None = Field(None, alias="HttpCheckDomain")
    http_check_method: HttpMethod | None = Field(None, alias="HttpCheckMethod")
    check_port: Port | None = Field(None, alias="CheckPort")
    context_type: Annotated[Literal["HEX", "TEXT"], BeforeValidator(_upper_enum)] | None = Field(
        None, alias="ContextType"
    )
    send_context: str | None = Field(None, alias="SendContext")
    recv_context: str | None = Field(None, alias="RecvContext")
    check_type: Annotated[Literal["TCP", "HTTP", "CUSTOM"], BeforeValidator(_upper_enum)] | None = Field(
        None, alias="CheckType"
    )
    http_version: Literal["HTTP/1.0", "HTTP/1.1"] | None = Field(None, alias="HttpVersion")

    @field_validator("http_check_path")
    @classmethod
    def _check_path(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else check_health_path(v, settings_of(info))

    @field_validator("http_check_domain")
    @classmethod
    def _check_domain(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else check_health_domain(v, settings_of(info))

    @field_validator("send_context", "recv_context")
    @classmethod
    def _context(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else check_visible_ascii(v, str(info.field_name), 500)

    @property
    def enabled(self) -> bool:
        return self.health_switch == 1


class WithHealthCheck(Obj):
    """An object with a ``HealthCheck`` (listeners and rules). V2 carries the health-check fields
    flat (``healthNum: 3`` beside ``listenerId``); they are moved into the V3 ``HealthCheck``."""

    @model_validator(mode="before")
    @classmethod
    def _flat_health(cls, data: Any) -> Any:
        return _lift_flat_health(data)


def _lift_flat_health(data: Any) -> Any:
    if not isinstance(data, dict) or HealthCheck.V2_KEYS.keys().isdisjoint(data):
        return data
    nested = data.get("HealthCheck")
    if nested is not None and not isinstance(nested, dict):
        return data  # the HealthCheck's own type error is reported
    data = dict(data)
    check = dict(nested or {PATH_KEY: f"{data.get(PATH_KEY, '')}/HealthCheck"})
    for key in HealthCheck.V2_KEYS.keys() & data.keys():
        check[key] = data.pop(key)
    data["HealthCheck"] = check
    return data
