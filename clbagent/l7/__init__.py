"""L7 compiler: HTTP/HTTPS listeners of the desired state → an nginx file set (see docs/l7.md).

The compiler's names below are imported on first use, so that the light submodules (``memo``,
``prefix``, ``quote``) can be used without loading the compiler and the document models."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .prefix import PrefixError, write_prefix
from .quote import UnsafeTextError, quote  # the function, not its module of the same name

if TYPE_CHECKING:
    from .compile import DEFAULT_PREFIX, NginxConfig, compile_nginx
    from .names import down_key

WHERE = {"DEFAULT_PREFIX": "compile", "NginxConfig": "compile", "compile_nginx": "compile", "down_key": "names"}
__all__ = [
    "DEFAULT_PREFIX",
    "NginxConfig",
    "PrefixError",
    "UnsafeTextError",
    "compile_nginx",
    "down_key",
    "quote",
    "write_prefix",
]


def __getattr__(name: str) -> Any:
    module = WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
