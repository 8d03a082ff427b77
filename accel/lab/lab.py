"""A lab of network-namespace "pods" on one node, for capture comparisons and benchmarks.

    node namespace: bridge br0 198.18.0.1/24, 2001:db8:18::1/64, forwarding on,
                    routes to the service addresses via the remote pod
      |- pod     198.18.0.10   the pod under test: app servers, sidecar, captured by a backend
      |- remote  198.18.0.20   another node's pod: answers the service addresses and is an
      |                        inbound client
      '- dns     198.18.0.53   the pod's resolver (and 198.18.0.54, a DNS server the pod's
                               resolv.conf does not name)

Addresses come from benchmarking and documentation ranges, and the node namespace has no link
out, so lab traffic cannot leave the machine even when capture fails. Every namespace, cgroup
and file carries the lab's unique name and is removed on exit, on failure and on Ctrl-C.
"""

from __future__ import annotations

import json
import pwd
import grp
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import NetNS, netns

from .. import process
from ..cgroup import Cgroup, cgroup2_mount
from ..netns import unique_name

LAB_PREFIX = "accel-lab"
AGENT = Path(__file__).with_name("agent.py")
PYTHON = "/usr/bin/python3"  # Debian's: the proxy uid can run it, and it cannot read a venv under /root
PROXY_USER = "istio-proxy"
PROXY_ID = 1337
IFA_F_NODAD = 0x02  # no duplicate address detection: IPv6 addresses are usable at once

NODE_V4, NODE_V6 = "198.18.0.1", "2001:db8:18::1"
POD_ADDRESSES = {
    "pod": ("198.18.0.10", "2001:db8:18::10"),
    "remote": ("198.18.0.20", "2001:db8:18::20"),
    "dns": ("198.18.0.53", "2001:db8:18::53"),
}
OTHER_DNS = ("198.18.0.54", "2001:db8:18::54")  # a DNS server that is not the pod's resolver
LAB_NETWORKS = ("198.18.0.0/24", "2001:db8:18::/64")


class LabError(RuntimeError):
    pass


@dataclass(frozen=True)
class SidecarConfig:
    outbound_port: int
    inbound_port: int
    dns_port: int
    uid: int
    gid: int
    transparent: bool = False  # TPROXY: the inbound listener accepts for any address


@dataclass(frozen=True)
class LabPlan:
    ipv6: bool = False
    pod_tcp_ports: tuple[int, ...] = (8080,)
    remote_tcp_ports: tuple[int, ...] = (8080,)
    remote_udp_ports: tuple[int, ...] = ()
    service_addresses: tuple[str, ...] = ()  # answered by the remote pod, routed by the node
    sidecar: SidecarConfig | None = None
    recording_agents: bool = True  # False: bare pods (pod, remote) for processes of one's own


@dataclass
class Pod:
    role: str
    netns: str
    cgroup: Cgroup
    ipv4: str
    ipv6: str | None
    node_cgroup: Cgroup | None = None  # the cgroup above every pod: where node-wide BPF attaches

    def address(self, version: int) -> str:
        return self.ipv4 if version == 4 else self.ipv6


