"""L7 compiler: HTTP/HTTPS listeners of the desired state → an nginx file set (see docs/l7.md)."""

from .compile import DEFAULT_PREFIX, NginxConfig, compile_nginx
from .names import down_key
from .prefix import PrefixError, write_prefix
from .quote import UnsafeTextError, quote

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
