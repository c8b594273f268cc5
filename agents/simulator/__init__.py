"""The simulated hypervisor: many hosts answering the agent protocol from one process."""
