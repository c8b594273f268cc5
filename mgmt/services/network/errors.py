"""Error codes of the network services (besides the SYS ones)."""

from __future__ import annotations

from typing import Final

# L2
VLAN_IN_USE: Final = "L2.VLAN_IN_USE"  # (zone, physical interface, vlan) already has an L2 network
CLUSTER_ZONE_MISMATCH: Final = "L2.CLUSTER_ZONE_MISMATCH"  # attaching to a cluster of another zone
INTERFACE_CONFLICT: Final = "L2.INTERFACE_CONFLICT"  # the cluster already bridges that interface

# L3 and IP ranges
IP_RANGE_OVERLAP: Final = "L3.IP_RANGE_OVERLAP"  # with a range of this L3 or of another on the same L2
IP_RANGE_CIDR_MISMATCH: Final = "L3.IP_RANGE_CIDR_MISMATCH"  # all ranges of an L3 share one network
IP_RANGE_GATEWAY_MISMATCH: Final = "L3.IP_RANGE_GATEWAY_MISMATCH"  # ... and one gateway
DNS_DUPLICATE: Final = "L3.DNS_DUPLICATE"
NETWORK_SERVICE_UNSUPPORTED: Final = "L3.NETWORK_SERVICE_UNSUPPORTED"  # the provider lacks the type
NETWORK_SERVICE_CONFLICT: Final = "L3.NETWORK_SERVICE_CONFLICT"  # another provider gives the type

# IPAM
NO_IP_RANGE: Final = "L3.NO_IP_RANGE"  # the L3 has no range to allocate from
IP_EXHAUSTED: Final = "L3.IP_EXHAUSTED"  # every address of the L3's ranges is taken
IP_IN_USE: Final = "L3.IP_IN_USE"  # the static IP asked for is allocated already
IP_NOT_IN_RANGE: Final = "L3.IP_NOT_IN_RANGE"  # no range of the L3 can hand out that address
NETWORK_DISABLED: Final = "L3.NETWORK_DISABLED"  # a Disabled L3 hands out no new addresses
IP_ALLOCATION_CONTENDED: Final = "L3.IP_ALLOCATION_CONTENDED"  # every retry collided; try again

# VXLAN
VNI_RANGE_OVERLAP: Final = "L2.VNI_RANGE_OVERLAP"  # with another range of the same pool
VNI_UNAVAILABLE: Final = "L2.VNI_UNAVAILABLE"  # outside the pool's ranges, taken, or none left
NOT_A_VXLAN_POOL: Final = "L2.NOT_A_VXLAN_POOL"  # a pool uuid that names another kind of L2
POOL_IN_USE: Final = "L2.POOL_IN_USE"  # deleting a pool that still has VXLAN networks
