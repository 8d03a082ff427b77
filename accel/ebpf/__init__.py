"""The eBPF capture datapath: bpf/*.c, compiled by bcc and configured through maps."""
