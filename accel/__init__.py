"""accel: sidecar traffic capture with iptables, nftables and eBPF, proven equivalent."""
