"""Security-group rule vocabulary and validation, shared by the API (``schema.api.securitygroup``)
and the agent protocol (``schema.agent``), so both refuse exactly the same rules."""

from __future__ import annotations

import ipaddress
from typing import Literal

SecurityGroupRuleType = Literal["Ingress", "Egress"]
SecurityGroupProtocol = Literal["TCP", "UDP", "ICMP", "ALL"]


def check_rule(
    protocol: str, start_port: int | None, end_port: int | None, cidr: str | None, remote: str | None
) -> None:
    """The one validation of a rule, shared by the API and the agent protocol."""
    if protocol in ("TCP", "UDP"):
        if start_port is None or end_port is None:
            raise ValueError(f"a {protocol} rule needs startPort and endPort")
        if start_port > end_port:
            raise ValueError(f"startPort {start_port} is above endPort {end_port}")
    elif start_port is not None or end_port is not None:
        raise ValueError(f"an {protocol} rule takes no ports")
    if cidr is not None and remote is not None:
        raise ValueError("a rule names allowedCidr or remoteSecurityGroupUuid, not both")
    if cidr is not None:
        ipaddress.IPv4Network(cidr, strict=True)  # ValueError says what is wrong
