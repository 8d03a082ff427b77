"""Every number and name of Istio's capture that accel uses, in one place, as istio-iptables keeps
them in its constants.go. The eBPF programs have their own copy in bpf/accel.h (checked against
these where they meet, see accel/ebpf/maps.py); the lab's agent, which must run without accel,
has the few it needs.
"""

# -- the sidecar's ports ----------------------------------------------------------------------
PROXY_PORT = 15001  # -p: Envoy's outbound listener, where captured outbound TCP goes
INBOUND_CAPTURE_PORT = 15006  # -z: Envoy's inbound listener, where captured inbound TCP goes
INBOUND_TUNNEL_PORT = 15008  # -e: the HBONE tunnel, never captured inbound in REDIRECT mode
DNS_PROXY_PORT = 15053  # istio-agent's DNS proxy, where captured DNS goes; fixed in Istio
MERGED_METRICS_PORT = 15020  # istio-agent's merged Prometheus metrics
HEALTH_PORT = 15021  # the sidecar's health and readiness checks
ENVOY_METRICS_PORT = 15090  # Envoy's own Prometheus metrics
# what istio-init excludes from inbound capture (-d): the sidecar's own ports, reached directly
SIDECAR_INBOUND_EXCLUDED = (ENVOY_METRICS_PORT, HEALTH_PORT, MERGED_METRICS_PORT)
DNS_PORT = 53

# -- the proxy's identity ---------------------------------------------------------------------
PROXY_USER = "istio-proxy"  # $ENVOY_USER's default
PROXY_UID = 1337  # -u: its traffic is never captured outbound
PROXY_GID = 1337  # -g
TPROXY_MARK = 1337  # -t: the packet mark TPROXY mode sets
TPROXY_ROUTE_TABLE = 133  # -r: where marked packets are routed locally
OUTBOUND_MARK = 1338  # TPROXY mode: marks the proxy's own hairpin; fixed in Istio

# -- addresses --------------------------------------------------------------------------------
# The source Envoy's inbound passthrough connects to the app from; -o lo traffic from it is
# never captured.
INBOUND_PASSTHROUGH_SOURCE = {4: "127.0.0.6", 6: "::6"}
HOST_IPV4_LOOPBACK_CIDR = "127.0.0.1/32"  # ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR's default

# -- the stock capture ------------------------------------------------------------------------
# What Istio's sidecar injector gives istio-init (istio-iptables) for a plain pod; a flag and
# its value to a line.
# fmt: off
ISTIO_INIT_DEFAULT_ARGS = (
    "-p", str(PROXY_PORT),
    "-z", str(INBOUND_CAPTURE_PORT),
    "-u", str(PROXY_UID),
    "-m", "REDIRECT",
    "-i", "*",
    "-x", "",
    "-b", "*",
    "-d", ",".join(map(str, SIDECAR_INBOUND_EXCLUDED)),
)
# fmt: on

# -- iptables chains (tables nat, mangle, raw) --------------------------------------------------
CHAIN_INBOUND = "ISTIO_INBOUND"  # PREROUTING jumps here for inbound capture
CHAIN_REDIRECT = "ISTIO_REDIRECT"  # -> the proxy's outbound port
CHAIN_IN_REDIRECT = "ISTIO_IN_REDIRECT"  # -> the inbound capture port
CHAIN_OUTPUT = "ISTIO_OUTPUT"  # OUTPUT jumps here: the outbound decision
CHAIN_OUTPUT_DNS = "ISTIO_OUTPUT_DNS"  # DNS capture and its conntrack zones
CHAIN_DIVERT = "ISTIO_DIVERT"  # TPROXY: packets of established captured connections
CHAIN_TPROXY = "ISTIO_TPROXY"  # TPROXY: new captured connections
CHAIN_DROP = "ISTIO_DROP"  # --drop-invalid

# -- Istio's native nftables (istio-iptables --native-nftables) ---------------------------------
NFT_TABLE_NAT, NFT_TABLE_MANGLE, NFT_TABLE_RAW = "istio-proxy-nat", "istio-proxy-mangle", "istio-proxy-raw"
NFT_CHAIN_INBOUND = "istio-inbound"
NFT_CHAIN_REDIRECT = "istio-redirect"
NFT_CHAIN_IN_REDIRECT = "istio-in-redirect"
NFT_CHAIN_OUTPUT = "istio-output"
NFT_CHAIN_OUTPUT_DNS = "istio-output-dns"
NFT_CHAIN_DIVERT = "istio-divert"
NFT_CHAIN_TPROXY = "istio-tproxy"
NFT_CHAIN_DROP = "istio-drop"

# -- the CNI plugin ------------------------------------------------------------------------------
CNI_PLUGIN_TYPE = "accel-cni"  # its "type" in a conflist, and the executable's name in the bin dir
CNI_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")  # what it accepts; CHECK needs 0.4.0 or later
CNI_EXCLUDED_NAMESPACES_DEFAULT = ()  # istio-cni's chart excludes kube-system; accel's config says so
