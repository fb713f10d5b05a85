"""Validation issues carrying the documented CLB error codes.

Every refusal the agent makes is an :class:`Issue`: a CLB error code (Tencent V3 business codes,
or the Alibaba codes in the Alibaba profile), the path of the offending field and one plain
sentence. Warnings use the same shape so that operators read one format.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Literal


class Code(StrEnum):
    """Error codes of the Tencent CLB V3 API (SPEC_DIGEST §5.2) and the Alibaba profile (§5.3)."""

    PORT_CHECK_FAILED = "InvalidParameter.PortCheckFailed"
    REWRITE_ALREADY_EXIST = "InvalidParameter.RewriteAlreadyExist"
    SOME_REWRITE_NOT_FOUND = "InvalidParameter.SomeRewriteNotFound"
    LOCATION_NOT_FOUND = "InvalidParameter.LocationNotFound"
    LISTENER_ID_NOT_FOUND = "InvalidParameter.ListenerIdNotFound"
    LB_ID_NOT_FOUND = "InvalidParameter.LBIdNotFound"
    PROTOCOL_CHECK_FAILED = "InvalidParameter.ProtocolCheckFailed"
    FORMAT_ERROR = "InvalidParameter.FormatError"
    LENGTH = "InvalidParameterValue.Length"
    RANGE = "InvalidParameterValue.Range"
    DUPLICATE = "InvalidParameterValue.Duplicate"
    INVALID_VALUE = "InvalidParameterValue"
    INVALID_PARAMETER = "InvalidParameter"
    MISSING_PARAMETER = "MissingParameter"
    UNKNOWN_PARAMETER = "UnknownParameter"
    LIMIT_EXCEEDED = "LimitExceeded"
    RESOURCE_NOT_FOUND = "ResourceNotFound"
    UNSUPPORTED_PROTOCOL = "UnsupportedProtocol"
    UNSUPPORTED_OPERATION = "UnsupportedOperation"
    FAILED_OPERATION = "FailedOperation"
    INTERNAL_ERROR = "InternalError"
    # Alibaba profile (document A) codes.
    ALI_ACL_NOT_EXIST = "AclNotExist"
    ALI_IP_VERSION_CONFLICT = "IpVersionConflict"
    ALI_DUPLICATED_ACL_ENTRY = "Duplicated.AclEntry"
    ALI_TLS_POLICY_NOT_EXIST = "InvalidTLSPolicyId.NotExist"
    ALI_IDLE_TIMEOUT = "InvalidParameter.IdleTimeout"
    ALI_REQUEST_TIMEOUT = "InvalidParameter.RequestTimeout"
    ALI_FORWARD_NOT_SUPPORT = "ListenerForwardNotSupport"
    ALI_PARAM_DUPLICATE = "ParamDuplicateError"
    ALI_MISSING_HEALTH_DOMAIN = "MissingParam.HealthCheckDomain"
    ALI_HEALTH_HTTP_VERSION = "InvalidParameter.HealthCheckHttpVersion"
    ALI_MISSING_SERVER_CERTS = "MissingParam.ServerCertificates"
    ALI_TOO_MANY_CERTS = "TooManyCertificates"
    ALI_CN_CERT = "CnCertificateNotSupport"
    ALI_CERT_TYPE_MISMATCH = "CertificateTypeMismatched"
    ALI_PORT_CONFLICT = "InvalidParameter.ListenerPortConflict"
    ALI_VSERVER_GROUP = "InvalidParameter.VServerGroupId"


Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Issue:
    """One finding about a document: where, which documented code, and why in plain words."""

    path: str
    code: str
    message: str
    severity: Severity = "error"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def __str__(self) -> str:
        tag = "" if self.severity == "error" else "warning: "
        return f"{tag}{self.code}: {self.path}: {self.message}"
