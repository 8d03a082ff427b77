"""accel on a node: a datapath loaded once at node startup that outlives every accel process.

State lives where it survives them: the kernel objects pinned under one bpffs directory
(`<bpffs>/accel/`: maps, programs, the cgroup links, each pod's sk_lookup link) and a root-only
state directory describing them (backend, versions, program tags, map layouts, the pods and
their specs). Every command is a short-lived process that opens the pins: no daemon is needed
for traffic to flow. One lock in the state directory serialises changes (a container runtime
runs CNI for many pods at once); readers take none (the state file is replaced atomically).
"""
