"""Error codes of the EIP service."""


class EipError:
    # The VIP is already used by another service (an EIP, port forwarding). details.useFor.
    VIP_IN_USE = "EIP.VIP_IN_USE"
    # The EIP is attached to another NIC (DetachEip first). details.vmNicUuid.
    ALREADY_ATTACHED = "EIP.ALREADY_ATTACHED"
    # The NIC already has an EIP (one per NIC). details.eipUuid.
    NIC_HAS_EIP = "EIP.NIC_HAS_EIP"
    # The NIC cannot take an EIP: no address, its L3 is the VIP's own, or in another zone.
    INVALID_NIC = "EIP.INVALID_NIC"
    # No provider realises EIPs for the NIC's L3 (AttachNetworkServiceToL3Network with EIP), or
    # the provider's plugin is not running. details.l3NetworkUuid, details.providerType.
    NO_PROVIDER = "EIP.NO_PROVIDER"
