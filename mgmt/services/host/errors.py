"""Error codes of the host service."""


class HostError:
    MANAGEMENT_IP_IN_USE = "HOST.MANAGEMENT_IP_IN_USE"  # another host has that management IP
    HYPERVISOR_MISMATCH = "HOST.HYPERVISOR_MISMATCH"  # e.g. a KVM host into a Simulator cluster
    INVALID_STATE_TRANSITION = "HOST.INVALID_STATE_TRANSITION"  # the state machine forbids it
    NOT_KVM_HOST = "HOST.NOT_KVM_HOST"  # a KVM-only request about another kind of host
    # Deploying a KVM host's agent over SSH failed (mgmt.core.hostdeploy); details name the step
    # (ssh, credentials, bundle, playbook, connect) and the reason. Also the host's status reason.
    DEPLOY_FAILED = "HOST.DEPLOY_FAILED"
