"""Declarative model of CLB instances (Tencent CLB API 2018-03-17 field names)."""

from clbagent.model.base import Obj, annotate_paths, strip_paths
from clbagent.model.certificate import Certificate, CertificateInput
from clbagent.model.extras import Acl, AclEntry, AutoRewrite, CustomizedConfig, RewriteLocationMap, TLSPolicy
from clbagent.model.health import HealthCheck
from clbagent.model.listener import Listener, Rule
from clbagent.model.loadbalancer import LoadBalancer, SharedObjects
from clbagent.model.target import Target

__all__ = [
    "Acl",
    "AclEntry",
    "AutoRewrite",
    "Certificate",
    "CertificateInput",
    "CustomizedConfig",
    "HealthCheck",
    "Listener",
    "LoadBalancer",
    "Obj",
    "RewriteLocationMap",
    "Rule",
    "SharedObjects",
    "TLSPolicy",
    "Target",
    "annotate_paths",
    "strip_paths",
]
