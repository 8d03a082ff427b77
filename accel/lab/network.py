"""A lab's network, as lab.py draws it: a namespace for the node and one for each pod, the
node's bridge, a veth, addresses and default routes for each pod, and the node's routes to the
service addresses through the remote pod; over netlink, inside each namespace."""

from __future__ import annotations

from pyroute2 import NetNS as Netlink  # a netlink socket in a named namespace

from .. import cancel, faults
from ..cgroup import Cgroup
from ..netns import Netns
from .plan import NODE_V4, NODE_V6, OTHER_DNS, POD_ADDRESSES, SCALE_V4, LabError, LabPlan, Pod

IFA_F_NODAD = 0x02  # no duplicate address detection: IPv6 addresses are usable at once

NAMESPACE_SYSCTLS = {
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
    "net.ipv4.ping_group_range": "0 2147483647",  # unprivileged ICMP echo sockets
    # no duplicate address detection: link-local addresses are usable at once
    "net.ipv6.conf.all.accept_dad": "0",
    "net.ipv6.conf.default.accept_dad": "0",
}


class LabNetwork:
    """How a Lab builds its network; a base of Lab, whose plan, name, node namespace, cgroup and
    pods these methods use, and whose destroy() removes every namespace they record."""

    plan: LabPlan
    name: str
    node: str
    cgroup: Cgroup | None
    pods: dict[str, Pod]
    _namespaces: list[Netns]

    @staticmethod
    def _step(point: str) -> None:
        """A safe point between building steps: stop here if SIGTERM or Ctrl-C came (destroy()
        then removes what the steps made)."""
        faults.point(point)
        cancel.check()

    def _namespace(self, name: str, userns: bool = False, sysctls: dict[str, str] | None = None) -> str:
        namespace = Netns(name, userns=userns, sysctls={**NAMESPACE_SYSCTLS, **(sysctls or {})})
        cancel.check()
        self._namespaces.append(namespace)  # first, so that destroy() also covers an interrupted create
        namespace.create()
        self._step("lab:namespace")
        return name

    def _build_network(self) -> None:
        assert self.cgroup is not None  # build() makes it first
        plan = self.plan
        forwarding = {"net.ipv4.ip_forward": "1", **({"net.ipv6.conf.all.forwarding": "1"} if plan.ipv6 else {})}
        self._namespace(self.node, sysctls=forwarding)
        with Netlink(self.node) as node:
            # Without multicast snooping the bridge floods IPv6 neighbour solicitations, which it
            # otherwise drops until it has seen MLD reports from fresh ports.
            node.link("add", ifname="br0", kind="bridge", br_mcast_snooping=0)
            bridge = node.link_lookup(ifname="br0")[0]
            node.link("set", index=bridge, state="up")
            node.addr("add", index=bridge, address=NODE_V4, prefixlen=24)
            if plan.ipv6:
                node.addr("add", index=bridge, address=NODE_V6, prefixlen=64, flags=IFA_F_NODAD)
        meshed = {pod.role: pod for pod in plan.meshed}
        roles = [*meshed, "remote", *(["dns"] if plan.recording_agents else [])]
        for role in roles:
            ipv4, ipv6 = POD_ADDRESSES[role]
            userns = role in meshed and meshed[role].userns
            pod = Pod(
                role,
                self._namespace(f"{self.name}-{role}", userns),
                self.cgroup.child(role),
                ipv4,
                ipv6 if plan.ipv6 else None,
                node_cgroup=self.cgroup,
                userns=userns,
            )
            self._wire(pod)
            self.pods[role] = pod
        for role in meshed:
            with Netlink(self.pods[role].netns) as ns:
                lo = ns.link_lookup(ifname="lo")[0]
                if role == "pod":
                    for cidr in plan.pod_local_addresses:
                        address, length = cidr.split("/")
                        ns.addr(
                            "add",
                            index=lo,
                            address=address,
                            prefixlen=int(length),
                            **({"flags": IFA_F_NODAD} if ":" in address else {}),
                        )
        if plan.scale_pods:
            self._build_scale_pods(node_v4=str(SCALE_V4[1]))
        if "dns" in self.pods:
            self._add_other_dns(self.pods["dns"])
        remote = self.pods["remote"]
        with Netlink(remote.netns) as ns, Netlink(self.node) as node:
            lo = ns.link_lookup(ifname="lo")[0]
            for address in plan.service_addresses:  # off-link: on lo, routed by the node
                v6 = ":" in address
                ns.addr(
                    "add",
                    index=lo,
                    address=address,
                    prefixlen=128 if v6 else 32,
                    **({"flags": IFA_F_NODAD} if v6 else {}),
                )
                node.route(
                    "add",
                    dst=f"{address}/{128 if v6 else 32}",
                    gateway=remote.address(6 if v6 else 4),
                    family=10 if v6 else 2,
                )

    def _build_scale_pods(self, node_v4: str):
        if self.plan.scale_pods > SCALE_V4.num_addresses - 3:
            raise LabError(
                f"at most {SCALE_V4.num_addresses - 3} scale pods fit in {SCALE_V4} ({self.plan.scale_pods} asked)"
            )
        assert self.cgroup is not None  # build() makes it first
        with Netlink(self.node) as node:
            node.addr("add", index=node.link_lookup(ifname="br0")[0], address=node_v4, prefixlen=SCALE_V4.prefixlen)
        for number in range(1, self.plan.scale_pods + 1):
            role = f"scale-{number}"
            pod = Pod(
                role,
                self._namespace(f"{self.name}-{role}"),
                self.cgroup.child(role),
                str(SCALE_V4[1 + number]),
                None,
                node_cgroup=self.cgroup,
            )
            self._wire(pod, prefixlen=SCALE_V4.prefixlen, gateway=node_v4)
            self.pods[role] = pod

    def _add_other_dns(self, dns: Pod):
        with Netlink(dns.netns) as ns:  # on eth0: IPv6 answers neighbour solicitations only for its own
            eth0 = ns.link_lookup(ifname="eth0")[0]
            ns.addr("add", index=eth0, address=OTHER_DNS[0], prefixlen=24)
            if self.plan.ipv6:
                ns.addr("add", index=eth0, address=OTHER_DNS[1], prefixlen=64, flags=IFA_F_NODAD)

    def _wire(self, pod: Pod, prefixlen: int = 24, gateway: str = NODE_V4):
        """A veth from the node's bridge to the pod's eth0, addresses and default routes."""
        name = f"v-{pod.role}"[:15]  # IFNAMSIZ; the roles differ in their first 13 characters
        with Netlink(self.node) as node:
            node.link("add", ifname=name, kind="veth", peer={"ifname": "eth0", "net_ns_fd": pod.netns})
            veth = node.link_lookup(ifname=name)[0]
            node.link("set", index=veth, master=node.link_lookup(ifname="br0")[0], state="up")
        with Netlink(pod.netns) as ns:
            eth0 = ns.link_lookup(ifname="eth0")[0]
            ns.link("set", index=eth0, state="up")
            ns.addr("add", index=eth0, address=pod.ipv4, prefixlen=prefixlen)
            ns.route("add", dst="0.0.0.0/0", gateway=gateway)
            if pod.ipv6:
                ns.addr("add", index=eth0, address=pod.ipv6, prefixlen=64, flags=IFA_F_NODAD)
                ns.route("add", dst="::/0", gateway=NODE_V6, family=10)
        self._step("lab:wired")
