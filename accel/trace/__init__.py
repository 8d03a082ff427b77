"""A packet tracer for accel's renderings: given the iptables-restore text or the nft transaction
and ONE flow, the verdict (redirected to the outbound, inbound or DNS port, untouched, dropped).

Like the tracer kube-proxy's nftables proxier tests walk their rules with, it reads the rules
themselves, not the spec they came from, so it checks what a renderer wrote. It knows exactly the
rule shapes accel emits and raises TraceError, naming the line, for anything else: a new shape
must be taught to it, never traced as if it were absent.
"""

from .iptables import IptablesTracer, trace_iptables
from .model import DROPPED, INBOUND, OUTBOUND, REDIRECT, TPROXY, UNTOUCHED, Flow, Kind, TraceError, Verdict
from .nftables import NftablesTracer, trace_nftables

__all__ = [
    "DROPPED",
    "INBOUND",
    "OUTBOUND",
    "REDIRECT",
    "TPROXY",
    "UNTOUCHED",
    "Flow",
    "IptablesTracer",
    "Kind",
    "NftablesTracer",
    "TraceError",
    "Verdict",
    "trace_iptables",
    "trace_nftables",
]
