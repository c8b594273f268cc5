"""Error codes of the virtual-router service."""

from typing import Final

NOT_PUBLIC: Final = "VROUTER.NOT_PUBLIC_NETWORK"  # a VIP or offering needs a public L3 here
WRONG_ZONE: Final = "VROUTER.WRONG_ZONE"  # an offering's networks and image belong to its zone
VIP_IN_USE: Final = "VROUTER.VIP_IN_USE"  # the VIP serves an EIP or port forwarding
NO_OFFERING: Final = "VROUTER.NO_OFFERING"  # the guest L3's zone has no (default) VR offering
BAD_GUEST_NETWORK: Final = "VROUTER.BAD_GUEST_NETWORK"  # the L3 is a VR's public/management side
ALREADY_HAS_VR: Final = "VROUTER.ALREADY_HAS_VR"  # the L3 has another VR (one per guest L3)
AGENT_UNREACHABLE: Final = "VROUTER.AGENT_UNREACHABLE"  # the appliance's agent did not answer
VIP_NOT_FREE: Final = "VROUTER.VIP_NOT_FREE"  # the VIP is used by another service
NIC_NOT_SERVED: Final = "VROUTER.NIC_NOT_SERVED"  # the NIC's L3 takes no PortForwarding from a VR
PF_CONFLICT: Final = "VROUTER.PORT_FORWARDING_CONFLICT"  # overlapping ports on one VIP, or attached
VIP_NOT_ON_VR: Final = "VROUTER.VIP_NOT_ON_VR"  # the VIP is not on the public network of the NIC's VR
