"""accel as a chained CNI plugin: a container runtime calls `accel-cni` after the node's own
plugins, and it registers each pod with the node's datapath exactly as `accel pod add` does.

config: the plugin's object in the conflist. podinfo: where a pod's annotations come from (the
API server, or a directory of files). plugin: the CNI commands. conflist and install: putting the
plugin into a node's CNI configuration and taking it out again.
"""
