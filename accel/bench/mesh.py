"""One benchmark mode's world: a client pod and a server pod, each with its sidecar, on one node.

    client pod 198.18.0.10                              server pod 198.18.0.20
      load generator (uid 1000) --capture--> HAProxy     HAProxy :15006 <--capture-- from the node
                                  :15001 (uid 1337)  --->  (uid 1337)  --> nginx :8080 (1 worker)

Both capture directions are paid, as between two meshed pods. The server pod also answers 64
service addresses on port 80 (nginx), the churn workload's destinations. The pods keep the
kernel's default sysctls (port range, TIME_WAIT reuse), as a user's pods have them. Every mode gets a world of its
own, built alike, so that no mode inherits another's conntrack table or TIME_WAIT sockets:

- none: the client dials the server directly; the sidecars idle (the ceiling);
- explicit: the client dials 127.0.0.1:15001 itself and each HAProxy has a fixed server; no
  rules and no capture (the floor any interception can at best equal);
- any backend name (iptables-nft, iptables-legacy, nftables, nftables-sets, ebpf): the backend
  applies the spec to both pods and each HAProxy forwards to the original destination
  (`server s 0.0.0.0:0`).

The pods' processes are pinned to the measuring CPU; the sidecars' stats sockets prove, before
anything is measured, that traffic really takes the path the mode claims.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from .. import constants, process
from ..backends import NftablesBackend, get_backend
from ..backends.libnft import listing
from ..lab import POD_ADDRESSES, Lab, LabPlan, conntrack_entries
from ..spec import CaptureSpec

SERVER_PORT = 8080
OUTBOUND_PORT, INBOUND_PORT = constants.PROXY_PORT, constants.INBOUND_CAPTURE_PORT
PROXY_UID = constants.PROXY_UID
APP_UID = 1000
CLIENT, SERVER = "pod", "remote"  # the lab's pod under test is the client, its remote pod the server
SERVER_ADDRESS = POD_ADDRESSES[SERVER][0]
DIRECT_MODES = ("none", "explicit")
# The churn workload's destinations: services on port 80, answered by the server pod's nginx.
CHURN_SERVICES = tuple(f"203.0.113.{n}" for n in range(1, 65))
CHURN_PORT = 80
# What bounds connection churn, as the pods have it: the kernel's defaults (nothing is set).
SYSCTLS = ("net.ipv4.ip_local_port_range", "net.ipv4.tcp_tw_reuse", "net.ipv4.tcp_fin_timeout", "net.core.somaxconn")

HAPROXY = """global
    nbthread 1
    maxconn 5000
    stats socket {stats} mode 600 level user
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend {frontend}
    bind :{port}
    default_backend upstream
backend upstream
    server s {server}
