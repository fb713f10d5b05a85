"""Certificates: the objects (addressed by CertId) and the per-listener/per-rule reference."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field

from clbagent.model.base import Obj
from clbagent.model.types import Ident, SSLMode, _lower_enum, _upper_enum


class Certificate(Obj):
    """A server (SVR) or client-CA (CA) certificate. ``CertFile``/``CertKeyFile`` are read by the
    loader into ``CertContent``/``CertKey`` so that validation and rendering never touch files."""

    cert_id: Ident = Field(alias="CertId")
    cert_type: Annotated[Literal["SVR", "CA"], BeforeValidator(_upper_enum)] = Field("SVR", alias="CertType")
    cert_algorithm: Annotated[Literal["rsa", "ecc", "sm2"], BeforeValidator(_lower_enum)] = Field(
        "rsa", alias="CertAlgorithm"
    )
    cert_alias: str | None = Field(None, alias="CertAlias", max_length=200)
    cert_content: str | None = Field(None, alias="CertContent", max_length=65536)
    cert_key: str | None = Field(None, alias="CertKey", max_length=65536)
    cert_file: str | None = Field(None, alias="CertFile", max_length=4096)
    cert_key_file: str | None = Field(None, alias="CertKeyFile", max_length=4096)
    sign_cert: str | None = Field(None, alias="SignCert", max_length=65536, description="SM2 signing cert")
    sign_cert_private_key: str | None = Field(None, alias="SignCertPrivateKey", max_length=65536)


class CertificateInput(Obj):
    """``Certificate`` of a listener or rule: SSL mode plus references or inline PEM (T9680-T9699)."""

    V2_KEYS = {
        "SSLMode": "SSLMode",
        "sslMode": "SSLMode",
        "certId": "CertId",
        "certCaId": "CertCaId",
        "certContent": "CertContent",
        "certKey": "CertKey",
        "certName": "CertName",
        "certCaContent": "CertCaContent",
        "certCaName": "CertCaName",
    }

    ssl_mode: SSLMode | None = Field(None, alias="SSLMode")
    cert_id: Ident | None = Field(None, alias="CertId")
    cert_ca_id: Ident | None = Field(None, alias="CertCaId")
    cert_name: str | None = Field(None, alias="CertName", max_length=200)
    cert_key: str | None = Field(None, alias="CertKey", max_length=65536)
    cert_content: str | None = Field(None, alias="CertContent", max_length=65536)
    cert_ca_name: str | None = Field(None, alias="CertCaName", max_length=200)
    cert_ca_content: str | None = Field(None, alias="CertCaContent", max_length=65536)
    ecc_cert_id: Ident | None = Field(None, alias="EccCertId")
    sm_cert_id: Ident | None = Field(None, alias="SmCertId")
