"""The real-nginx fixtures of the L7 tests (PKI, backends, ``serve``), shared with these tests."""

from tests.l7.conftest import backends, pki, serve  # noqa: F401
