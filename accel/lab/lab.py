"""A lab of network-namespace "pods" on one node, for capture comparisons and benchmarks.

    node namespace: bridge br0 198.18.0.1/24, 2001:db8:18::1/64, forwarding on,
                    routes to the service addresses via the remote pod
      |- pod     198.18.0.10   the pod under test: app servers, sidecar, captured by a backend
      |- ...                   more pods under test if the plan asks (one in a user namespace
      |                        of its own, one whose sidecar listens inbound on IPv6 only)
      |- remote  198.18.0.20   another node's pod: answers the service addresses and is an
      |                        inbound client
      '- dns     198.18.0.53   the pod's resolver (and 198.18.0.54, a DNS server the pod's
                               resolv.conf does not name)

Addresses come from benchmarking and documentation ranges, and the node namespace has no link
out, so lab traffic cannot leave the machine even when capture fails. Every namespace, cgroup
and file carries the lab's unique name (with the PID of the process that made it) and is removed
on exit, on failure and on Ctrl-C; `accel lab cleanup` removes what a process that no longer
exists left, never what a live run is using.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .. import cancel, process
from ..cgroup import Cgroup, cgroup2_mount
from ..constants import INBOUND_CAPTURE_PORT, PROXY_GID, PROXY_PORT, PROXY_UID
from ..netns import Netns, unique_name
from .install import PYTHON, build_agent, ensure_proxy_user
from .network import LabNetwork
from .plan import POD_ADDRESSES, SCALE_SIDECAR, LabError, LabPlan, MeshedPod, Pod, SidecarConfig
from .wait import wait_for

LAB_PREFIX = "accel-lab"
CLIENT_GRACE = 30  # seconds a client may run past its own timeout before it is killed
AGENT_START = 60  # seconds an agent may take to say it is ready (it takes ~50 ms; this is for a stalled machine)


@dataclass
class Lab(LabNetwork):
    plan: LabPlan
    name: str = field(default_factory=lambda: unique_name(LAB_PREFIX))

    def __post_init__(self) -> None:
        self.pods: dict[str, Pod] = {}
        self.node = f"{self.name}-node"
        self.workdir = Path("/tmp") / self.name
        self.log = self.workdir / "events.jsonl"
        self.cgroup: Cgroup | None = None
        self._log_fd: int | None = None  # the agents append to it; only the lab can open the file
        self._namespaces: list[Netns] = []
        self._agents: list[subprocess.Popen] = []
        self._agent_pod: dict[int, str] = {}  # agent PID -> the role of its pod

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
        self.workdir.chmod(0o755)  # the agent, run as the proxy uid, must read agent.pyz
        build_agent(self.workdir / "agent.pyz")
        self._log_fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        self._step("lab:workdir")
        self.cgroup = Cgroup(cgroup2_mount() / self.name)  # known before it exists, for destroy()
        self.cgroup.path.mkdir()
        self._build_network()
        self._step("lab:network")
        if self.plan.recording_agents:
            self._start_agents()
        if self.plan.scale_pods:
            self._start_scale_sidecars()
        self._step("lab:ready")

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
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None
        if self.cgroup is not None:
            try:
                self.cgroup.remove()  # also kills anything our agents left behind
            except OSError as error:
                problems.append(f"cgroup {self.cgroup.path}: {error}")
        for namespace in reversed(self._namespaces):
            try:
                namespace.remove()
            except (OSError, process.CommandError) as error:
                problems.append(f"netns {namespace.name}: {error}")
        shutil.rmtree(self.workdir, ignore_errors=True)
        if problems:
            print(f"accel: lab {self.name}: cleanup left: {'; '.join(problems)}", file=sys.stderr)

    # -- processes --------------------------------------------------------------------------

    def _agent_command(self, *args: str) -> list[str]:
        return [PYTHON, "-I", "-S", str(self.workdir / "agent.pyz"), *args]

    def _start(self, pod: Pod, *args: str):
        cancel.check()
        agent = process.spawn(
            self._agent_command(*args),
            netns=pod.netns,
            cgroup=pod.cgroup,
            userns=pod.userns,
            pass_fds=(self._log_fd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._agents.append(agent)
        self._agent_pod[agent.pid] = pod.role
        self._step("lab:agent")
        return agent

    def _start_agents(self):
        plan, log = self.plan, str(self._log_fd)
        started = [
            self._start(
                self.pods["remote"],
                "server",
                "--name",
                "remote",
                "--log-fd",
                log,
                *_flags("--tcp", plan.remote_tcp_ports),
                *_flags("--udp", plan.remote_udp_ports),
            ),
            self._start(self.pods["dns"], "server", "--name", "dns", "--log-fd", log, "--dns", "53", "--udplite", "53"),
        ]
        for meshed in plan.meshed:
            pod = self.pods[meshed.role]
            started.append(
                self._start(
                    pod,
                    "server",
                    "--name",
                    meshed.role,
                    "--log-fd",
                    log,
                    *_flags("--tcp", plan.pod_tcp_ports),
                    *_flags("--dns", plan.pod_dns_ports),
                )
            )
            if plan.sidecar:
                started.append(self._start(pod, *self._sidecar_args(meshed)))
        for agent in started:
            self._wait_ready(agent)

    def _start_scale_sidecars(self):
        """One HAProxy a scale pod, as the proxy uid: listeners for the capture to find, idle."""
        car = self.plan.sidecar or SidecarConfig(PROXY_PORT, INBOUND_CAPTURE_PORT, 15053, PROXY_UID, PROXY_GID)
        config = self.workdir / "scale-sidecar.cfg"
        config.write_text(SCALE_SIDECAR.format(outbound=car.outbound_port, inbound=car.inbound_port))
        config.chmod(0o644)
        for number in range(1, self.plan.scale_pods + 1):
            self.start(
                f"scale-{number}",
                ["haproxy", "-db", "-f", str(config)],
                uid=car.uid,
                gid=car.gid,
                listens=(car.outbound_port, car.inbound_port),
            )

    def _sidecar_args(self, meshed: MeshedPod) -> list[str]:
        car = self.plan.sidecar
        assert car is not None  # only a plan with a sidecar starts one
        return [
            "sidecar",
            "--log-fd",
            str(self._log_fd),
            "--outbound",
            str(car.outbound_port),
            "--inbound",
            str(car.inbound_port),
            "--dns",
            str(car.dns_port),
            "--uid",
            str(car.uid),
            "--gid",
            str(car.gid),
            "--upstream-dns",
            POD_ADDRESSES["dns"][0],
            "--inbound-families",
            ",".join(map(str, meshed.inbound_families)),
            *(["--transparent"] if car.transparent else []),
        ]

    @staticmethod
    def _wait_ready(agent: subprocess.Popen) -> None:
        assert agent.stdout is not None and agent.stderr is not None  # _start() made both pipes
        assert isinstance(agent.args, list)  # the argv _start() gave it
        # waits on the agent's pipe and on a signal at once: a SIGTERM meanwhile stops the wait
        line = agent.stdout.readline() if cancel.wait_readable(agent.stdout.fileno(), AGENT_START) else ""
        if line.strip() != "ready":
            agent.kill()
            raise LabError(
                f"lab agent {' '.join(agent.args[4:6])} did not start: {agent.stderr.read().strip() or line.strip()}"
            )

    def start_agent(self, role: str, *args: str) -> subprocess.Popen:
        """Another long-running agent role in a pod (e.g. stream-server), logging events to the
        lab's log like the others; removed with the lab."""
        agent = self._start(self.pods[role], *args, "--log-fd", str(self._log_fd))
        self._wait_ready(agent)
        return agent

    def sidecar(self, role: str) -> subprocess.Popen | None:
        """The running sidecar agent of a meshed pod, if any."""
        for agent in self._agents:
            assert isinstance(agent.args, (list, tuple))  # every process here was given an argv
            if agent.poll() is None and "sidecar" in agent.args and self._agent_pod.get(agent.pid) == role:
                return agent
        return None

    def restart_sidecar(self, role: str) -> subprocess.Popen:
        """Kill a meshed pod's sidecar (SIGKILL, as a crash) and start it again."""
        old = self.sidecar(role)
        if old is not None:
            old.kill()
            old.wait()
        meshed = next(m for m in self.plan.meshed if m.role == role)
        agent = self._start(self.pods[role], *self._sidecar_args(meshed))
        self._wait_ready(agent)
        return agent

    def start(
        self,
        role: str,
        argv: list[str],
        *,
        uid: int | None = None,
        gid: int | None = None,
        listens: tuple[int, ...] = (),
        cpus: set[int] | None = None,
    ) -> subprocess.Popen:
        """Another process in a pod (a real proxy, a server), removed with the lab; waits until
        it listens on `listens` (TCP ports)."""
        pod = self.pods[role]
        started = process.spawn(
            argv,
            netns=pod.netns,
            cgroup=pod.cgroup,
            uid=uid,
            gid=gid,
            cpus=cpus,
            userns=pod.userns,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._agents.append(started)

        def listening():
            table = process.run(["ss", "-Hltn"], netns=pod.netns).stdout
            return all(any(line.split()[3].endswith(f":{port}") for line in table.splitlines()) for port in listens)

        if not wait_for(listening) or started.poll() is not None:
            started.kill()
            assert started.stderr is not None  # stderr=PIPE above
            raise LabError(f"{' '.join(argv[:2])} did not start in {role}: {started.stderr.read().decode()[-500:]}")
        return started

    def agent(self, role: str, *args: str, uid: int = 0, gid: int = 0, timeout: float = 120) -> str:
        """Run an agent role (burst, http-get, ...) in a pod to completion; its standard output."""
        pod = self.pods[role]
        result = process.run(
            self._agent_command(*args),
            netns=pod.netns,
            cgroup=pod.cgroup,
            uid=uid,
            gid=gid,
            userns=pod.userns,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise LabError(f"agent {args[0]} in {role} failed: {result.stderr.strip()[-500:]}")
        return result.stdout

    def burst(
        self,
        role: str,
        targets: list[dict],
        *,
        concurrency: int,
        until: Path | None = None,
        request_timeout: float | None = None,
        uid: int = 0,
        gid: int = 0,
        timeout: float = 120,
        name: str = "burst",
    ) -> list[dict]:
        """Each target {dst, port, token, proto} once (or again and again until the file `until`
        exists), `concurrency` at a time, from `role` as uid/gid; a result a request."""
        path = self.workdir / f"{name}-targets.json"
        path.write_text(json.dumps(targets))
        args = ["burst", "--targets", str(path), "--concurrency", str(concurrency)]
        args += ["--timeout", str(request_timeout)] if request_timeout is not None else []
        args += ["--until", str(until)] if until is not None else []
        return json.loads(self.agent(role, *args, uid=uid, gid=gid, timeout=timeout))

    def client(
        self,
        role: str,
        *,
        proto: str,
        dst: str,
        port: int,
        token: str,
        uid: int,
        gid: int,
        bind: str | None = None,
        first: tuple[str, str] | None = None,
        timeout: float = 2.0,
        become: tuple[tuple[int, int], ...] = (),
    ) -> dict:
        """Run one request from a pod, as uid/gid; returns what the client saw. `first`: what the
        same socket does before, ("dns", server) or ("connect", "addr:port"); `become`: the
        (uid, gid) steps the process takes after starting, before making its socket."""
        pod = self.pods[role]
        argv = self._agent_command(
            "client",
            "--proto",
            proto,
            "--dst",
            dst,
            "--port",
            str(port),
            "--token",
            token,
            "--timeout",
            str(timeout),
            *(["--bind", bind] if bind else []),
            *([f"--first-{first[0]}", first[1]] if first else []),
            *(["--become", ",".join(f"{u}:{g}" for u, g in become)] if become else []),
        )
        # The wait allows for a stalled machine (a CI run once saw a client that had printed its
        # timeout still alive 10 s later): only a client that never ends should abort a run.
        result = process.run(
            argv,
            netns=pod.netns,
            cgroup=pod.cgroup,
            uid=uid,
            gid=gid,
            userns=pod.userns,
            timeout=timeout + CLIENT_GRACE,
        )
        if result.returncode != 0:
            return {"result": f"client-failed:{result.stderr.strip()[-200:]}"}
        return json.loads(result.stdout)

    def events(self, token: str | None = None) -> list[dict]:
        """The events logged so far (of `token`'s request), in time order (read_events)."""
        return read_events(self.log, token)

    def exists(self) -> bool:
        return (
            any(namespace.exists() for namespace in self._namespaces)
            or (self.cgroup is not None and self.cgroup.exists())
            or self.workdir.exists()
        )


def read_events(log: Path, token: str | None = None) -> list[dict]:
    """The events in an agents' log so far (of `token`'s request), in time order. An agent may
    be writing a line as it is read: a write that crosses a page boundary becomes visible a page
    at a time, so the text after the last newline is a line in flight, not an event yet. (Each
    agent logs what it saw before it answers, so a request's own events are complete by the
    time its client has its answer.)"""
    complete = log.read_text(encoding="utf-8").rpartition("\n")[0]
    events = [json.loads(line) for line in complete.splitlines() if line.strip()]
    if token is not None:
        events = [e for e in events if e.get("token") == token]
    return sorted(events, key=lambda e: e["time_ns"])


def conntrack_entries(netns: str) -> int:
    """Conntrack entries in this namespace now. Entries of closed TCP connections stay 120 s
    (TIME_WAIT), UDP ones 30 s, so at the end of a run this counts what the run created. A count
    that cannot be read is an error: reporting 0 would make any backend look conntrack-free."""
    try:  # /proc/sys/net shows the namespace of the thread that opens it
        return int(process.in_netns(netns, Path("/proc/sys/net/netfilter/nf_conntrack_count").read_text))
    except (OSError, ValueError) as error:
        raise LabError(f"cannot read the conntrack count in {netns} (is nf_conntrack loaded?): {error}") from None


def _flags(flag: str, values) -> list[str]:
    return [part for value in values for part in (flag, str(value))]
