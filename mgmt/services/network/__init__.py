"""Networks: L2 networks, L3 networks (DNS, network services), IP ranges and IPAM.

Four services: ``l2network`` (``l2.py``), ``vxlan`` (``vxlan.py``: pools, VNI ranges, VXLAN
networks), ``l3network`` (``l3.py``) and ``ipam`` (``ipam.py``, which also holds the allocation other services call in their own transaction:
``allocate_ip``, ``release_ip``).
"""

from mgmt.services.network.ipam import IpamService
from mgmt.services.network.l2 import L2NetworkService
from mgmt.services.network.l3 import L3NetworkService
from mgmt.services.network.vxlan import VxlanService

__all__ = ["IpamService", "L2NetworkService", "L3NetworkService", "VxlanService"]
