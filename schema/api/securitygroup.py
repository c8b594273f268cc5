"""Security groups: ZStack's APIs (CreateSecurityGroup, AddSecurityGroupRule, ...).

Ingress is denied unless a rule allows it; egress is allowed unless a group of the NIC has egress
rules. A rule names its peer by ``allowedCidr`` or ``remoteSecurityGroupUuid`` (the members of that
group), or neither (anyone).
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from pydantic import ConfigDict, Field, model_validator

from schema.api.base import (
    ApiMessage,
    CreateMessage,
    DeleteMessage,
    Description,
    EmptyReply,
    Inventory,
    Name,
    QueryMessage,
    QueryReply,
    Reply,
    Uuid,
    WireModel,
)
from schema.secgroup import SecurityGroupProtocol, SecurityGroupRuleType, check_rule

SERVICE = "securitygroup"


class SecurityGroupRuleInventory(WireModel):
    model_config = ConfigDict(from_attributes=True)

    uuid: str
    security_group_uuid: str
    type: SecurityGroupRuleType
    protocol: SecurityGroupProtocol
    start_port: int | None = None
    end_port: int | None = None
    allowed_cidr: str | None = None
    remote_security_group_uuid: str | None = None
    created_at: datetime


class SecurityGroupInventory(Inventory):
    state: str
    rules: list[SecurityGroupRuleInventory] = Field(default_factory=list)
    attached_l3_network_uuids: list[str] = Field(default_factory=list)


class VmNicSecurityGroupRefInventory(WireModel):
    model_config = ConfigDict(from_attributes=True)

    uuid: str
    vm_nic_uuid: str
    vm_instance_uuid: str
    security_group_uuid: str
    created_at: datetime


class SecurityGroupReply(Reply):
    inventory: SecurityGroupInventory


class SecurityGroupRuleAO(WireModel):
    """One rule to add (ZStack's ``SecurityGroupRuleAO``)."""

    type: SecurityGroupRuleType
    protocol: SecurityGroupProtocol
    start_port: int | None = Field(default=None, ge=0, le=65535)
    end_port: int | None = Field(default=None, ge=0, le=65535)
    allowed_cidr: str | None = Field(default=None, max_length=64)
    remote_security_group_uuid: Uuid | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SecurityGroupRuleAO:
        check_rule(
            self.protocol, self.start_port, self.end_port, self.allowed_cidr, self.remote_security_group_uuid
        )
        return self


class CreateSecurityGroup(CreateMessage):
    service: ClassVar[str] = SERVICE
    reply = SecurityGroupReply

    name: Name
    description: Description = None


class AddSecurityGroupRule(ApiMessage):
    service: ClassVar[str] = SERVICE
    resource_field: ClassVar[str | None] = "security_group_uuid"
    reply = SecurityGroupReply

    security_group_uuid: Uuid
    rules: list[SecurityGroupRuleAO] = Field(min_length=1, max_length=100)


class DeleteSecurityGroupRule(ApiMessage):
    """Rules are named by their own uuids, as in ZStack; all must belong to one group."""

    service: ClassVar[str] = SERVICE
    reply = SecurityGroupReply

    rule_uuids: list[Uuid] = Field(min_length=1, max_length=100)


class AttachSecurityGroupToL3Network(ApiMessage):
    service: ClassVar[str] = SERVICE
    resource_field: ClassVar[str | None] = "security_group_uuid"
    reply = SecurityGroupReply

    security_group_uuid: Uuid
    l3_network_uuid: Uuid


class DetachSecurityGroupFromL3Network(AttachSecurityGroupToL3Network):
    """Also takes the group off every NIC of that L3 network (ZStack does the same)."""


class AddVmNicToSecurityGroup(ApiMessage):
    service: ClassVar[str] = SERVICE
    resource_field: ClassVar[str | None] = "security_group_uuid"
    reply = EmptyReply

    security_group_uuid: Uuid
    vm_nic_uuids: list[Uuid] = Field(min_length=1, max_length=1000)


class DeleteVmNicFromSecurityGroup(AddVmNicToSecurityGroup):
    pass


class DeleteSecurityGroup(DeleteMessage):
    service: ClassVar[str] = SERVICE
    reply = EmptyReply


class QuerySecurityGroup(QueryMessage):
    service: ClassVar[str] = SERVICE
    reply = QueryReply


class QuerySecurityGroupRule(QueryMessage):
    service: ClassVar[str] = SERVICE
    reply = QueryReply


class QueryVmNicInSecurityGroup(QueryMessage):
    service: ClassVar[str] = SERVICE
    reply = QueryReply


# ---------------------------------------------------------------------- between nodes


class SyncSecurityGroupsOnHost(ApiMessage):
    """Make one host's rules match the database; routed to the host's owner, serial per host."""

    service: ClassVar[str] = SERVICE
    resource_field: ClassVar[str | None] = "host_uuid"
    internal: ClassVar[bool] = True
    reply = EmptyReply

    host_uuid: Uuid
