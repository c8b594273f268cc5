"""What every hypervisor agent shares: serving the agent protocol on the bus."""
