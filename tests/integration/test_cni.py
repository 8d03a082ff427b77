"""accel-cni in a real CNI chain: Debian's loopback, bridge and host-local plugins, then accel-cni
(installed by `accel cni install`), run the way libcni runs them (tests/cni_chain.py) inside a
"node" network namespace of the test's own, against a node datapath whose cgroup, bpffs and
state directories are the test's own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from accel import process
from accel.cgroup import Cgroup
from accel.lab.install import PYTHON, build_agent, ensure_proxy_user
from accel.lab.lab import read_events
from accel.lab.wait import wait_for
from accel.netns import Netns, unique_name
from accel.node.paths import unmount_bpffs_at
from tests.cni_chain import Chain, PluginFailed

pytestmark = pytest.mark.privileged

TOP = Path(__file__).resolve().parents[2]
ACCEL = str(TOP / ".venv" / "bin" / "accel")
DEBIAN_PLUGINS = Path("/usr/lib/cni")
SUBNET, GATEWAY = "10.99.0.0/24", "10.99.0.1"
APP = 1000
STATUS = {"sidecar.istio.io/status": '{"containers":["istio-proxy"]}'}


class CniNode:
    """A node network namespace with a bridge network (bridge + host-local), accel up at a cgroup
    of the test's own, accel-cni installed after the bridge, and a server at the gateway."""

    def __init__(self, root: Path, backend: str):
        self.root, self.backend = root, backend
        self.bpffs, self.state = root / "bpffs", root / "state"
        self.bin, self.conf_dir, self.annotations = root / "bin", root / "net.d", root / "annotations"
        self.namespaces: list[Netns] = []
        self.agents: list[subprocess.Popen] = []
        self.cgroup: Cgroup | None = None
        self.log_fd: int | None = None

    def build(self) -> None:
        ensure_proxy_user()
        self.root.chmod(0o755)  # agents run as the proxy uid read agent.pyz
        for directory in (self.bin, self.conf_dir, self.annotations, self.root / "cache"):
            directory.mkdir()
        self.cgroup = Cgroup.create(self.root.name)
        self.env = {
            **os.environ,
            "ACCEL_CGROUP": str(self.cgroup.path),
            "ACCEL_BPFFS": str(self.bpffs),
            "ACCEL_STATE_DIR": str(self.state),
        }
        self.node = self.namespace(sysctls={"net.ipv4.ip_forward": "1"})
        self.accel("up", "--backend", self.backend)
        for plugin in ("loopback", "bridge", "host-local"):
            (self.bin / plugin).symlink_to(DEBIAN_PLUGINS / plugin)
        (self.conf_dir / "10-test.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "test-net",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": "cni0",
                            "isGateway": True,
                            "ipMasq": False,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": SUBNET}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(self.root / "ipam"),
                            },
                        }
                    ],
                }
            )
        )
        self.plugin_config = {
            "type": "accel-cni",
            "stateDir": str(self.state),
            "logFile": str(self.root / "cni.log"),
            "podInfo": {"source": "dir", "path": str(self.annotations)},
        }
        self.install(self.plugin_config)
        self.loopback = Chain(
            {"cniVersion": "1.0.0", "name": "lo", "plugins": [{"type": "loopback"}]},
            self.bin,
            self.root / "cache",
            self.node,
        )
        build_agent(self.root / "agent.pyz")
        self.log = self.root / "events.jsonl"
        self.log_fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        self.start(self.node, None, "server", "--name", "remote", "--tcp", "8080")

    def install(self, plugin_config: dict) -> None:
        (self.root / "accel-cni.json").write_text(json.dumps(plugin_config))
        self.accel(
            "cni",
            "install",
            "--conf-dir",
            str(self.conf_dir),
            "--bin-dir",
            str(self.bin),
            "--config",
            str(self.root / "accel-cni.json"),
        )
        self.chain = Chain(
            json.loads((self.conf_dir / "10-test.conflist").read_text()), self.bin, self.root / "cache", self.node
        )

    def destroy(self) -> None:
        for agent in self.agents:
            agent.kill()
            agent.wait()
        if self.log_fd is not None:
            os.close(self.log_fd)
        subprocess.run([ACCEL, "down"], env=self.env, capture_output=True, timeout=120)
        unmount_bpffs_at(self.bpffs)
        for namespace in reversed(self.namespaces):
            namespace.remove()
        if self.cgroup is not None:
            self.cgroup.remove()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- helpers -------------------------------------------------------------------------------

    def accel(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([ACCEL, *args], capture_output=True, text=True, env=self.env, timeout=120)
        if check:
            assert result.returncode == 0, f"accel {' '.join(args)}: {result.stderr}"
        return result

    def json(self, *args: str) -> dict | list:
        return json.loads(self.accel(*args, "--json").stdout)

    def namespace(self, **kwargs) -> str:
        namespace = Netns(unique_name("accel-test"), **kwargs)
        self.namespaces.append(namespace)
        namespace.create()
        return namespace.name

    def pod(self, name: str, annotations: dict | None = None) -> tuple[str, str, str]:
        """A pod's network namespace (path), container id and CNI_ARGS, as a runtime would have
        them; with annotations, its annotation file (the --annotations format)."""
        netns = self.namespace()
        if annotations is not None:
            (self.annotations / f"test_{name}.json").write_text(json.dumps({"annotations": annotations}))
        args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=test;K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={name}"
        return f"/run/netns/{netns}", f"c-{name}", args

    def start(self, netns: str, cgroup: Cgroup | None, *args: str) -> None:
        agent = process.spawn(
            [PYTHON, "-I", "-S", str(self.root / "agent.pyz"), *args, "--log-fd", str(self.log_fd)],
            netns=netns,
            cgroup=cgroup,
            pass_fds=(self.log_fd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.agents.append(agent)
        assert agent.stdout.readline().strip() == "ready", agent.stderr.read()

    def sidecar(self, netns: str, name: str) -> Cgroup:
        """The pod's processes go in a cgroup of their own below the node's, as the kubelet's do."""
        cgroup = self.cgroup.child(name)
        self.start(
            netns,
            cgroup,
            "sidecar",
            "--outbound",
            "15001",
            "--inbound",
            "15006",
            "--dns",
            "15053",
            "--uid",
            "1337",
            "--gid",
            "1337",
            "--upstream-dns",
            GATEWAY,
        )
        return cgroup

    def first_hop(self, netns: str, cgroup: Cgroup, token: str) -> dict | None:
        """Where a connection from the pod's app to the gateway's server went first."""
        process.run(
            [
                PYTHON,
                "-I",
                "-S",
                str(self.root / "agent.pyz"),
                "client",
                "--proto",
                "tcp",
                "--dst",
                GATEWAY,
                "--port",
                "8080",
                "--token",
                token,
            ],
            netns=netns,
            cgroup=cgroup,
            uid=APP,
            gid=APP,
            timeout=15,
        )
        events = read_events(self.log, token)
        return events[0] if events else None

    def left_of(self, pods: list[tuple[str, str, str]]) -> list[str]:
        """Anything of these pods still on the node: state records, pins, map entries or rules."""
        status = self.json("status")
        left = [f"state record of {p['id']}" for p in status["pods"] if p["id"] in {c for _, c, _ in pods}]
        left += [f"pins of {c}" for _, c, _ in pods if (self.bpffs / "accel" / "pods" / c).exists()]
        entries = {m["name"]: m["entries"] for m in status.get("maps", [])}
        left += [f"{name} entries" for name in ("pods", "counters", "sources") if entries.get(name)]
        links = json.loads(process.run(["bpftool", "link", "show", "--json"], check=True).stdout or "[]")
        netns_links = {link.get("netns_ino") for link in links if link.get("type") == "netns"}
        for netns, container, _ in pods:
            if Path(netns).exists():  # a container's namespace goes with it
                rules = process.run(["nft", "list", "ruleset"], netns=netns, check=True).stdout
                left += [f"rules of {container}"] if "istio" in rules else []
                left += [f"sk_lookup link of {container}"] if os.stat(netns).st_ino in netns_links else []
        return left

    def runtime_cgroup(self) -> Cgroup:
        """Where containerd and its shims run: below the node's cgroup, so that they are removed with it."""
        return self.cgroup.child("runtime")

    def remove_cgroups_of_other_hierarchies(self) -> None:
        """runc also makes a container's cgroup in each cgroup v1 hierarchy (this machine mounts
        both): remove ours there, deepest first. Only paths named after this test's cgroup."""
        with open("/proc/mounts") as mounts:
            roots = [Path(line.split()[1]) for line in mounts if line.split()[2] == "cgroup"]
        for root in roots:
            mine = root / self.cgroup.path.name
            if mine.exists():
                for directory in sorted((p for p in mine.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    directory.rmdir()
                mine.rmdir()


@pytest.fixture(params=["ebpf", "nftables"])
def cni_node(request):
    node = CniNode(Path("/tmp") / unique_name("accel-test"), request.param)
    node.root.mkdir()
    try:
        node.build()
        yield node
    finally:
        node.destroy()


def test_a_pod_through_the_chain_is_captured_checked_and_deleted_without_residue(cni_node):
    node = cni_node
    netns, container, args = node.pod("web", STATUS)
    node.loopback.add(container, netns, args, ifname="lo")
    result = node.chain.add(container, netns, args)
    assert result["cniVersion"] == "1.0.0" and result["ips"][0]["address"].startswith("10.99.0.")  # bridge's, through
    pods = node.json("pod", "list")
    assert [(p["id"], p["name"], p["phase"], p["backend"]) for p in pods] == [
        (container, "test/web", "ready", node.backend)
    ]
    cgroup = node.sidecar(netns, "web")
    hop = node.first_hop(netns, cgroup, "through-chain")
    assert hop is not None and hop["agent"] == "sidecar" and hop["original_dst"] == f"{GATEWAY}:8080", hop
    node.chain.check(container, netns, args)
    node.chain.delete(container, netns, args)
    node.loopback.delete(container, netns, args, ifname="lo")
    assert node.left_of([(netns, container, args)]) == []
    node.chain.delete(container, netns, args)  # again: a runtime may repeat DEL
    with open(node.root / "cni.log") as log:
        lines = [json.loads(line) for line in log]
    assert [(line["command"], line["msg"]) for line in lines if line["container"] == container][:1] == [
        ("ADD", "captured: added")
    ]


def test_pods_without_a_sidecar_are_left_alone_and_annotations_choose_the_capture(cni_node):
    node = cni_node
    plain, plain_id, plain_args = node.pod("plain")  # no annotation file: not a sidecar pod
    disabled, disabled_id, disabled_args = node.pod("off", {**STATUS, "sidecar.istio.io/inject": "false"})
    annotated, annotated_id, annotated_args = node.pod(
        "narrow", {**STATUS, "traffic.sidecar.istio.io/excludeOutboundIPRanges": f"{GATEWAY}/32"}
    )
    for netns, container, args in (
        (plain, plain_id, plain_args),
        (disabled, disabled_id, disabled_args),
        (annotated, annotated_id, annotated_args),
    ):
        assert node.chain.add(container, netns, args)["ips"]
    assert [(p["id"], p["spec"]["OutboundIPRangesExclude"]) for p in node.json("pod", "list")] == [
        (annotated_id, f"{GATEWAY}/32")
    ]
    cgroup = node.sidecar(annotated, "narrow")
    assert node.first_hop(annotated, cgroup, "excluded-by-annotation")["agent"] == "remote"
    for netns, container, args in ((plain, plain_id, plain_args), (disabled, disabled_id, disabled_args)):
        node.chain.check(container, netns, args)  # nothing to check: nothing was asked
        node.chain.delete(container, netns, args)
    node.chain.delete(annotated_id, annotated, annotated_args)
    assert node.json("pod", "list") == []


def cni_error(call) -> dict:
    with pytest.raises(PluginFailed) as failed:
        call()
    assert failed.value.plugin == "accel-cni" and failed.value.error is not None, failed.value
    assert "Traceback" not in failed.value.stdout + failed.value.stderr
    return failed.value.error


def test_bad_input_and_an_absent_datapath_get_cni_error_objects(cni_node):
    node = cni_node
    netns, container, args = node.pod("bad", {**STATUS, "traffic.sidecar.istio.io/excludeInboundPorts": "99999"})
    error = cni_error(lambda: node.chain.add(container, netns, args))
    assert error["code"] == 101 and "excludeInboundPorts" in error["msg"], error
    node.chain.delete(container, netns, args)
    assert node.json("pod", "list") == []

    node.chain.conflist["plugins"][-1] = {**node.plugin_config, "podInfo": {"source": "dir", "path": "relative"}}
    netns, container, args = node.pod("misconfigured", STATUS)
    error = cni_error(lambda: node.chain.add(container, netns, args))
    assert error["code"] == 100 and "podInfo.path" in error["msg"], error
    node.chain.delete(container, netns, args)  # as a runtime does after a failed ADD

    node.chain.conflist["plugins"][-1] = {**node.plugin_config, "stateDir": str(node.root / "not-up")}
    error = cni_error(lambda: node.chain.add(container, netns, args))
    assert error["code"] == 11 and "not up" in error["msg"], error
    node.chain.delete(container, netns, args)  # DEL succeeds where nothing was ever added


def test_twenty_pods_added_in_parallel_through_the_chain(cni_node):
    node = cni_node
    pods = [node.pod(f"p{i}", STATUS) for i in range(20)]
    failures: list[BaseException] = []

    def each(action):
        def run(pod):
            netns, container, args = pod
            try:
                action(container, netns, args)
            except BaseException as error:  # noqa: BLE001 - collected and asserted below
                failures.append(error)

        threads = [threading.Thread(target=run, args=(pod,)) for pod in pods]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert failures == []

    each(node.chain.add)
    status = node.json("status")
    assert sorted(p["id"] for p in status["pods"]) == sorted(container for _, container, _ in pods)
    assert all(p["phase"] == "ready" for p in status["pods"]) and status["problems"] == []
    if node.backend == "ebpf":
        assert {m["name"]: m["entries"] for m in status["maps"]}["pods"] == 20
    each(node.chain.check)
    each(node.chain.delete)
    assert node.left_of(pods) == []


class Containerd:
    """Debian's containerd and runc, with root, state and socket directories of the test's own, in
    a private mount namespace where /etc/cni/net.d and /opt/cni/bin are the node's (an overlay on
    /etc, a tmpfs on /opt; a tmpfs on /run keeps runc's and the shims' state off the machine's)
    and in the node's network namespace. `ctr run --cni` runs the CNI chain from there."""

    def __init__(self, node: CniNode):
        self.node, self.root = node, node.root / "containerd"
        self.socket = self.root / "containerd.sock"
        self.rootfs = self.root / "rootfs"
        self.daemon: subprocess.Popen | None = None
        self.runs: list[subprocess.Popen] = []

    def start(self) -> None:
        for directory in (
            "root",
            "state",
            "etc-upper",
            "etc-work",
            "rootfs/bin",
            "rootfs/proc",
            "rootfs/dev",
            "rootfs/sys",
            "rootfs/etc",
            "rootfs/tmp",
        ):
            (self.root / directory).mkdir(parents=True)
        shutil.copy("/bin/busybox", self.rootfs / "bin" / "busybox")
        for applet in ("sh", "nc", "sleep", "echo"):
            (self.rootfs / "bin" / applet).symlink_to("busybox")
        (self.root / "config.toml").write_text(
            f'version = 2\nroot = "{self.root / "root"}"\nstate = "{self.root / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.socket}"\n'
        )
        r = self.root
        private = (
            f"mount -t overlay overlay -o lowerdir=/etc,upperdir={r}/etc-upper,workdir={r}/etc-work /etc && "
            f"mkdir -p /etc/cni/net.d && mount --bind {self.node.conf_dir} /etc/cni/net.d && "
            f"mount -t tmpfs tmpfs /opt && mkdir -p /opt/cni/bin && mount --bind {self.node.bin} /opt/cni/bin && "
            f"mount -t tmpfs tmpfs /run && exec containerd --config {r}/config.toml"
        )
        self.daemon = process.spawn(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", private],
            netns=self.node.node,
            cgroup=self.node.runtime_cgroup(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(r / "containerd.log", "w"),
        )
        assert wait_for(lambda: self.socket.exists() or self.daemon.poll() is not None, timeout=20)
        assert self.daemon.poll() is None, (r / "containerd.log").read_text()[-2000:]

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """ctr inside containerd's mount namespace, so that the plugins it runs see the node's CNI dirs."""
        result = process.run(
            ["nsenter", "--target", str(self.daemon.pid), "--mount", "--", "ctr", "--address", str(self.socket), *args],
            netns=self.node.node,
            timeout=60,
        )
        if check:
            assert result.returncode == 0, f"ctr {' '.join(args)}: {result.stderr}"
        return result

    def run(self, name: str, cgroup: str) -> int:
        """Start a container from the busybox root filesystem with `ctr run --cni --rm`, in the
        cgroup path given (runc makes it, under the node's); its task's PID once it runs."""
        run = process.spawn(
            [
                "nsenter",
                "--target",
                str(self.daemon.pid),
                "--mount",
                "--",
                "ctr",
                "--address",
                str(self.socket),
                "run",
                "--cni",
                "--rm",
                "--null-io",
                "--rootfs",
                "--cgroup",
                cgroup,
                str(self.rootfs),
                name,
                "/bin/sleep",
                "600",
            ],
            netns=self.node.node,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.runs.append(run)

        def running() -> int | None:
            for line in self.ctr("task", "ls").stdout.splitlines()[1:]:
                fields = line.split()
                if fields[0] == name and fields[2] == "RUNNING":
                    return int(fields[1])
            assert run.poll() is None, f"ctr run {name}: {run.stderr.read()}"
            return None

        assert wait_for(lambda: running() is not None, timeout=30)
        return running()

    def stop(self) -> None:
        for run in self.runs:
            if run.poll() is None:
                run.kill()
            run.wait()
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()


def test_a_containerd_container_is_captured_and_its_deletion_leaves_nothing():
    node = CniNode(Path("/tmp") / unique_name("accel-test"), "ebpf")
    node.root.mkdir()
    runtime = Containerd(node)
    try:
        node.build()
        runtime.start()
        container = "default-web"  # what ctr names it for CNI: NAMESPACE-ID
        # ctr passes no K8S_POD_* arguments: the annotation file is named by the container id
        (node.annotations / f"{container}.json").write_text(json.dumps({"annotations": STATUS}))
        cgroup_path = f"/{node.cgroup.path.relative_to(node.cgroup.path.parent)}/web"
        pid = runtime.run("web", cgroup_path)
        assert (node.cgroup.path / "web" / "cgroup.procs").read_text().split() == [str(pid)]
        pods = node.json("pod", "list")
        assert [(p["id"], p["netns"], p["phase"]) for p in pods] == [(container, f"/proc/{pid}/ns/net", "ready")]
        node.sidecar(f"/proc/{pid}/ns/net", "web-sidecar")
        token = "from-a-container"
        client = runtime.ctr(
            "task",
            "exec",
            "--exec-id",
            "client",
            "web",
            "/bin/sh",
            "-c",
            f"echo {token} | nc -w 3 {GATEWAY} 8080",
            check=False,
        )
        events = read_events(node.log, token)
        assert [(e["agent"], e.get("original_dst")) for e in events][:2] == [
            ("sidecar", f"{GATEWAY}:8080"),
            ("remote", None),
        ], (events, client.stderr)
        assert events[0]["so_original_dst"] == f"{GATEWAY}:8080"  # what the proxy asked the kernel
        runtime.ctr("task", "kill", "--signal", "SIGKILL", "web")
        runtime.runs[0].wait(timeout=60)  # ctr run removes the network (CNI DEL) and the container
        assert runtime.ctr("containers", "ls", "--quiet").stdout.strip() == ""
        assert node.left_of([(f"/proc/{pid}/ns/net", container, "")]) == []
        with open(node.root / "cni.log") as log:
            commands = [json.loads(line)["command"] for line in log if container in line]
        assert commands == ["ADD", "DEL"]
    finally:
        runtime.stop()
        node.destroy()
        node.remove_cgroups_of_other_hierarchies()


def test_the_daemonset_shim_runs_the_plugin_in_the_agents_mount_namespace(cni_node):
    """`accel cni install --enter-pid-file`: the runtime runs a shim that enters the mount namespace
    of the agent (here a process in a private mount namespace of its own) and runs accel-cni there;
    with the agent gone, ADD says try again later and DEL does not hold a teardown up."""
    node = cni_node
    pid_file = node.root / "run" / "agent.pid"
    agent = process.spawn(
        ["unshare", "--mount", "--propagation", "slave", "sleep", "600"],  # HostToContainer
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        pid_file.parent.mkdir()
        pid_file.write_text(f"{agent.pid}\n")
        (node.root / "accel-cni.json").write_text(json.dumps(node.plugin_config))
        node.accel(
            "cni",
            "install",
            "--conf-dir",
            str(node.conf_dir),
            "--bin-dir",
            str(node.bin),
            "--config",
            str(node.root / "accel-cni.json"),
            "--enter-pid-file",
            str(pid_file),
        )
        assert (node.bin / "accel-cni").read_text().startswith("#!/bin/sh\n")
        assert wait_for(lambda: os.readlink(f"/proc/{agent.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt"))
        netns, container, args = node.pod("shimmed", STATUS)
        node.chain.add(container, netns, args)
        assert [p["id"] for p in node.json("pod", "list")] == [container]
        with open(node.root / "cni.log") as log:  # accel-cni ran, and in the agent's mount namespace
            assert any(json.loads(line)["msg"] == "captured: added" for line in log)
    finally:
        agent.kill()
        agent.wait()
    other, other_id, other_args = node.pod("agentless", STATUS)
    error = cni_error(lambda: node.chain.add(other_id, other, other_args))
    assert error["code"] == 11 and "agent is not running" in error["msg"]
    node.chain.delete(container, netns, args)  # exits 0 without an agent; the next `accel up` cleans
    node.chain.delete(other_id, other, other_args)


@pytest.mark.parametrize("cni_node", ["ebpf"], indirect=True)
def test_pods_read_from_the_api_server(cni_node):
    """podInfo "kubernetes": accel-cni (in the node's namespace) reads the Pod from a local server
    that answers the Pod API as the API server does, the first two times with 503."""
    from tests.fake_apiserver import TOKEN, pod

    node = cni_node
    sidecar = {"args": ["proxy", "sidecar"], "env": [{"name": "ISTIO_META_DNS_CAPTURE", "value": "true"}]}
    pods = {
        "shop/web": pod(
            "shop", "web", annotations={**STATUS, "traffic.sidecar.istio.io/excludeInboundPorts": "9000"}, proxy=sidecar
        ),
        "shop/plain": pod("shop", "plain"),
    }
    (node.root / "pods.json").write_text(json.dumps(pods))
    server = process.spawn(
        [
            str(TOP / ".venv" / "bin" / "python"),
            "-m",
            "tests.fake_apiserver",
            "--pods",
            str(node.root / "pods.json"),
            "--port",
            "6443",
            "--fail-first",
            "2",
        ],
        netns=node.node,
        cwd=str(TOP),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    node.agents.append(server)
    assert server.stdout.readline().strip() == "ready", server.stderr.read()
    (node.root / "kubeconfig").write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "test",
                "clusters": [{"name": "test", "cluster": {"server": "http://127.0.0.1:6443"}}],
                "users": [{"name": "test", "user": {"token": TOKEN}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
            }
        )
    )
    node.install(
        {
            **node.plugin_config,
            "podInfo": {
                "source": "kubernetes",
                "kubeconfig": str(node.root / "kubeconfig"),
                "attempts": 5,
                "interval": 0.1,
            },
        }
    )
    for name in ("web", "plain"):
        netns = node.namespace()
        node.chain.add(
            f"c-{name}",
            f"/run/netns/{netns}",
            f"IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME={name};K8S_POD_UID=u-{name}",
        )
    captured = node.json("pod", "list")
    assert [(p["id"], p["name"], p["spec"]["InboundPortsExclude"], p["spec"]["RedirectDNS"]) for p in captured] == [
        ("c-web", "shop/web", "9000,15020,15021,15090", True)
    ]