"""

NGINX = """worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log;
user nobody nogroup;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir}/nginx-tmp;
    proxy_temp_path {dir}/nginx-tmp;
    fastcgi_temp_path {dir}/nginx-tmp;
    uwsgi_temp_path {dir}/nginx-tmp;
    scgi_temp_path {dir}/nginx-tmp;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    sendfile on;
    default_type application/octet-stream;
    server {{
        listen {port} backlog=4096;
        listen {churn_port} backlog=4096;
        location = / {{ return 200 "ok\\n"; }}
        location = /bulk {{ alias {bulk}; }}
    }}
}}
"""


class MeshError(RuntimeError):
    pass


class Mesh:
    """A client/server pod pair for one mode. Use as a context manager."""

    def __init__(
        self, mode: str, spec: CaptureSpec, bulk_file: Path, cpus: set[int] | None, *, scale_pods: int = 0, capture=None
    ):
        """`scale_pods`: that many more idle pods in the lab (LabPlan.scale_pods); `capture`: what
        applies the spec instead of the mode's backend (a node's pod add: scale.NodeCapture)."""
        self.mode, self.spec, self.bulk_file, self.cpus = mode, spec, bulk_file, cpus
        self.lab = Lab(LabPlan(recording_agents=False, scale_pods=scale_pods, service_addresses=CHURN_SERVICES))
        self.backend = capture or (None if mode in DIRECT_MODES else get_backend(mode))

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Mesh:
        self.lab.__enter__()
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        try:
            if self.backend is not None:
                for role in (CLIENT, SERVER):
                    self.backend.remove(self.lab.pods[role])
                if hasattr(self.backend, "close"):  # before the lab's cgroup goes
                    self.backend.close()
        finally:
            self.lab.__exit__(*exc)

    def _start(self):
        lab, work = self.lab, self.lab.workdir
        (work / "nginx-tmp").mkdir()
        (work / "haproxy").mkdir()  # the sidecars' stats sockets, made by the proxy uid
        os.chown(work / "haproxy", PROXY_UID, PROXY_UID)
        nginx = work / "nginx.conf"
        nginx.write_text(NGINX.format(dir=work, port=SERVER_PORT, churn_port=CHURN_PORT, bulk=self.bulk_file))
        lab.start(
            SERVER,
            ["nginx", "-e", str(work / "nginx-error.log"), "-c", str(nginx), "-g", "daemon off;"],
            listens=(SERVER_PORT,),
            cpus=self.cpus,
        )
        explicit = self.mode == "explicit"
        sidecars = {
            CLIENT: ("outbound", OUTBOUND_PORT, f"{SERVER_ADDRESS}:{INBOUND_PORT}" if explicit else "0.0.0.0:0"),
            SERVER: (
                "inbound",
                INBOUND_PORT,
                (f"{SERVER_ADDRESS}:{SERVER_PORT}" if explicit else "0.0.0.0:0")
                + f" source {constants.INBOUND_PASSTHROUGH_SOURCE[4]}",
            ),
        }
        for role, (frontend, port, server) in sidecars.items():
            config = work / f"haproxy-{role}.cfg"
            config.write_text(
                HAPROXY.format(stats=self.stats_socket(role), frontend=frontend, port=port, server=server)
            )
            lab.start(
                role,
                ["haproxy", "-db", "-f", str(config)],
                uid=PROXY_UID,
                gid=PROXY_UID,
                listens=(port,),
                cpus=self.cpus,
            )
        self.apply(self.spec)

    def apply(self, spec: CaptureSpec) -> None:
        """(Re)apply the capture for `spec` to both pods (rule scaling changes the spec)."""
        self.spec = spec
        if self.backend is None:
            return
        for role in (CLIENT, SERVER):
            pod = self.lab.pods[role]
            self.backend.remove(pod)
            self.backend.apply(pod, spec)

    # -- what the client runs -----------------------------------------------------------------

    def target(self) -> tuple[str, int]:
        """Where the load generator connects: the sidecar itself in explicit mode, else the server."""
        return ("127.0.0.1", OUTBOUND_PORT) if self.mode == "explicit" else (SERVER_ADDRESS, SERVER_PORT)

    def churn_targets(self) -> tuple[list[str], int]:
        """Where the churn workload connects: the sidecar itself in explicit mode, else the
        services (each a destination of its own, as an app's many upstreams are)."""
        return (["127.0.0.1"], OUTBOUND_PORT) if self.mode == "explicit" else (list(CHURN_SERVICES), CHURN_PORT)

    def sysctls(self) -> dict[str, str]:
        """The client pod's settings that bound churn (SYSCTLS), as its namespace has them."""

        def read():
            return {key: " ".join(Path("/proc/sys", key.replace(".", "/")).read_text().split()) for key in SYSCTLS}

        return process.in_netns(self.lab.pods[CLIENT].netns, read)

    def url(self, path: str = "/") -> str:
        address, port = self.target()
        return f"http://{address}:{port}{path}"

    def run_client(self, argv: list[str], timeout: float) -> str:
        """A load generator in the client pod, as an app uid, pinned like the pods; its stdout."""
        pod = self.lab.pods[CLIENT]
        result = process.run(
            argv, netns=pod.netns, cgroup=pod.cgroup, uid=APP_UID, gid=APP_UID, cpus=self.cpus, timeout=timeout
        )
        if result.returncode != 0:
            raise MeshError(f"{self.mode}: {argv[0]} failed: {(result.stderr or result.stdout).strip()[-300:]}")
        return result.stdout

    def flush_conntrack(self) -> None:
        process.run(["conntrack", "-F"], netns=self.lab.pods[CLIENT].netns)

    def conntrack_entries(self) -> int:
        return conntrack_entries(self.lab.pods[CLIENT].netns)

    # -- proof of path and of rule size -------------------------------------------------------

    def capture_entries(self) -> int:
        """What the kernel holds for the capture in the client pod, read back from it: iptables
        rules, nftables rules plus set elements, or the pod's entries in the eBPF prefix trie."""
        pod = self.lab.pods[CLIENT]
        if self.backend is None:
            return 0
        if self.backend.name.startswith("iptables"):
            variant = self.backend.status(pod)["variant"]
            saved = process.run([f"iptables-{variant}-save", "-t", "nat"], netns=pod.netns).stdout
            return sum(line.startswith("-A ") for line in saved.splitlines())
        if self.backend.name.startswith("nftables"):
            assert isinstance(self.backend, NftablesBackend)  # nftables or nftables-sets (never a node's capture)
            ruleset = listing(self.backend.runner, pod.netns)
            rules = sum("rule" in item for item in ruleset)
            elements = sum(len(item["set"].get("elem", [])) for item in ruleset if "set" in item)
            return rules + elements
        return self.backend.status(pod)["prefix_entries"]

    def stats_socket(self, role: str) -> Path:
        return self.lab.workdir / "haproxy" / f"{role}.sock"

    def sidecar_sessions(self) -> dict[str, int]:
        """Sessions each sidecar's frontend has accepted so far (HAProxy's `show stat`, stot)."""
        sessions = {}
        for role in (CLIENT, SERVER):
            with socket.socket(socket.AF_UNIX) as stats:
                stats.settimeout(5)
                stats.connect(str(self.stats_socket(role)))
                stats.sendall(b"show stat -1 1 -1\n")
                text = b"".join(iter(lambda: stats.recv(65536), b"")).decode()
            header, *rows = [line for line in text.splitlines() if line]
            columns = header.lstrip("# ").split(",")
            for row in rows:
                values = dict(zip(columns, row.split(",")))
                if values.get("svname") == "FRONTEND":
                    sessions[role] = int(values["stot"])
        return sessions

    def _settled_sessions(self) -> dict[str, int]:
        """The session counts once they stop moving: after a load run the sidecars may still be
        accepting connections its clients left in their accept queues."""
        counts = self.sidecar_sessions()
        for _ in range(30):
            time.sleep(0.1)
            again = self.sidecar_sessions()
            if again == counts:
                break
            counts = again
        return counts

    def check_path(self) -> None:
        """One request; the sidecars must have carried it exactly when the mode says they do."""
        before = self._settled_sessions()
        address, port = self.target()
        script = (
            f"import socket; s = socket.create_connection(({address!r}, {port}), 5); "
            f"s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n'); "
            "print(s.recv(100).split(b' ')[1].decode())"
        )
        status = self.run_client(["/usr/bin/python3", "-I", "-S", "-c", script], timeout=15).strip()
        after = self.sidecar_sessions()
        carried = {role: after[role] - before[role] for role in after}
        expected = 0 if self.mode == "none" else 1
        if status != "200" or carried != {CLIENT: expected, SERVER: expected}:
            raise MeshError(
                f"{self.mode}: a test request got status {status} and the sidecars carried "
                f"{carried} sessions (expected {expected} each): the mode does not take the "
                "path it claims"
            )
