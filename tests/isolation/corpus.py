"""A hostile corpus, one generator per class of issue 7: documents a tenant could submit to
reach another tenant's traffic, the shared nginx, or the host. Each case names the documented
CLB error code that must refuse it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EVIL = "lb-evil"
EVIL_VIP = "127.0.10.66"


@dataclass(frozen=True)
class Case:
    name: str
    doc: dict[str, Any]
    code: str

    @property
    def id(self) -> str:
        return self.name


def hostile_lb(*, vips: list[str] | None = None, domain: str = "evil.test", url: str = "/", **extra: Any) -> dict:
    """A load balancer with one HTTP rule; ``extra`` overrides top-level fields."""
    target = extra.pop("target", {"EniIp": "127.0.20.66", "Port": 18099})
    rules = [
        {
            "LocationId": "evil",
            "Domain": domain,
            "Url": url,
            "DefaultServer": True,
            "HealthCheck": {"HealthSwitch": 0},
            "Targets": [target],
        }
    ]
    listeners = extra.pop("listeners", [{"ListenerId": "evil-http", "Protocol": "HTTP", "Port": 18090, "Rules": rules}])
    return {"LoadBalancerId": EVIL, "LoadBalancerVips": vips or [EVIL_VIP], "Listeners": listeners, **extra}


NAMED_CAPTURES = [
    "~^(?P<clb_acl_x>)evil\\.test$",
    "~^(?<host>evil)\\.test$",
    "~^(?'remote_addr'evil)\\.test$",
    "~^(?<sticky_cookie>a)(?P=sticky_cookie)$",
    "~^(?<n>a)\\k<n>$",
    "~^(?<n>a)(?&n)$",
    "~^(?P<n>a)(?P>n)$",
]
REFUSED_BY_PCRE2_OR_SUBSET = [
    "~^\\u0061$",
    "~(?a)^a$",
    "~(?u)^a$",
    "~^[[:foo:]]$",
    "~^[[.a.]]$",
    "~^[[:alpha:]]+$",
    "~(*UTF)^a$",
    "~(*LIMIT_MATCH=1)^a$",
    "~^(?C1)a$",
    "~^(?=a)a$",
    "~^(a)\\1$",
    "~^(?(1)a|b)$",
    "~^(?R)?$",
    "~^\\Qa\\E$",
    "~^a\\Z",
    "~^(?x)a$",
    "~^(?|(a)|(b))$",
    "~^a(",
    "~^[z-a]$",
]
CATASTROPHIC = [
    "~^(a|a)+$",
    "~^(a+)+$",
    "~^(.*)*$",
    "~^(\\d+\\.?)+$",
    "~^\\d+\\d+$",
    "~^.*.*=.*$",
    "~^([a-z]+)*$",
    "~^(x+x+)+y$",
    "~^(a|aa)+$",
    "~^(\\w+\\w?)+$",
    "~^.*a.*a.*a.*a$",
]
BAD_VIPS = [
    "0.0.0.0",
    "::",
    "224.0.0.1",
    "255.255.255.255",
    "240.0.0.1",
    "169.254.1.1",
    "fe80::1",
    "::ffff:127.0.0.1",
    "ff02::1",
    "fe80::1%lo",
    "0.1.2.3",
]
BAD_TARGETS = ["0.0.0.0", "224.0.0.5", "fe80::1%eth0\n-A -t 10.0.0.1:80 -s rr", "::ffff:10.0.0.1", "169.254.169.254"]


def regex_cases() -> list[Case]:
    cases = []
    for i, pattern in enumerate(NAMED_CAPTURES + REFUSED_BY_PCRE2_OR_SUBSET + CATASTROPHIC):
        cases.append(Case(f"domain-regex-{i}", hostile_lb(domain=pattern), "InvalidParameter.FormatError"))
        url = "~" + pattern[1:].replace("evil\\.test", "/evil")
        cases.append(Case(f"url-regex-{i}", hostile_lb(url=url), "InvalidParameter.FormatError"))
    return cases


def address_cases() -> list[Case]:
    code = "InvalidParameterValue"
    cases = [Case(f"vip-{v}", hostile_lb(vips=[v]), code) for v in BAD_VIPS]
    cases += [Case(f"target-{t!r}", hostile_lb(target={"EniIp": t, "Port": 80}), code) for t in BAD_TARGETS]
    acl = {"AclId": "evil-acl", "AddressIPVersion": "ipv6", "AclEntries": [{"Entry": "fe80::%x/64"}]}
    cases.append(Case("acl-scoped", hostile_lb(Acls=[acl]), code))
    return cases


def limit_cases() -> list[Case]:
    """Within a parsed document: sizes the model bounds."""
    many_targets = [{"EniIp": "127.0.20.66", "Port": 18099}] * 25_000
    many_vips = [f"127.0.{i // 250}.{i % 250 + 1}" for i in range(65)]
    rule = {"Domain": "evil.test", "Url": "/", "Targets": many_targets}
    listeners = [{"ListenerId": "t", "Protocol": "HTTP", "Port": 18090, "Rules": [rule]}]
    return [
        Case("targets-25000", hostile_lb(listeners=listeners), "LimitExceeded"),
        Case("vips-65", hostile_lb(vips=many_vips), "LimitExceeded"),
    ]


def port_range_flood(vips: int = 64, listeners: int = 26) -> dict:
    """Port-range listeners on many VIPs: checked as intervals, never port by port."""
    ranges = [
        {"ListenerId": f"r{i}", "Protocol": "TCP", "Port": 1 + i * 2500, "EndPort": 2400 + i * 2500}
        for i in range(listeners)
    ]
    return hostile_lb(vips=[f"127.0.{i // 250}.{i % 250 + 1}" for i in range(vips)], listeners=ranges)


def all_cases() -> list[Case]:
    return regex_cases() + address_cases() + limit_cases()
