"""The lab: network-namespace pods on one node, with real servers, a sidecar and a client."""

from .lab import LAB_PREFIX, Lab, conntrack_entries
from .leftovers import cleanup_leftovers, leftovers
from .plan import LAB_NETWORKS, OTHER_DNS, POD_ADDRESSES, LabError, LabPlan, MeshedPod, Pod, SidecarConfig

__all__ = [
    "LAB_NETWORKS",
    "LAB_PREFIX",
    "OTHER_DNS",
    "POD_ADDRESSES",
    "Lab",
    "LabError",
    "LabPlan",
    "MeshedPod",
    "Pod",
    "SidecarConfig",
    "cleanup_leftovers",
    "conntrack_entries",
    "leftovers",
]
