"""Agents: processes on hypervisor hosts (KVM), in virtual routers, and the simulator."""
