from mgmt.services.hosttracker.service import HostTracker

__all__ = ["HostTracker"]
