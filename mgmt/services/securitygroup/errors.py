"""Error codes of the security group service."""


class SecurityGroupError:
    # Pushing rules to one or more hosts failed; the change is in the database and is applied at
    # the host's next sync. details.hosts: host uuid -> the agent's error.
    APPLY_FAILED = "SECURITYGROUP.APPLY_FAILED"
    # The NIC's L3 network is not attached to the group (AttachSecurityGroupToL3Network first).
    L3_NOT_ATTACHED = "SECURITYGROUP.L3_NOT_ATTACHED"
    # Rules of one DeleteSecurityGroupRule belong to several groups.
    RULES_OF_SEVERAL_GROUPS = "SECURITYGROUP.RULES_OF_SEVERAL_GROUPS"
