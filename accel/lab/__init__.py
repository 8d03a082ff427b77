"""The lab: network-namespace pods on one node, with real servers, a sidecar and a client."""

from .lab import (LAB_NETWORKS, LAB_PREFIX, OTHER_DNS, POD_ADDRESSES, Lab, LabError, LabPlan, MeshedPod, Pod,
                  SidecarConfig, cleanup_leftovers, conntrack_entries, leftovers)

__all__ = ["LAB_NETWORKS", "LAB_PREFIX", "OTHER_DNS", "POD_ADDRESSES", "Lab", "LabError", "LabPlan", "MeshedPod", "Pod",
           "SidecarConfig", "cleanup_leftovers", "conntrack_entries", "leftovers"]