@dataclass
class Lab:
    plan: LabPlan
    name: str = field(default_factory=lambda: unique_name(LAB_PREFIX))

    def __post_init__(self):
        self.pods: dict[str, Pod] = {}
        self.node = f"{self.name}-node"
        self.workdir = Path("/tmp") / self.name
        self.log = self.workdir / "events.jsonl"
        self.cgroup: Cgroup | None = None
        self._namespaces: list[str] = []
        self._agents: list[subprocess.Popen] = []

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self.build()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc):
        self.destroy()

    def build(self):
        ensure_proxy_user()
        self.workdir.mkdir(mode=0o755)
        self.workdir.chmod(0o755)
        shutil.copy(AGENT, self.workdir / "agent.py")
        self.log.touch()
        self.log.chmod(0o666)  # the sidecar writes it as the proxy uid
        self.cgroup = Cgroup(cgroup2_mount() / self.name)  # known before it exists, for destroy()
        self.cgroup.path.mkdir()
        self._build_network()
        if self.plan.recording_agents:
            self._start_agents()

    def destroy(self):
        """Remove everything the lab made; keeps going past failures and reports them at the end."""
        problems = []
        for agent in self._agents:
            if agent.poll() is None:
                agent.terminate()
        for agent in self._agents:
            try:
                agent.wait(timeout=3)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        if self.cgroup is not None:
            try:
                self.cgroup.remove()  # also kills anything our agents left behind
            except OSError as error:
                problems.append(f"cgroup {self.cgroup.path}: {error}")
        existing = set(netns.listnetns())
        for name in reversed(self._namespaces):
            if name not in existing:
                continue
            try:
                netns.remove(name)
            except OSError as error:
                problems.append(f"netns {name}: {error}")
        shutil.rmtree(self.workdir, ignore_errors=True)
        if problems:
            print(f"accel: lab {self.name}: cleanup left: {'; '.join(problems)}", file=sys.stderr)

    # -- network ----------------------------------------------------------------------------

    def _namespace(self, name: str) -> str:
        self._namespaces.append(name)  # first, so that destroy() also covers an interrupted create
        process.run(["ip", "netns", "add", name]).check_returncode()
        with NetNS(name) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        settings = {"net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.default.rp_filter": "0",
                    # no duplicate address detection: link-local addresses are usable at once
                    "net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0"}
        for key, value in settings.items():
            sysctl(name, key, value)
        return name

    def _build_network(self):
        plan = self.plan
        self._namespace(self.node)
        sysctl(self.node, "net.ipv4.ip_forward", "1")
        if plan.ipv6:
            sysctl(self.node, "net.ipv6.conf.all.forwarding", "1")
        with NetNS(self.node) as node:
            # Without multicast snooping the bridge floods IPv6 neighbour solicitations, which it
            # otherwise drops until it has seen MLD reports from fresh ports.
            node.link("add", ifname="br0", kind="bridge", br_mcast_snooping=0)
            bridge = node.link_lookup(ifname="br0")[0]
            node.link("set", index=bridge, state="up")
            node.addr("add", index=bridge, address=NODE_V4, prefixlen=24)
            if plan.ipv6:
                node.addr("add", index=bridge, address=NODE_V6, prefixlen=64, flags=IFA_F_NODAD)
        roles = POD_ADDRESSES if plan.recording_agents else ("pod", "remote")
        for role in roles:
            ipv4, ipv6 = POD_ADDRESSES[role]
            pod = Pod(role, self._namespace(f"{self.name}-{role}"), self.cgroup.child(role), ipv4,
                      ipv6 if plan.ipv6 else None, node_cgroup=self.cgroup)
            self._wire(pod)
            self.pods[role] = pod
        with NetNS(self.pods["pod"].netns) as ns:
            lo = ns.link_lookup(ifname="lo")[0]
            if plan.ipv6:  # Istio adds ::6, the IPv6 inbound passthrough source, to lo
                ns.addr("add", index=lo, address="::6", prefixlen=128, flags=IFA_F_NODAD)
        if "dns" in self.pods:
            self._add_other_dns(self.pods["dns"])
        remote = self.pods["remote"]
        with NetNS(remote.netns) as ns, NetNS(self.node) as node:
            lo = ns.link_lookup(ifname="lo")[0]
            for address in plan.service_addresses:  # off-link: on lo, routed by the node
                v6 = ":" in address
                ns.addr("add", index=lo, address=address, prefixlen=128 if v6 else 32,
                        **({"flags": IFA_F_NODAD} if v6 else {}))
                node.route("add", dst=f"{address}/{128 if v6 else 32}", gateway=remote.address(6 if v6 else 4),
                           family=10 if v6 else 2)

    def _add_other_dns(self, dns: Pod):
        with NetNS(dns.netns) as ns:  # on eth0: IPv6 answers neighbour solicitations only for its own
            eth0 = ns.link_lookup(ifname="eth0")[0]
            ns.addr("add", index=eth0, address=OTHER_DNS[0], prefixlen=24)
            if self.plan.ipv6:
                ns.addr("add", index=eth0, address=OTHER_DNS[1], prefixlen=64, flags=IFA_F_NODAD)

    def _wire(self, pod: Pod):
        """A veth from the node's bridge to the pod's eth0, addresses and default routes."""
        with NetNS(self.node) as node:
            node.link("add", ifname=f"v-{pod.role}", kind="veth", peer={"ifname": "eth0", "net_ns_fd": pod.netns})
            veth = node.link_lookup(ifname=f"v-{pod.role}")[0]
            node.link("set", index=veth, master=node.link_lookup(ifname="br0")[0], state="up")
        with NetNS(pod.netns) as ns:
            eth0 = ns.link_lookup(ifname="eth0")[0]
            ns.link("set", index=eth0, state="up")
            ns.addr("add", index=eth0, address=pod.ipv4, prefixlen=24)
            ns.route("add", dst="0.0.0.0/0", gateway=NODE_V4)
            if pod.ipv6:
                ns.addr("add", index=eth0, address=pod.ipv6, prefixlen=64, flags=IFA_F_NODAD)
                ns.route("add", dst="::/0", gateway=NODE_V6, family=10)

    # -- processes --------------------------------------------------------------------------

    def _agent_command(self, *args: str) -> list[str]:
        return [PYTHON, "-I", "-S", str(self.workdir / "agent.py"), *args]

    def _start(self, pod: Pod, *args: str):
        agent = process.spawn(self._agent_command(*args), netns=pod.netns, cgroup=pod.cgroup,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._agents.append(agent)
        return agent

    def _start_agents(self):
        plan, log = self.plan, str(self.log)
        started = [
            self._start(self.pods["pod"], "server", "--name", "pod", "--log", log,
                        *_flags("--tcp", plan.pod_tcp_ports)),
            self._start(self.pods["remote"], "server", "--name", "remote", "--log", log,
                        *_flags("--tcp", plan.remote_tcp_ports), *_flags("--udp", plan.remote_udp_ports)),
            self._start(self.pods["dns"], "server", "--name", "dns", "--log", log, "--dns", "53"),
        ]
        if plan.sidecar:
            car = plan.sidecar
            started.append(self._start(
                self.pods["pod"], "sidecar", "--log", log, "--outbound", str(car.outbound_port),
                "--inbound", str(car.inbound_port), "--dns", str(car.dns_port), "--uid", str(car.uid),
                "--gid", str(car.gid), "--upstream-dns", POD_ADDRESSES["dns"][0],
                *(["--transparent"] if car.transparent else [])))
        for agent in started:
            line = agent.stdout.readline()
            if line.strip() != "ready":
                agent.kill()
                raise LabError(f"lab agent {' '.join(agent.args[4:6])} did not start: "
                               f"{agent.stderr.read().strip() or line.strip()}")

    def start(self, role: str, argv: list[str], *, uid: int | None = None, gid: int | None = None,
              listens: tuple[int, ...] = (), cpus: set[int] | None = None) -> subprocess.Popen:
        """Another process in a pod (a real proxy, a server), removed with the lab; waits until
        it listens on `listens` (TCP ports)."""
        pod = self.pods[role]
        started = process.spawn(argv, netns=pod.netns, cgroup=pod.cgroup, uid=uid, gid=gid, cpus=cpus,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._agents.append(started)

        def listening():
            table = process.run(["ss", "-Hltn"], netns=pod.netns).stdout
            return all(any(line.split()[3].endswith(f":{port}") for line in table.splitlines()) for port in listens)

        if not wait_for(listening, timeout=10) or started.poll() is not None:
            started.kill()
            raise LabError(f"{' '.join(argv[:2])} did not start in {role}: {started.stderr.read().decode()[-500:]}")
        return started

    def agent(self, role: str, *args: str, uid: int = 0, gid: int = 0, timeout: float = 120) -> str:
        """Run an agent role (burst, http-get, ...) in a pod to completion; its standard output."""
        pod = self.pods[role]
        result = process.run(self._agent_command(*args), netns=pod.netns, cgroup=pod.cgroup, uid=uid, gid=gid,
                             timeout=timeout)
        if result.returncode != 0:
            raise LabError(f"agent {args[0]} in {role} failed: {result.stderr.strip()[-500:]}")
        return result.stdout

    def client(self, role: str, *, proto: str, dst: str, port: int, token: str, uid: int, gid: int,
               bind: str | None = None, timeout: float = 2.0) -> dict:
        """Run one request from a pod, as uid/gid; returns what the client saw."""
        pod = self.pods[role]
        argv = self._agent_command("client", "--proto", proto, "--dst", dst, "--port", str(port),
                                   "--token", token, "--timeout", str(timeout), *(["--bind", bind] if bind else []))
        result = process.run(argv, netns=pod.netns, cgroup=pod.cgroup, uid=uid, gid=gid, timeout=timeout + 10)
        if result.returncode != 0:
            return {"result": f"client-failed:{result.stderr.strip()[-200:]}"}
        return json.loads(result.stdout)

    def events(self, token: str | None = None) -> list[dict]:
        with open(self.log, encoding="utf-8") as log:
            events = [json.loads(line) for line in log if line.strip()]
        if token is not None:
            events = [e for e in events if e.get("token") == token]
        return sorted(events, key=lambda e: e["time_ns"])

    def exists(self) -> bool:
        names = set(netns.listnetns())
        return bool(names & set(self._namespaces)) or (self.cgroup is not None and self.cgroup.exists()) \
            or self.workdir.exists()


def conntrack_entries(netns: str) -> int:
    """Conntrack entries in this namespace now. Entries of closed TCP connections stay 120 s
    (TIME_WAIT), UDP ones 30 s, so at the end of a run this counts what the run created."""
    count = process.run(["cat", "/proc/sys/net/netfilter/nf_conntrack_count"], netns=netns)
    return int(count.stdout) if count.returncode == 0 else 0


def _flags(flag: str, values) -> list[str]:
    return [part for value in values for part in (flag, str(value))]


def sysctl(namespace: str, key: str, value: str):
    process.run(["sysctl", "-q", "-w", f"{key}={value}"], netns=namespace).check_returncode()


def ensure_proxy_user():
    """The sidecar's identity, as in Istio's images: user and group istio-proxy, 1337."""
    try:
        grp.getgrgid(PROXY_ID)
    except KeyError:
        subprocess.run(["groupadd", "--system", "--gid", str(PROXY_ID), PROXY_USER], check=True,
                       capture_output=True)
    try:
        pwd.getpwuid(PROXY_ID)
    except KeyError:
        subprocess.run(["useradd", "--system", "--uid", str(PROXY_ID), "--gid", str(PROXY_ID),
                        "--no-create-home", "--shell", "/usr/sbin/nologin", PROXY_USER], check=True,
                       capture_output=True)


def leftovers(prefix: str = LAB_PREFIX) -> dict[str, list[str]]:
    """Objects a crashed lab may have left: only those carrying the lab's name prefix."""
    root = cgroup2_mount()
    return {
        "namespaces": sorted(n for n in netns.listnetns() if n.startswith(prefix + "-")),
        "cgroups": sorted(str(p) for p in root.glob(prefix + "-*") if p.is_dir()),
        "directories": sorted(str(p) for p in Path("/tmp").glob(prefix + "-*") if p.is_dir()),
    }


def cleanup_leftovers(prefix: str = LAB_PREFIX) -> dict[str, list[str]]:
    """Remove what leftovers() finds: processes in the lab's cgroups first, then the rest."""
    found = leftovers(prefix)
    for path in found["cgroups"]:
        Cgroup(Path(path)).remove()
    for name in found["namespaces"]:
        netns.remove(name)
    for path in found["directories"]:
        shutil.rmtree(path, ignore_errors=True)
    return found


def wait_for(condition, timeout: float = 5.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()
