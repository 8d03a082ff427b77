"""Another program on the same cgroup hooks as accel's: a stand-in for Cilium's socket load
balancer, a connect4 program that rewrites a service address to a backend. It keeps working and
accel still captures, in either order, and the order decides which address the proxy is told.

cgroup programs run in a defined order: at one cgroup in the order they were attached (accel's
links are multi-attach links), and a descendant cgroup's before its ancestors'. Cilium attaches
at the cgroup v2 root, above accel's node cgroup: accel runs first there, and the proxy learns
the service address, as Istio's routing wants it."""

from __future__ import annotations

import os

import pytest

from accel import inputs
from accel.backends import get_backend
from accel.ebpf import libbpf, programs
from accel.lab import Lab, LabPlan, SidecarConfig

pytestmark = pytest.mark.privileged

SERVICE, BACKEND = ("203.0.113.100", 80), ("203.0.113.10", 8080)  # the backend is the remote pod's
APP, PROXY = 1000, 1337
STOCK = inputs.from_istio_args(list(inputs.ISTIO_INIT_DEFAULT_ARGS))
LOAD_BALANCER = """
int service_lb(struct bpf_sock_addr *ctx)
{
	if (ctx->user_ip4 == %(service)d && ctx->user_port == %(service_port)d) {
		ctx->user_ip4 = %(backend)d;
		ctx->user_port = %(backend_port)d;
	}
	return 1;
}
"""


def network_order(address: str, port: int) -> tuple[int, int]:
    import ipaddress
    import socket

    return int.from_bytes(ipaddress.ip_address(address).packed, "little"), socket.htons(port)


class LoadBalancer:
    """The stand-in, linked to a cgroup (and unlinked when closed)."""

    def __init__(self, cgroup):
        from bcc import BPF

        service, service_port = network_order(*SERVICE)
        backend, backend_port = network_order(*BACKEND)
        self.bpf = BPF(
            text=LOAD_BALANCER
            % {"service": service, "service_port": service_port, "backend": backend, "backend_port": backend_port}
        )
        program = self.bpf.load_func("service_lb", BPF.CGROUP_SOCK_ADDR, None, programs.ATTACH_INET4_CONNECT)
        fd = os.open(cgroup.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.link = libbpf.link_create(program.fd, fd, programs.ATTACH_INET4_CONNECT)
        finally:
            os.close(fd)

    def close(self):
        os.close(self.link)
        self.bpf.cleanup()


def through(lab, token: str, uid: int) -> dict:
    lab.client("pod", proto="tcp", dst=SERVICE[0], port=SERVICE[1], token=token, uid=uid, gid=uid)
    events = lab.events(token)
    sidecar = next((e for e in events if e["role"] == "sidecar"), None)
    return {"path": [e["agent"] for e in events], "told": sidecar and sidecar["so_original_dst"]}


# load-balancer: attached before accel at the same cgroup; accel: attached after it; below:
# attached after accel, at the pod's own cgroup (a descendant of accel's), so it runs first
@pytest.mark.parametrize("first", ["load-balancer", "accel", "below"])
def test_a_service_load_balancer_on_the_same_hooks(first):
    plan = LabPlan(service_addresses=(BACKEND[0],), sidecar=SidecarConfig(15001, 15006, 15053, PROXY, PROXY))
    with Lab(plan) as lab:
        backend, pod = get_backend("ebpf"), lab.pods["pod"]
        balancer = None
        try:
            if first == "load-balancer":
                balancer = LoadBalancer(lab.cgroup)
                backend.apply(pod, STOCK)
            else:
                backend.apply(pod, STOCK)
                balancer = LoadBalancer(lab.cgroup if first == "accel" else pod.cgroup)
            captured = through(lab, f"app-{first}", APP)
            proxy_own = through(lab, f"proxy-{first}", PROXY)
            counters = backend.status(pod)["counters"]
        finally:
            if balancer is not None:
                balancer.close()
            backend.remove(pod)
    # accel captures either way, and the load balancer's rewrite reaches the backend either way
    assert captured["path"] == ["sidecar", "remote"]
    assert counters["outbound"] >= 1
    # the order decides what the proxy is told: the backend (the balancer ran first) or the
    # service address (accel ran first; the proxy's own connect then went through the balancer)
    assert captured["told"] == ("%s:%d" % (SERVICE if first == "accel" else BACKEND))
    # the proxy's own connections are never captured, and still balanced
    assert proxy_own == {"path": ["remote"], "told": None}
