"""The Flat network provider: DHCP served on every KVM host for the VMs on it (an observer plugin,
like security groups: it watches VM and host events; the VM service does not know it)."""

from mgmt.services.flatnetwork.service import FlatNetworkService

__all__ = ["FlatNetworkService"]
