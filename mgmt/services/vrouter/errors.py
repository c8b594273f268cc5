"""Error codes of the virtual-router service."""

from typing import Final

NOT_PUBLIC: Final = "VROUTER.NOT_PUBLIC_NETWORK"  # a VIP or offering needs a public L3 here
WRONG_ZONE: Final = "VROUTER.WRONG_ZONE"  # an offering's networks and image belong to its zone
VIP_IN_USE: Final = "VROUTER.VIP_IN_USE"  # the VIP serves an EIP or port forwarding
